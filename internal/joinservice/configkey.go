package joinservice

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
)

// KeyServiceTrust is what the join service trusts the key services of its cluster by before it has its
// configuration, which the key services' key is to authenticate: nothing the configuration says, only what
// its own node proves of itself through its attestation agent, which is the node's own and not validated.
//
// On the variants with a vTPM a key service must run on a vTPM that AKRoots (the provider's attestation-key
// CA) certified, with this node's own boot measurements and cluster ID ([OwnMemberPolicy]).
//
// On qemu-sev-snp a key service must present a report of this node's own launch measurement, TCB, VMPL and
// platform (snp.Report.PeerPolicy of this node's own report), whose chain ends in the AMD root (SNP; the
// embedded one unless a test sets others), and whose REPORT_DATA carries the same cluster binding as this
// node's own reports (snp.OwnClusterBinding): the join service does not know the cluster ID before it has
// the configuration, but its node bound the ID into every report when it was initialised or joined, and
// the binding is a hash of the cluster ID under a label of its own, which every member of the cluster, and
// no member of another, carries. A node that binds no cluster yet trusts no key service.
//
// On both, Roles must name the key service's node a control-plane node.
type KeyServiceTrust struct {
	// Issuer attests the join service over mutual aTLS (its node's attestation agent), and gives the node's
	// own measurements or report.
	Issuer attestation.Issuer
	// AKRoots are the roots of the key services' attestation keys (variants with a vTPM).
	AKRoots []*x509.Certificate
	// Roles tells control-plane nodes.
	Roles Roles
	// SNP are the trust anchors of qemu-sev-snp key services' reports (the zero value: the AMD roots
	// embedded in the binary; only tests set others).
	SNP snp.VerifierOptions
}

// FetchConfigKey gets the key of the join configuration's MAC from whichever key service of endpoints answers
// (see keyservice.ControlPlaneAddrs), over mutual aTLS with trust.Issuer, trusted as [KeyServiceTrust] says.
func FetchConfigKey(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), trust KeyServiceTrust) ([]byte, error) {
	p, err := ownKeyServices(ctx, endpoints, trust)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var key []byte
	if err := p.Do(ctx, func(ctx context.Context, c *keyservice.Client) error {
		var err error
		key, err = c.GetDataKey(ctx, kms.JoinConfigKeyID, 32)
		return err
	}); err != nil {
		return nil, fmt.Errorf("getting the join configuration's key: %w", err)
	}
	return key, nil
}

// ownKeyServices are the key services of endpoints as the join service trusts them without its configuration
// ([ownKeyServiceValidator]), over mutual aTLS with trust.Issuer.
func ownKeyServices(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), trust KeyServiceTrust) (*keyservice.Pool, error) {
	v, err := ownKeyServiceValidator(ctx, trust)
	if err != nil {
		return nil, err
	}
	return &keyservice.Pool{Endpoints: endpoints, Issuer: trust.Issuer, Validator: v}, nil
}

// ownKeyServiceValidator trusts a key service as [KeyServiceTrust] says.
func ownKeyServiceValidator(ctx context.Context, trust KeyServiceTrust) (attestation.Validator, error) {
	if trust.Issuer == nil || trust.Roles == nil {
		return nil, errors.New("the join service trusts key services only with its node's issuer and the nodes' roles")
	}
	var v attestation.Validator
	var err error
	if trust.Issuer.Variant().Name == attestation.QEMUSEVSNP.Name {
		v, err = ownSNPKeyServiceValidator(ctx, trust.Issuer, trust.SNP)
	} else {
		var own measurements.M
		if own, err = OwnMemberPolicy(ctx, trust.Issuer); err != nil {
			return nil, err
		}
		v, err = vtpm.NewValidatorFor(trust.Issuer.Variant(), trust.AKRoots, own, nil)
	}
	if err != nil {
		return nil, err
	}
	return keyservice.ControlPlaneOnly(v, trust.Roles.IsControlPlane), nil
}

// ownSNPKeyServiceValidator trusts a qemu-sev-snp key service of this node's own image and cluster binding, as
// issuer reports them ([KeyServiceTrust]).
func ownSNPKeyServiceValidator(ctx context.Context, issuer attestation.Issuer, vopts snp.VerifierOptions) (attestation.Validator, error) {
	own, err := ownSNPReport(ctx, issuer)
	if err != nil {
		return nil, err
	}
	policy, err := own.PeerPolicy()
	if err != nil {
		return nil, err
	}
	binding, err := snp.OwnClusterBinding(own)
	if err != nil {
		return nil, fmt.Errorf("%w: it trusts no key service; the node binds its cluster when it is initialised or joins", err)
	}
	verifier, err := snp.NewVerifier(vopts)
	if err != nil {
		return nil, err
	}
	return snp.NewBindingValidator(verifier, policy, binding)
}

// ownSNPReport is a report of this node's own SEV-SNP firmware, obtained through issuer (its attestation
// agent) and not validated: it is the node's own.
func ownSNPReport(ctx context.Context, issuer attestation.Issuer) (*snp.Report, error) {
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	raw, err := issuer.Issue(ctx, nonce, nil)
	if err != nil {
		return nil, fmt.Errorf("obtaining this node's own SEV-SNP report: %w", err)
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		return nil, fmt.Errorf("this node's own evidence: %w", err)
	}
	if doc.SNP == nil || len(doc.SNP.Report) == 0 {
		return nil, errors.New("this node's own evidence holds no SEV-SNP report")
	}
	r, err := snp.ParseReport(doc.SNP.Report)
	if err != nil {
		return nil, fmt.Errorf("this node's own report: %w", err)
	}
	return r, nil
}

// KeyServicePolicy returns the source of the measurement policy update in force ([Config.FollowPolicy]): asked
// at each call of whichever key service answers on the policy port at endpoints
// (keyservice.ControlPlanePolicyAddrs), trusted as [KeyServiceTrust] says; trust.Issuer only gives this
// node's own measurements or report for that. A key service of a qemu-sev-snp cluster answers no update
// (there are no measurement sets to update), and the configuration refuses one if it did ([Config.Effective]). On the policy port only the key service attests itself, so it answers also once
// the policy in force no longer accepts this node's own image (the operator's CLI removed the image the
// cluster runs from), when it refuses this node at a mutual handshake: the join service then enforces the new
// policy at joins, and the continuous attestation fails every node of the removed image, this one included.
//
// The answer counts as the policy the operator's CLI authored although the join service cannot check its MAC
// (the key is derived from the master secret, which the join service does not hold): the key service proved
// in the handshake, bound to the channel, that it runs this node's own image on a control-plane node of this
// cluster, and that code puts an update in force, and answers it, only after its MAC and cluster ID verified
// under the master secret, which it holds. The source checks the update's cluster ID against the join
// configuration's itself ([Config.Effective]), and never goes back to an update older than one a key service
// answered before: a key service that lags behind (it missed an update while it was down) does not roll the
// join service back.
//
// close closes the connections.
func KeyServicePolicy(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), trust KeyServiceTrust) (src PolicySource, close func() error, err error) {
	v, err := ownKeyServiceValidator(ctx, trust)
	if err != nil {
		return nil, nil, err
	}
	p := keyservice.NewPolicyPool(endpoints, v)
	var mu sync.Mutex
	var newest *policyupdate.Update
	return func(ctx context.Context) (*policyupdate.Update, error) {
		var u *policyupdate.Update
		err := p.Do(ctx, func(ctx context.Context, c *keyservice.Client) error {
			var err error
			u, _, err = c.GetMeasurementPolicy(ctx)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("asking the key service for the measurement policy in force: %w", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if u == nil {
			if newest != nil {
				return newest, nil // a key service without an update lags behind the one that answered newest
			}
			return nil, nil
		}
		take, err := policyupdate.Supersedes(newest, u)
		switch {
		case errors.Is(err, policyupdate.ErrStale):
			return newest, nil
		case err != nil:
			return nil, fmt.Errorf("the key services disagree on the measurement policy in force: %w", err)
		case take:
			newest = u
		}
		return newest, nil
	}, p.Close, nil
}

// OwnMemberPolicy is the policy of this node as its own vTPM quotes it: the PCRs of the firmware, the node
// image and the boot parameters, and the cluster-ID PCR, which must hold a cluster ID. Every control-plane node
// of a cluster booted the same image and belongs to the same cluster, so the key service's node matches it.
// The quote comes from this node's own attestation agent and is not validated: it is the node's own.
func OwnMemberPolicy(ctx context.Context, issuer attestation.Issuer) (measurements.M, error) {
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	raw, err := issuer.Issue(ctx, nonce, nil)
	if err != nil {
		return nil, fmt.Errorf("quoting this node's own PCRs: %w", err)
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		return nil, fmt.Errorf("this node's own evidence: %w", err)
	}
	if doc.TPM == nil || len(doc.TPM.Quotes) == 0 {
		return nil, errors.New("this node's own evidence holds no vTPM quote")
	}
	pcrs := doc.TPM.Quotes[0].PCRs
	m, err := measurements.FromPCRs(func(idx uint32) []byte { return pcrs[idx] }, append(vtpm.BootPCRs(issuer.Variant()), measurements.PCRClusterID)...)
	if err != nil {
		return nil, fmt.Errorf("this node's own quote: %w", err)
	}
	if m[measurements.PCRClusterID].Expected == (measurements.Digest{}) {
		return nil, fmt.Errorf("this node has measured no cluster ID into PCR %d: it is no member of a cluster", measurements.PCRClusterID)
	}
	return m, nil
}

// ImageRemovedError says that the measurement policy in force accepts none of this node's own boot
// measurements: the operator removed the image this node runs from the cluster's policy (an upgrade finished
// before this control-plane node was replaced). Every key service refuses such a node at its mutual handshake,
// so the join service on it gets no configuration key, and must not: it fails closed.
type ImageRemovedError struct {
	// Epoch is the policy update in force; Images the node images its sets name (none for an update that names
	// no image).
	Epoch  uint64
	Images []string
	// Mismatches are this node's PCRs that differ from the first measurement set in force.
	Mismatches []measurements.Mismatch
}

func (e *ImageRemovedError) Error() string {
	images := "images it does not name"
	if len(e.Images) > 0 {
		images = strings.Join(e.Images, ", ")
	}
	return fmt.Sprintf("the measurement policy in force (epoch %d, node images %s) no longer accepts the image this node runs (mismatch: %s): "+
		"the key services refuse this node, so this join service gets no configuration key and admits no node. "+
		"Replace this control-plane node with one of an image in force ('constellation apply'), or, if the image was removed by mistake, "+
		"put a policy that accepts it in force again ('constellation upgrade start' with its measurements); the join service goes on by itself once the policy accepts its node again",
		e.Epoch, images, measurements.Summary(measurements.Fatal(e.Mismatches)))
}

// OwnImageInForce tells whether the measurement policy in force, as src answers it (see [KeyServicePolicy],
// which answers whatever this node runs), accepts this node's own boot measurements as issuer quotes them:
// nil if one of its sets does, or if no update is in force (the cluster's init measurements, which every node
// of the cluster's image passed); an [*ImageRemovedError] if none does; another error if it cannot tell.
func OwnImageInForce(ctx context.Context, src PolicySource, issuer attestation.Issuer) error {
	u, err := src(ctx)
	if err != nil {
		return err
	}
	if u == nil {
		return nil
	}
	own, err := OwnMemberPolicy(ctx, issuer)
	if err != nil {
		return err
	}
	pcrs := map[uint32][]byte{}
	for idx, m := range own {
		pcrs[idx] = m.Expected[:]
	}
	var first []measurements.Mismatch
	for i, set := range u.Sets {
		mms, err := set.Check(pcrs)
		if err != nil {
			return fmt.Errorf("measurement set %d of the policy in force (epoch %d): %w", i, u.Epoch, err)
		}
		if len(measurements.Fatal(mms)) == 0 {
			return nil
		}
		if i == 0 {
			first = mms
		}
	}
	return &ImageRemovedError{Epoch: u.Epoch, Images: slices.Clone(u.Images), Mismatches: first}
}

// ConfigKeyWait gets the join configuration's key at the join service's start, and says why while it cannot.
type ConfigKeyWait struct {
	// Fetch gets the key ([FetchConfigKey]).
	Fetch func(ctx context.Context) ([]byte, error)
	// OwnImage tells, after Fetch failed, whether the policy in force still accepts this node's image
	// ([OwnImageInForce]).
	OwnImage func(ctx context.Context) error
	Log      *slog.Logger
	// Retry is the longest wait between two tries while the key services are not there yet (0: 5 s; the first
	// waits are shorter); Recheck the wait while the policy in force excludes this node's image (0: 30 s).
	Retry, Recheck time.Duration
}

// Run tries until it has the key or ctx ends. A failure is either of two kinds, told apart by asking the
// policy in force: this node's image is no longer in it, and the join service fails closed (an error in the
// log at every try, saying what to do, every Recheck; no exit, so that the pod keeps running with the reason in
// its log rather than restarting in a loop), until the policy accepts the image again; or it is, and the
// failure is passing (a key service not up yet, or without its master secret until 'constellation recover',
// or one that has not yet received the policy update that accepts this image): a warning, and a new try soon.
func (w ConfigKeyWait) Run(ctx context.Context) ([]byte, error) {
	retry, recheck := w.Retry, w.Recheck
	if retry <= 0 {
		retry = 5 * time.Second
	}
	if recheck <= 0 {
		recheck = 30 * time.Second
	}
	backoff := min(100*time.Millisecond, retry)
	removed, saidRemoved := false, false
	for attempt := 1; ; attempt++ {
		key, err := w.Fetch(ctx)
		if err == nil {
			if saidRemoved {
				w.Log.Info("the policy in force accepts this node's image again: the join service got its configuration key", "attempt", attempt)
			}
			return key, nil
		}
		wait := backoff
		cause := w.OwnImage(ctx)
		var gone *ImageRemovedError
		switch {
		case errors.As(cause, &gone):
			removed, saidRemoved = true, true
			wait = recheck
			w.Log.Error("the join service cannot start: "+gone.Error(), "epoch", gone.Epoch, "imagesInForce", gone.Images,
				"attempt", attempt, "error", err, "nextTry", recheck.String())
		case cause != nil:
			removed = false
			w.Log.Warn("getting the join configuration's key from the key service failed, and so did asking for the policy in force: "+
				"the key services may not be up yet, or wait for their master secret ('constellation recover' after the whole control plane restarted); retrying",
				"attempt", attempt, "error", err, "policyError", cause.Error())
		default:
			removed = false
			w.Log.Warn("getting the join configuration's key from the key service failed, although the policy in force accepts this node's image: "+
				"the key service may not be up yet, may wait for its master secret ('constellation recover' after the whole control plane restarted), "+
				"or may not have received the latest policy update yet; retrying", "attempt", attempt, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("getting the join configuration's key: %w", errors.Join(ctx.Err(), err))
		case <-time.After(wait):
		}
		if !removed {
			backoff = min(2*backoff, retry)
		}
	}
}
