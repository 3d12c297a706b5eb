package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// PolicyUpgrade moves a cluster's measurement policy through an upgrade, as the holder of the master secret:
// it authors the measurement policy updates (package policyupdate) and sends each to the key service of every
// control-plane node, over aTLS on which the key service attests itself.
//
//   - [PolicyUpgrade.Start]: epoch N accepts the old and the new image; the update of epoch N+1 that accepts
//     the new image only is left in the cluster for the upgrade controller (keyservice.StoreNarrowing).
//   - [PolicyUpgrade.Finish]: puts the left narrowing in force, as the upgrade controller does once the last
//     node of the old image is gone.
//   - [PolicyUpgrade.Abort]: the rollback, one epoch above anything authored before (N+2 after a start), with
//     the old image only; the left narrowing can never override it (its epoch is lower).
type PolicyUpgrade struct {
	// Key is the master secret's measurement-policy key (kms.Deriver.MeasurementPolicyKey), ClusterID the
	// cluster's ID.
	Key, ClusterID []byte
	// KeyServices are the addresses of the policy ports of every control-plane node's key service
	// (keyservice.PolicyPort).
	KeyServices []string
	// Trust returns the validator of a key service that is a member of the cluster with one of sets, on a vTPM
	// the provider certified.
	Trust func(sets ...measurements.M) (attestation.Validator, error)
	// Known are measurement sets the key services may run besides those of the updates in force: the
	// configuration's.
	Known []measurements.M
	// API is the cluster's Kubernetes API, where the narrowing is left.
	API *kubeapi.Client
	// Out receives one line per step.
	Out io.Writer
	// PeerPolicy, if set, hands joining nodes the peer policy of sets through the provider (none: remove it;
	// see policyupdate.PeerHint): the sets of the window while an upgrade is open, so that a node of either
	// image trusts a join service of the other; none before and after. Nodes measure it, and the join service
	// admits only nodes whose peer policy holds nothing but the sets in force.
	PeerPolicy func(ctx context.Context, sets ...measurements.M) error
}

// setPeerPolicy hands joining nodes the peer policy of sets, if the provider takes one.
func (p *PolicyUpgrade) setPeerPolicy(ctx context.Context, sets ...measurements.M) error {
	if p.PeerPolicy == nil {
		return nil
	}
	if err := p.PeerPolicy(ctx, sets...); err != nil {
		return fmt.Errorf("handing joining nodes the peer policy through the provider: %w", err)
	}
	if len(sets) == 0 {
		fmt.Fprintln(p.out(), "  peer policy removed at the provider: joining nodes trust peers of their own image only")
	} else {
		fmt.Fprintf(p.out(), "  peer policy of %d measurement sets handed to joining nodes through the provider\n", len(sets))
	}
	return nil
}

// PolicyStatus is what the key services have in force.
type PolicyStatus struct {
	// InForce is the policy in force at each key service, by address; each update verified under the master
	// secret's key.
	InForce map[string]keyservice.InForce
	// Latest is the update of the highest epoch among them (nil: none).
	Latest *policyupdate.Update
	// Unreachable names the key services that did not answer or failed their attestation.
	Unreachable map[string]error
}

// Status asks every key service for its update in force. A key service is trusted if it runs one of Known or
// of the sets of an update that another key service has in force and whose MAC the CLI verified.
func (p *PolicyUpgrade) Status(ctx context.Context) (*PolicyStatus, error) {
	if len(p.KeyServices) == 0 {
		return nil, errors.New("no key service to ask: the cluster lists no control-plane node")
	}
	st := &PolicyStatus{InForce: map[string]keyservice.InForce{}, Unreachable: map[string]error{}}
	known, err := p.knownSets(ctx)
	if err != nil {
		return nil, err
	}
	pending := slices.Clone(p.KeyServices)
	for len(pending) > 0 {
		v, err := p.Trust(known...)
		if err != nil {
			return nil, err
		}
		got, err := keyservice.PolicyInForce(ctx, pending, v)
		grew := false
		for addr, f := range got {
			u := f.Update
			if u != nil {
				if err := u.Verify(p.Key, p.ClusterID); err != nil {
					return nil, fmt.Errorf("key service %s has an update in force that is not this cluster's master secret's: %w", addr, err)
				}
				for _, set := range u.Sets {
					if !containsSet(known, set) {
						known, grew = append(known, set), true
					}
				}
			}
			st.InForce[addr] = f
			if u != nil && (st.Latest == nil || u.Epoch > st.Latest.Epoch) {
				st.Latest = u
			}
		}
		pending = slices.DeleteFunc(pending, func(a string) bool { _, ok := got[a]; return ok })
		if !grew || len(pending) == 0 {
			if err != nil {
				for _, addr := range pending {
					st.Unreachable[addr] = err
				}
			}
			break
		}
	}
	return st, nil
}

// knownSets are the measurement sets a key service may run: Known, extra, and those of the upgrade left in the
// cluster (keyservice.StoreNarrowing) once the CLI verified their MAC (the key services may still run the old
// image while the configuration names the new one).
func (p *PolicyUpgrade) knownSets(ctx context.Context, extra ...measurements.M) ([]measurements.M, error) {
	var known []measurements.M
	add := func(sets ...measurements.M) {
		for _, set := range sets {
			if !containsSet(known, set) {
				known = append(known, set)
			}
		}
	}
	add(p.Known...)
	add(extra...)
	if p.API != nil {
		for _, load := range []func(context.Context, *kubeapi.Client) (*policyupdate.Update, []byte, bool, error){keyservice.LoadWindow, keyservice.LoadNarrowing} {
			u, _, found, err := load(ctx, p.API)
			if err != nil {
				return nil, err
			}
			if found && u.Verify(p.Key, p.ClusterID) == nil {
				add(u.Sets...)
			}
		}
	}
	return known, nil
}

// trust returns the validator of key services that run one of the known sets or extra.
func (p *PolicyUpgrade) trust(ctx context.Context, extra ...measurements.M) (attestation.Validator, error) {
	known, err := p.knownSets(ctx, extra...)
	if err != nil {
		return nil, err
	}
	return p.Trust(known...)
}

// containsSet reports whether sets holds set.
func containsSet(sets []measurements.M, set measurements.M) bool {
	want, _ := set.MarshalJSON()
	return slices.ContainsFunc(sets, func(m measurements.M) bool {
		got, _ := m.MarshalJSON()
		return string(got) == string(want)
	})
}

// send authors the update of epoch with sets and sends it to every key service, which must all have it in
// force afterwards.
func (p *PolicyUpgrade) send(ctx context.Context, u *policyupdate.Update, trusted ...measurements.M) error {
	raw, err := u.Marshal()
	if err != nil {
		return err
	}
	v, err := p.trust(ctx, trusted...)
	if err != nil {
		return err
	}
	if _, err := keyservice.SendPolicy(ctx, p.KeyServices, v, raw); err != nil {
		return err
	}
	fmt.Fprintf(p.out(), "  measurement policy %s in force at %d key services\n", u, len(p.KeyServices))
	return nil
}

func (p *PolicyUpgrade) out() io.Writer {
	if p.Out == nil {
		return io.Discard
	}
	return p.Out
}

// latest requires every key service to answer and returns the update of the highest epoch (nil: none).
func (p *PolicyUpgrade) latest(ctx context.Context, trusted ...measurements.M) (*policyupdate.Update, error) {
	q := *p
	q.Known = append(slices.Clone(p.Known), trusted...)
	st, err := q.Status(ctx)
	if err != nil {
		return nil, err
	}
	if len(st.Unreachable) > 0 {
		addrs := make([]string, 0, len(st.Unreachable))
		for a := range st.Unreachable {
			addrs = append(addrs, a)
		}
		sort.Strings(addrs)
		return nil, fmt.Errorf("the key services at %v did not answer: every control-plane node's key service must take part: %w", addrs, st.Unreachable[addrs[0]])
	}
	return st.Latest, nil
}

// Start opens an upgrade from the image of old to the image of new: every key service accepts both (epoch N,
// one above the highest in force), and the narrowing to new (epoch N+1) is left in the cluster. Each set names
// its node image's digest under the update's MAC: the cluster records which image a node runs by the set its
// evidence matches. An upgrade to the same image is refused; an upgrade already open between the same images is
// sent again (it resumes a Start that failed half-way); one between other images is refused until it is
// finished or aborted.
func (p *PolicyUpgrade) Start(ctx context.Context, old, new policyupdate.ImageSet) (window, narrowing *policyupdate.Update, err error) {
	if containsSet([]measurements.M{old.Measurements}, new.Measurements) {
		return nil, nil, errors.New("the configuration's measurements are the ones in force: there is nothing to upgrade to")
	}
	cur, err := p.latest(ctx, old.Measurements, new.Measurements)
	if err != nil {
		return nil, nil, err
	}
	var epoch uint64 = 1
	if cur != nil {
		epoch = cur.Epoch + 1
		if len(cur.Sets) == 2 {
			if !containsSet(cur.Sets[:1], old.Measurements) || !containsSet(cur.Sets[1:], new.Measurements) {
				return nil, nil, fmt.Errorf("an upgrade is open already (%s): finish it, or abort it with 'constellation upgrade abort', before another", cur)
			}
			epoch = cur.Epoch // resume
		} else if !containsSet(cur.Sets, old.Measurements) {
			return nil, nil, fmt.Errorf("the cluster's measurement policy in force (%s) is not the image the upgrade starts from", cur)
		}
	}
	if window, err = policyupdate.Author(p.Key, p.ClusterID, epoch, old, new); err != nil {
		return nil, nil, err
	}
	if narrowing, err = policyupdate.Author(p.Key, p.ClusterID, epoch+1, new); err != nil {
		return nil, nil, err
	}
	rawNarrowing, err := narrowing.Marshal()
	if err != nil {
		return nil, nil, err
	}
	rawWindow, err := window.Marshal()
	if err != nil {
		return nil, nil, err
	}
	// The narrowing is left first: a window that is open has its end at hand in the cluster.
	if err := keyservice.StoreNarrowing(ctx, p.API, rawWindow, rawNarrowing); err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(p.out(), "  narrowing to the new image (%s) left in ConfigMap kube-system/%s for the upgrade controller\n", narrowing, keyservice.NarrowingConfigMap)
	if err := p.send(ctx, window, old.Measurements, new.Measurements); err != nil {
		return nil, nil, err
	}
	// Only once both images are in force: a node that trusts both is refused while one of them is not.
	if err := p.setPeerPolicy(ctx, old.Measurements, new.Measurements); err != nil {
		return nil, nil, err
	}
	return window, narrowing, nil
}

// Finish puts the narrowing left in the cluster in force at every key service, as the upgrade controller does
// when the last node of the old image is gone; from then on a node of the old image is refused.
func (p *PolicyUpgrade) Finish(ctx context.Context) (*policyupdate.Update, error) {
	u, raw, found, err := keyservice.LoadNarrowing(ctx, p.API)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("no upgrade to finish: ConfigMap kube-system/%s holds no narrowing", keyservice.NarrowingConfigMap)
	}
	if err := u.Verify(p.Key, p.ClusterID); err != nil {
		return nil, fmt.Errorf("the narrowing left in ConfigMap kube-system/%s: %w", keyservice.NarrowingConfigMap, err)
	}
	v, err := p.trust(ctx, u.Sets...)
	if err != nil {
		return nil, err
	}
	// Before the window closes: a node that boots from now on trusts peers of its own image only.
	if err := p.setPeerPolicy(ctx); err != nil {
		return nil, err
	}
	if _, err := keyservice.SendPolicy(ctx, p.KeyServices, v, raw); err != nil {
		return nil, err
	}
	fmt.Fprintf(p.out(), "  measurement policy %s in force at %d key services\n", u, len(p.KeyServices))
	if err := keyservice.DeleteNarrowing(ctx, p.API); err != nil {
		return nil, err
	}
	return u, nil
}

// Abort rolls an open upgrade back: every key service accepts the old image only again, at an epoch above
// the update in force and the narrowing left in the cluster (which can then never take effect, and is
// removed). Without an open upgrade (one measurement set in force) there is nothing to abort. It fails unless
// every key service has the rollback in force ([PolicyUpgrade.Rollback] says which did not answer).
func (p *PolicyUpgrade) Abort(ctx context.Context) (*policyupdate.Update, error) {
	rollback, waiting, err := p.Rollback(ctx, nil)
	if err != nil {
		return nil, err
	}
	if len(waiting) > 0 {
		return nil, unreachableError(waiting)
	}
	return rollback, nil
}

// unreachableError says which key services did not answer.
func unreachableError(waiting map[string]error) error {
	addrs := make([]string, 0, len(waiting))
	for a := range waiting {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	return fmt.Errorf("the key services at %v did not answer: every control-plane node's key service must take part: %w", addrs, waiting[addrs[0]])
}

// Rollback narrows the measurement policy to the image the upgrade started from (old; nil: the first image of
// the upgrade in force) at every key service that answers, and returns the rollback and the key services that
// did not answer or did not take it (waiting), by address; if none that answered has an update in force and some
// did not answer, it sends nothing and returns no rollback (those may have the upgrade's). Only ever narrowing, it is safe to send to some key
// services before the others: a control-plane node that joins later gets the update in force with the master
// secret from a key service that has it. Called again, it sends the rollback in force at one key service to
// those that lack it, so that a key service that did not answer (a node still joining, or one the host keeps
// silent) gets it once it answers. It never authors an update that accepts another image than old: an upgrade
// in force that did not start from old, or a policy of one other image, is an error.
//
// The rollback's epoch is above the update in force and the narrowing left in the cluster (which can then
// never take effect, and is removed).
func (p *PolicyUpgrade) Rollback(ctx context.Context, old measurements.M) (*policyupdate.Update, map[string]error, error) {
	q := *p
	if old != nil {
		q.Known = append(slices.Clone(p.Known), old)
	}
	st, err := q.Status(ctx)
	if err != nil {
		return nil, nil, err
	}
	cur := st.Latest
	if cur == nil && len(st.Unreachable) > 0 {
		// No key service that answered has an update in force: those that did not may have the upgrade's.
		return nil, maps.Clone(st.Unreachable), nil
	}
	var rollback *policyupdate.Update
	switch {
	case cur != nil && len(cur.Sets) == 2:
		if old != nil && !containsSet(cur.Sets[:1], old) {
			return nil, nil, fmt.Errorf("the upgrade in force (%s) did not start from the image the cluster ran before it (%s): it cannot be rolled back to that image", cur, policyupdate.Describe(old))
		}
		epoch := cur.Epoch + 1
		if pending, _, found, err := keyservice.LoadNarrowing(ctx, p.API); err != nil {
			return nil, nil, err
		} else if found && pending.Epoch >= epoch {
			epoch = pending.Epoch + 1
		}
		if cur.ImageOf(0) == "" {
			return nil, nil, fmt.Errorf("the upgrade in force (%s) was opened by an earlier version of the CLI, whose measurement sets name no node image: this CLI cannot author its rollback; finish it with 'constellation upgrade finish'", cur)
		}
		if rollback, err = policyupdate.Author(p.Key, p.ClusterID, epoch, cur.ImageSets()[0]); err != nil {
			return nil, nil, err
		}
	case cur != nil && len(cur.Sets) == 1 && old != nil && containsSet(cur.Sets, old):
		rollback = cur // in force at some key services already (or all): those that lack it get it
	default:
		return nil, nil, fmt.Errorf("no upgrade is open: the measurement policy in force is %s; to go back to an image, apply the configuration with its measurements", cur)
	}
	raw, err := rollback.Marshal()
	if err != nil {
		return nil, nil, err
	}
	// Before the window closes: a node that boots from now on trusts peers of its own image only.
	if err := p.setPeerPolicy(ctx); err != nil {
		return nil, nil, err
	}
	waiting := map[string]error{}
	for addr, err := range st.Unreachable {
		waiting[addr] = err
	}
	var lacking []string
	for addr, f := range st.InForce {
		if f.Update == nil || !f.Update.Same(rollback) {
			lacking = append(lacking, addr)
		}
	}
	sort.Strings(lacking)
	if len(lacking) > 0 {
		v, err := p.trust(ctx, cur.Sets...)
		if err != nil {
			return nil, nil, err
		}
		got, err := keyservice.SendPolicy(ctx, lacking, v, raw)
		for _, addr := range lacking {
			if _, ok := got[addr]; !ok {
				waiting[addr] = fmt.Errorf("the rollback %s is not in force there: %w", rollback, err)
			}
		}
	}
	fmt.Fprintf(p.out(), "  measurement policy %s in force at %d of %d key services\n", rollback, len(p.KeyServices)-len(waiting), len(p.KeyServices))
	if err := keyservice.DeleteNarrowing(ctx, p.API); err != nil {
		return nil, nil, err
	}
	return rollback, waiting, nil
}
