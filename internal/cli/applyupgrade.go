package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	//
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

// nodeUpgradePath is the API path of the cluster's one NodeUpgrade; nodeUpgradesPath its collection.
const (
	nodeUpgradesPath = "/apis/upgrade.constellation.dev/v1alpha1/nodeupgrades"
	nodeUpgradePath  = nodeUpgradesPath + "/" + v1alpha1.Name
)

// clusterImage is a node image as the CLI knows it: its digest and its signed measurements, and the Kubernetes
// version its manifest names (empty if unknown).
type clusterImage struct {
	Digest            string
	Measurements      measurements.M
	KubernetesVersion string
}

// imageUpgrade moves a running cluster from one node image to another, as 'apply' drives it: the provider
// learns the new image, the key services accept both images (the upgrade's policy window, PolicyUpgrade.Start),
// the NodeUpgrade asks the cluster's upgrade controller to replace every node, and once it has, only the new
// image is accepted (PolicyUpgrade.Finish) and the state file records it. Every step can be repeated: a
// second 'apply' follows an upgrade that runs.
type imageUpgrade struct {
	Policy *PolicyUpgrade
	API    *kubeapi.Client
	// From is the image the cluster runs (the state file's), To the configuration's, whose signed measurements
	// the caller verified offline before anything else.
	From, To clusterImage
	// Register makes the image To known to the provider and returns the digest the provider computed of it.
	Register func(ctx context.Context) (string, error)
	// Record writes To into the state file, once the upgrade is finished.
	Record func(clusterImage) error
	// Ready, if set, waits until the cluster is healthy after the upgrade, as 'status' checks it.
	Ready func(ctx context.Context) error
	Out   io.Writer
	// Deadline is when following the upgrade stops, leaving it running (zero: never).
	Deadline time.Time
	// Reconnect, if set, returns a client of a control-plane API server that answers, for when the one
	// followed goes away (the upgrade replaces the control-plane node the admin kubeconfig names), and the
	// policy ports of the key services of the control-plane nodes there are now.
	Reconnect func(ctx context.Context) (*kubeapi.Client, []string, error)
}

// reconnect moves the upgrade's clients to an API server that answers after err (not an answer of the API
// server: a connection that broke or was refused), trying until ctx ends. It tells whether it did.
func (u *imageUpgrade) reconnect(ctx context.Context, err error) bool {
	var se *kubeapi.StatusError
	if u.Reconnect == nil || errors.As(err, &se) || ctx.Err() != nil {
		return false
	}
	fmt.Fprintf(u.out(), "  the API server stopped answering (%v); following the upgrade through another control-plane node\n", err)
	for {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Second):
		}
		if u.refresh(ctx) == nil {
			return true
		}
	}
}

// refresh moves the upgrade's clients to an API server that answers, and the policy's key services to those of
// the control-plane nodes there are now (an upgrade replaces them all).
func (u *imageUpgrade) refresh(ctx context.Context) error {
	api, keyServices, err := u.Reconnect(ctx)
	if err != nil {
		return err
	}
	u.API = api
	if u.Policy != nil {
		u.Policy.API, u.Policy.KeyServices = api, keyServices
	}
	return nil
}

// errUpgradeFailed marks an upgrade that the controller reported as failed.
var errUpgradeFailed = errors.New("the node upgrade failed")

// resumeHint says how to follow, or roll back, an upgrade that keeps running.
const resumeHint = "the upgrade keeps running in the cluster (NodeUpgrade " + v1alpha1.Name + "): run 'constellation apply' again to follow it, or 'constellation upgrade abort' to roll it back"

// rollbackHint says how to roll a failed upgrade back.
const rollbackHint = "Roll it back with 'constellation upgrade abort': the controller replaces the nodes of the new image by nodes of the old one, " +
	"then the key services accept the old node image only again; then apply the configuration again to retry."

// getNodeUpgrade reads the cluster's NodeUpgrade; nil if there is none.
func getNodeUpgrade(ctx context.Context, api *kubeapi.Client) (*v1alpha1.NodeUpgrade, error) {
	var nu v1alpha1.NodeUpgrade
	err := api.Do(ctx, http.MethodGet, nodeUpgradePath, "", nil, &nu)
	if kubeapi.IsStatus(err, http.StatusNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading NodeUpgrade %s: %w", v1alpha1.Name, err)
	}
	return &nu, nil
}

// current reports whether the status is the controller's answer to the NodeUpgrade's spec as it is: written
// for its generation and its target image. Until then the status is of an earlier spec.
func current(nu *v1alpha1.NodeUpgrade) bool {
	return nu.Status.ObservedGeneration >= nu.Generation && nu.Status.ImageDigest == nu.Spec.ImageDigest
}

// final reports whether the upgrade of the NodeUpgrade's spec has ended.
func final(nu *v1alpha1.NodeUpgrade) bool {
	switch nu.Status.Phase {
	case v1alpha1.PhaseSucceeded, v1alpha1.PhaseFailed, v1alpha1.PhaseAborted:
		return current(nu)
	}
	return false
}

// inFlight is the node the controller is replacing, or nil.
func inFlight(nu *v1alpha1.NodeUpgrade) *v1alpha1.NodeProgress {
	if n := len(nu.Status.Nodes); n > 0 && nu.Status.Nodes[n-1].Step != v1alpha1.StepDone {
		return &nu.Status.Nodes[n-1]
	}
	return nil
}

// upgradeAction is what 'apply' does with a running cluster.
type upgradeAction int

const (
	actionNone     upgradeAction = iota // the cluster runs the configured image, no upgrade runs
	actionStart                         // register the image, open the window, create or retarget the NodeUpgrade
	actionFollow                        // the upgrade to the configured image runs: follow it
	actionFinish                        // it succeeded: narrow the policy, record the image
	actionFailed                        // it failed: report it
	actionRollback                      // the configuration names the image the cluster ran before: stop the upgrade, roll the policy back
)

// decideUpgrade is what 'apply' does, from the image the state file records (from), the configured one (to)
// and the cluster's NodeUpgrade (nil: none). An upgrade to a third image is refused until it is finished or
// rolled back.
func decideUpgrade(from, to string, nu *v1alpha1.NodeUpgrade) (upgradeAction, error) {
	if from == to {
		switch {
		case nu == nil, nu.Spec.ImageDigest == to && nu.Status.Phase == v1alpha1.PhaseSucceeded && current(nu):
			return actionNone, nil
		case nu.Spec.ImageDigest == to:
			return actionRollback, nil // a rollback to it runs, or failed
		case nu.Status.Phase == v1alpha1.PhaseSucceeded && current(nu):
			return 0, fmt.Errorf("the cluster's nodes were all replaced by nodes of image %s (NodeUpgrade %s succeeded), but the configuration names the image it ran before, %s: "+
				"apply the configuration of %s to finish that upgrade, then upgrade back to %s", nu.Spec.ImageDigest, v1alpha1.Name, to, nu.Spec.ImageDigest, to)
		}
		return actionRollback, nil
	}
	switch {
	case nu == nil:
		return actionStart, nil
	case nu.Spec.ImageDigest == from && !final(nu):
		return 0, fmt.Errorf("a rollback to image %s runs in the cluster (NodeUpgrade %s): follow it to its end with 'constellation upgrade abort', then apply again", from, v1alpha1.Name)
	case nu.Spec.ImageDigest != to:
		if nu.Status.Phase == v1alpha1.PhaseSucceeded && current(nu) && nu.Spec.ImageDigest == from || nu.Status.Phase == v1alpha1.PhaseAborted && current(nu) {
			return actionStart, nil // an earlier upgrade, ended
		}
		return 0, fmt.Errorf("an upgrade to image %s is in the cluster (NodeUpgrade %s, phase %q), not to the configured %s: "+
			"roll it back with 'constellation upgrade abort' (or finish it by applying its configuration) before another", nu.Spec.ImageDigest, v1alpha1.Name, nu.Status.Phase, to)
	case nu.Spec.Abort:
		return 0, fmt.Errorf("the upgrade to image %s is being aborted: complete the rollback with 'constellation upgrade abort', then apply again", to)
	case nu.Status.Phase == v1alpha1.PhaseFailed && current(nu):
		return actionFailed, nil
	case nu.Status.Phase == v1alpha1.PhaseSucceeded && current(nu):
		return actionFinish, nil
	}
	return actionFollow, nil
}

// run upgrades the cluster, or follows, finishes or rolls back the upgrade in it, as decideUpgrade says.
func (u *imageUpgrade) run(ctx context.Context) error {
	nu, err := getNodeUpgrade(ctx, u.API)
	if err != nil {
		return err
	}
	action, err := decideUpgrade(u.From.Digest, u.To.Digest, nu)
	if err != nil {
		return badInput("%w", err)
	}
	switch action {
	case actionNone:
		fmt.Fprintf(u.out(), "The cluster runs node image %s, the configured one: nothing to upgrade\n", u.To.Digest)
		return nil
	case actionRollback:
		fmt.Fprintf(u.out(), "The configuration names node image %s, which the cluster ran before the upgrade to %s: rolling the upgrade back\n", u.To.Digest, nu.Spec.ImageDigest)
		return u.abort(ctx)
	case actionFailed:
		return u.failedError(nu)
	case actionStart:
		if err := u.start(ctx, nu); err != nil {
			return err
		}
	case actionFollow:
		fmt.Fprintf(u.out(), "Following the upgrade to node image %s that runs in the cluster\n", u.To.Digest)
	}
	if action != actionFinish {
		if nu, err = u.follow(ctx); err != nil {
			return err
		}
		if nu.Status.Phase == v1alpha1.PhaseFailed {
			return u.failedError(nu)
		}
	}
	return u.finish(ctx, nu)
}

// start makes the image known to the provider, opens the policy window and asks the controller for the
// upgrade.
func (u *imageUpgrade) start(ctx context.Context, nu *v1alpha1.NodeUpgrade) error {
	out := u.out()
	fmt.Fprintf(out, "Upgrading the cluster from node image %s to %s\n", u.From.Digest, u.To.Digest)
	digest, err := u.Register(ctx)
	if err != nil {
		return failed(fmt.Errorf("making node image %s known to the provider: %w", u.To.Digest, err))
	}
	if digest != u.To.Digest {
		return checkFailed(fmt.Errorf("the provider computed the digest %s of the configured node image file, but its signed measurements are for %s: "+
			"the file is not the image whose measurements were verified; nothing else was changed", digest, u.To.Digest))
	}
	fmt.Fprintf(out, "  node image %s known to the provider\n", digest)
	if u.To.KubernetesVersion != "" {
		from := "unknown"
		if v, err := clusterKubernetesVersion(ctx, u.API); err == nil {
			from = v
		}
		fmt.Fprintf(out, "  node image %s runs Kubernetes %s (the cluster: %s)\n", u.To.Digest, u.To.KubernetesVersion, from)
	}
	if _, _, err := u.Policy.Start(ctx, policyupdate.ImageSet{Image: u.From.Digest, Measurements: u.From.Measurements}, policyupdate.ImageSet{Image: u.To.Digest, Measurements: u.To.Measurements}); err != nil {
		return failed(fmt.Errorf("opening the upgrade's measurement policy: %w", err))
	}
	// The controller checks every replacement's kubelet against the version, and moves the cluster's Kubernetes
	// version by kubeadm's upgrade path (control plane first) if it is another.
	var k8s any
	if u.To.KubernetesVersion != "" {
		k8s = u.To.KubernetesVersion
	}
	spec := map[string]any{"imageDigest": u.To.Digest, "kubernetesVersion": k8s, "abort": false, "paused": false}
	if nu == nil {
		create := map[string]any{"imageDigest": u.To.Digest}
		if k8s != nil {
			create["kubernetesVersion"] = k8s
		}
		obj := map[string]any{
			"apiVersion": v1alpha1.GroupVersion.String(), "kind": "NodeUpgrade",
			"metadata": map[string]any{"name": v1alpha1.Name},
			"spec":     create,
		}
		err = u.API.Do(ctx, http.MethodPost, nodeUpgradesPath, "", obj, nil)
	} else {
		// A merge patch on the version read: an upgrade that changed meanwhile is not overwritten.
		err = u.API.Do(ctx, http.MethodPatch, nodeUpgradePath, kubeapi.MergePatch,
			map[string]any{"metadata": map[string]any{"resourceVersion": nu.ResourceVersion}, "spec": spec}, nil)
	}
	if err != nil {
		return failed(fmt.Errorf("asking the upgrade controller for the upgrade (NodeUpgrade %s): %w; the measurement policy accepts both images: "+
			"apply again, or roll back with 'constellation upgrade abort'", v1alpha1.Name, err))
	}
	fmt.Fprintf(out, "  NodeUpgrade %s asks the upgrade controller to replace every node by one of image %s\n", v1alpha1.Name, u.To.Digest)
	return nil
}

// follow watches the NodeUpgrade until the controller reports the end of its upgrade, printing one line per
// node whenever its step changes. It stops, leaving the upgrade running, when ctx ends or at the deadline.
func (u *imageUpgrade) follow(ctx context.Context) (*v1alpha1.NodeUpgrade, error) {
	p := &progressPrinter{out: u.out()}
	// A NodeUpgrade turned toward another image ('upgrade abort' rolls back) ends the following: its success is
	// not this upgrade's, and narrowing the policy to this upgrade's image would refuse every node of the other.
	nu, err := u.watch(ctx, p, func(nu *v1alpha1.NodeUpgrade) bool { return final(nu) || nu.Spec.ImageDigest != u.To.Digest })
	switch {
	case errors.Is(err, errWatchInterrupted):
		return nil, failed(fmt.Errorf("interrupted: %s", resumeHint))
	case errors.Is(err, errWatchDeadline):
		return nil, checkFailed(fmt.Errorf("the upgrade has not ended within --wait; %s", resumeHint))
	case err != nil:
		return nil, failed(fmt.Errorf("following the upgrade: %w; %s", err, resumeHint))
	case nu == nil:
		return nil, failed(fmt.Errorf("NodeUpgrade %s was deleted while the upgrade ran (by 'constellation upgrade abort'?)", v1alpha1.Name))
	case nu.Spec.ImageDigest != u.To.Digest:
		return nil, failed(fmt.Errorf("the upgrade was turned toward node image %s (a rollback by 'constellation upgrade abort'); the measurement policy is left as it is: "+
			"'constellation upgrade abort' follows the rollback and narrows it", nu.Spec.ImageDigest))
	case nu.Status.Phase == v1alpha1.PhaseAborted:
		return nil, failed(fmt.Errorf("the upgrade was aborted: %s", nu.Status.Message))
	}
	return nu, nil
}

// Why watch stopped before its condition held.
var (
	errWatchInterrupted = errors.New("interrupted")
	errWatchDeadline    = errors.New("deadline reached")
)

// watch reads the NodeUpgrade and then watches it (every change of its status is an event, so no step is
// missed), printing its progress, until done holds for it (it returns it) or it is deleted (nil). It fails with
// errWatchInterrupted when ctx ends and with errWatchDeadline at the deadline.
func (u *imageUpgrade) watch(ctx context.Context, p *progressPrinter, done func(*v1alpha1.NodeUpgrade) bool) (*v1alpha1.NodeUpgrade, error) {
	wctx := ctx
	if !u.Deadline.IsZero() {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, u.Deadline)
		defer cancel()
	}
	stopped := func(err error) error {
		switch {
		case ctx.Err() != nil:
			return errWatchInterrupted
		case wctx.Err() != nil:
			return errWatchDeadline
		}
		return err
	}
	rv := "" // where the watch goes on; empty: read the NodeUpgrade first
	for {
		if rv == "" {
			nu, err := getNodeUpgrade(wctx, u.API)
			if err != nil {
				if u.reconnect(wctx, err) {
					continue
				}
				return nil, stopped(err)
			}
			if nu == nil {
				return nil, nil
			}
			p.print(nu)
			if done(nu) {
				return nu, nil
			}
			rv = nu.ResourceVersion
		}
		var (
			result  *v1alpha1.NodeUpgrade
			deleted bool
		)
		path := nodeUpgradesPath + "?fieldSelector=metadata.name%3D" + v1alpha1.Name + "&timeoutSeconds=20&resourceVersion=" + rv
		err := u.API.Watch(wctx, path, func(ev kubeapi.WatchEvent) error {
			switch ev.Type {
			case "ADDED", "MODIFIED":
				var nu v1alpha1.NodeUpgrade
				if err := json.Unmarshal(ev.Object, &nu); err != nil {
					return fmt.Errorf("a watch event of NodeUpgrade %s: %w", v1alpha1.Name, err)
				}
				rv = nu.ResourceVersion
				p.print(&nu)
				if done(&nu) {
					result = &nu
					return kubeapi.ErrStopWatch
				}
			case "DELETED":
				deleted = true
				return kubeapi.ErrStopWatch
			case "ERROR":
				rv = "" // the version is too old: read it again
				return kubeapi.ErrStopWatch
			}
			return nil
		})
		switch {
		case result != nil:
			return result, nil
		case deleted:
			return nil, nil
		case err != nil:
			if u.reconnect(wctx, err) {
				rv = "" // read it again from the other API server
				continue
			}
			return nil, stopped(err)
		case wctx.Err() != nil:
			return nil, stopped(nil)
		}
	}
}

// progressPrinter prints the progress of a NodeUpgrade: a line whenever a node's step changes.
type progressPrinter struct {
	out   io.Writer
	steps map[string]v1alpha1.Step
	phase string
}

func (p *progressPrinter) print(nu *v1alpha1.NodeUpgrade) {
	if nu.Status.ObservedGeneration < nu.Generation {
		return // the status of an earlier spec (the nodes of a target changed since are finished, and shown)
	}
	if p.steps == nil {
		p.steps = map[string]v1alpha1.Step{}
	}
	for _, n := range nu.Status.Nodes {
		if p.steps[n.OldNode] == n.Step {
			continue
		}
		p.steps[n.OldNode] = n.Step
		node := n.OldNode + " (" + n.Role + ")"
		if n.ReplacementNode != "" {
			node += " -> " + n.ReplacementNode
		}
		fmt.Fprintf(p.out, "  %s: %s: %s\n", node, n.Step, firstLine(n.Message))
	}
	if phase := string(nu.Status.Phase); phase != p.phase && final(nu) {
		p.phase = phase
		fmt.Fprintf(p.out, "  upgrade %s: %s\n", strings.ToLower(phase), firstLine(nu.Status.Message))
	}
}

// failedError reports a failed upgrade, with the controller's message and how to roll back.
func (u *imageUpgrade) failedError(nu *v1alpha1.NodeUpgrade) error {
	return failed(fmt.Errorf("%w: %s\n%s", errUpgradeFailed, nu.Status.Message, rollbackHint))
}

// finish narrows the measurement policy to the new image (idempotent: a policy narrowed before counts),
// records the image in the state file and waits until the cluster is healthy.
func (u *imageUpgrade) finish(ctx context.Context, nu *v1alpha1.NodeUpgrade) error {
	out := u.out()
	fmt.Fprintf(out, "Every node runs node image %s: %s\n", u.To.Digest, nu.Status.Message)
	// The narrowing goes to the key services of the control-plane nodes there are now: the upgrade replaced them.
	if u.Reconnect != nil {
		if err := u.refresh(ctx); err != nil {
			return failed(fmt.Errorf("finding the control-plane nodes after the upgrade: %w; apply again to finish", err))
		}
	}
	if _, err := u.Policy.Finish(ctx); err != nil {
		st, serr := u.Policy.Status(ctx)
		if serr != nil || st.Latest == nil || len(st.Latest.Sets) != 1 || !containsSet(st.Latest.Sets, u.To.Measurements) || len(st.Unreachable) > 0 {
			return failed(fmt.Errorf("narrowing the measurement policy to the new image: %w; apply again to finish", err))
		}
		fmt.Fprintf(out, "  measurement policy %s in force already\n", st.Latest)
	}
	if err := u.Record(u.To); err != nil {
		return failed(fmt.Errorf("recording node image %s in %s: %w", u.To.Digest, StateFile, err))
	}
	fmt.Fprintf(out, "Upgrade finished: the key services accept node image %s only; %s records it\n", u.To.Digest, StateFile)
	if u.Ready != nil {
		return u.Ready(ctx)
	}
	return nil
}

// abort rolls the cluster's upgrade back to the image it ran before (From, the state file's), as 'upgrade
// abort' and 'apply' with the old configuration do. It turns the NodeUpgrade toward that image: the upgrade
// controller finishes the node in flight, then replaces every node that its attestation does not prove to run
// the old image (those the upgrade replaced already) by one that does, the control plane first, one extra
// node at a time, as PodDisruptionBudgets allow. (A failed upgrade's NodeUpgrade, which the controller no
// longer acts on, is replaced by a new one.) Only once the controller reports that every node runs the old
// image is the measurement policy narrowed to it, at the key services of the control-plane nodes there are
// then, and the NodeUpgrade removed. Every step can be repeated: abort again follows a rollback that runs and
// completes one that was interrupted. An upgrade that succeeded is not rolled back.
//
// Without a NodeUpgrade (an upgrade opened with 'upgrade start'), only the measurement policy is rolled back.
func (u *imageUpgrade) abort(ctx context.Context) error {
	out := u.out()
	if u.From.Digest == "" || len(u.From.Measurements) == 0 {
		return badInput("%s records no node image (an earlier CLI created the cluster): add the imageDigest and measurements of the image the cluster ran before the upgrade to it, then abort again", StateFile)
	}
	p := &progressPrinter{out: out}
	asked, seen := false, false
	for {
		nu, err := getNodeUpgrade(ctx, u.API)
		if err != nil {
			if u.reconnect(ctx, err) {
				continue
			}
			return failed(err)
		}
		if nu == nil {
			if seen {
				return failed(fmt.Errorf("NodeUpgrade %s was deleted while the rollback ran: nodes of the new image may be left, so the measurement policy was not narrowed; run 'constellation upgrade abort' again", v1alpha1.Name))
			}
			fmt.Fprintf(out, "  no NodeUpgrade in the cluster: the upgrade controller replaced no node, only the measurement policy is rolled back\n")
			break
		}
		seen = true
		p.print(nu)
		if nu.Spec.ImageDigest == u.From.Digest {
			// Failed is final whatever the target: the controller may have failed on the node in flight (of the
			// new image) after the rollback was asked for.
			ended := final(nu) || nu.Status.Phase == v1alpha1.PhaseFailed
			switch {
			case final(nu) && nu.Status.Phase == v1alpha1.PhaseSucceeded:
				// Every node runs the old image.
			case final(nu) && nu.Status.Phase == v1alpha1.PhaseFailed && asked:
				return failed(fmt.Errorf("the rollback to node image %s failed: %s\nThe measurement policy still accepts both images. Fix what failed, then run 'constellation upgrade abort' again", u.From.Digest, nu.Status.Message))
			case ended, nu.Spec.Abort, nu.Spec.Paused:
				if err := u.askRollback(ctx, nu); err != nil {
					if kubeapi.IsStatus(err, http.StatusConflict) {
						continue
					}
					return err
				}
				asked = true
				continue
			default:
				if err := u.followRollback(ctx, p); err != nil {
					return err
				}
				continue
			}
			if !asked {
				// The NodeUpgrade of an upgrade to this image that succeeded and was finished (the state file records
				// its image): no window is open, there is nothing to roll back.
				st, err := u.Policy.Status(ctx)
				if err != nil {
					return failed(fmt.Errorf("reading the measurement policy in force: %w", err))
				}
				if !windowOpen(st) {
					return badInput("the upgrade to node image %s succeeded and is finished (%s records it, the key services accept it only): there is nothing to roll back; "+
						"to go back to another image, apply its configuration", u.From.Digest, StateFile)
				}
				fmt.Fprintf(out, "  the upgrade controller rolled every node back to node image %s\n", u.From.Digest)
			}
			if err := u.narrowRollback(ctx); err != nil {
				return err
			}
			opts := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": map[string]any{"resourceVersion": nu.ResourceVersion}}
			err := u.API.Do(ctx, http.MethodDelete, nodeUpgradePath, "", opts, nil)
			if kubeapi.IsStatus(err, http.StatusConflict) {
				continue // changed meanwhile: look again
			}
			if err != nil && !kubeapi.IsStatus(err, http.StatusNotFound) {
				return failed(fmt.Errorf("deleting NodeUpgrade %s after the rollback: %w; the rollback is complete otherwise", v1alpha1.Name, err))
			}
			fmt.Fprintf(out, "Upgrade rolled back: every node runs node image %s, and the key services accept it only\n", u.From.Digest)
			return nil
		}
		if nu.Spec.ImageDigest != u.From.Digest && nu.Status.Phase == v1alpha1.PhaseSucceeded && current(nu) {
			return badInput("the upgrade to image %s succeeded (every node runs it): rolling its measurement policy back would refuse every node; "+
				"finish it with 'constellation apply' and the configuration of that image", nu.Spec.ImageDigest)
		}
		if err := u.askRollback(ctx, nu); err != nil {
			if kubeapi.IsStatus(err, http.StatusConflict) {
				continue // the controller or someone else wrote meanwhile
			}
			return err
		}
		asked = true
	}
	// No NodeUpgrade: the measurement policy only.
	rollback, waiting, err := u.Policy.Rollback(ctx, u.From.Measurements)
	if err != nil {
		return failed(fmt.Errorf("rolling the measurement policy back: %w", err))
	}
	if len(waiting) > 0 {
		return failed(fmt.Errorf("rolling the measurement policy back: %w", unreachableError(waiting)))
	}
	fmt.Fprintf(out, "Upgrade rolled back: %s; nodes of the new image are refused from now on\n", rollback)
	return nil
}

// windowOpen reports whether some key service has an upgrade's two images in force, or did not answer.
func windowOpen(st *PolicyStatus) bool {
	if len(st.Unreachable) > 0 {
		return true
	}
	for _, f := range st.InForce {
		if len(f.Sets()) == 2 {
			return true
		}
	}
	return false
}

// askRollback turns the NodeUpgrade toward the image the cluster ran before: a merge patch of its target on
// the version read (a conflict means it changed meanwhile: read it again), or, if the controller no longer acts
// on it (it failed, on the rollback's target or on the node of the new image it was finishing), a new
// NodeUpgrade in its place.
func (u *imageUpgrade) askRollback(ctx context.Context, nu *v1alpha1.NodeUpgrade) error {
	out := u.out()
	if nu.Status.Phase == v1alpha1.PhaseFailed {
		opts := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": map[string]any{"resourceVersion": nu.ResourceVersion}}
		if err := u.API.Do(ctx, http.MethodDelete, nodeUpgradePath, "", opts, nil); err != nil && !kubeapi.IsStatus(err, http.StatusNotFound) {
			if kubeapi.IsStatus(err, http.StatusConflict) {
				return err
			}
			return failed(fmt.Errorf("deleting the failed NodeUpgrade %s: %w", v1alpha1.Name, err))
		}
		obj := map[string]any{
			"apiVersion": v1alpha1.GroupVersion.String(), "kind": "NodeUpgrade",
			"metadata": map[string]any{"name": v1alpha1.Name},
			"spec":     map[string]any{"imageDigest": u.From.Digest},
		}
		if err := u.API.Do(ctx, http.MethodPost, nodeUpgradesPath, "", obj, nil); err != nil {
			if kubeapi.IsStatus(err, http.StatusConflict) {
				return err
			}
			return failed(fmt.Errorf("asking the upgrade controller for the rollback (NodeUpgrade %s): %w; the measurement policy still accepts both images: run 'constellation upgrade abort' again", v1alpha1.Name, err))
		}
		fmt.Fprintf(out, "  the upgrade had failed (%s); a new NodeUpgrade %s asks the upgrade controller to replace every node of the new image by one of node image %s\n", firstLine(nu.Status.Message), v1alpha1.Name, u.From.Digest)
		return nil
	}
	spec := map[string]any{"imageDigest": u.From.Digest, "kubernetesVersion": nil, "abort": false, "paused": false}
	err := u.API.Do(ctx, http.MethodPatch, nodeUpgradePath, kubeapi.MergePatch,
		map[string]any{"metadata": map[string]any{"resourceVersion": nu.ResourceVersion}, "spec": spec}, nil)
	if err != nil {
		if kubeapi.IsStatus(err, http.StatusConflict) {
			return err
		}
		return failed(fmt.Errorf("asking the upgrade controller for the rollback: %w", err))
	}
	if cur := inFlight(nu); cur != nil && current(nu) {
		fmt.Fprintf(out, "  asked the upgrade controller to roll back: it finishes %s (step %s), then replaces every node of the new image by one of node image %s, control plane first\n", cur.OldNode, cur.Step, u.From.Digest)
	} else {
		fmt.Fprintf(out, "  asked the upgrade controller to roll back: it replaces every node of the new image by one of node image %s, control plane first\n", u.From.Digest)
	}
	return nil
}

// followRollback watches the NodeUpgrade, printing the progress of each node, until the rollback ends (or its
// target changes, or it is deleted).
func (u *imageUpgrade) followRollback(ctx context.Context, p *progressPrinter) error {
	_, err := u.watch(ctx, p, func(nu *v1alpha1.NodeUpgrade) bool {
		return final(nu) || nu.Status.Phase == v1alpha1.PhaseFailed || nu.Spec.ImageDigest != u.From.Digest
	})
	switch {
	case errors.Is(err, errWatchInterrupted):
		return failed(fmt.Errorf("interrupted: the rollback keeps running in the cluster (NodeUpgrade %s); run 'constellation upgrade abort' again to follow it and narrow the measurement policy once it is done", v1alpha1.Name))
	case errors.Is(err, errWatchDeadline):
		return checkFailed(fmt.Errorf("the rollback has not ended within --wait; it keeps running in the cluster (NodeUpgrade %s): run 'constellation upgrade abort' again to follow it and narrow the measurement policy once it is done", v1alpha1.Name))
	case err != nil:
		return failed(fmt.Errorf("following the rollback: %w; run 'constellation upgrade abort' again", err))
	}
	return nil
}

// rollbackRetry is how long the rollback waits before it asks a key service that did not answer again.
var rollbackRetry = 5 * time.Second

// narrowRollback narrows the measurement policy to the old image at the key services of the control-plane
// nodes there are now (the rollback replaced them). A key service that does not answer (its node still joins:
// it serves its policy port only once it has the master secret, or the host keeps it silent) is waited for,
// with a line saying so, until the deadline: the CLI cannot tell a key service that holds no secret from one
// the host silences, so it never skips one. The others have the old image only in force meanwhile, and hand it
// on with the master secret to a node that joins later.
func (u *imageUpgrade) narrowRollback(ctx context.Context) error {
	out := u.out()
	if u.Reconnect != nil {
		if err := u.refresh(ctx); err != nil {
			return failed(fmt.Errorf("finding the control-plane nodes after the rollback: %w; run 'constellation upgrade abort' again to narrow the measurement policy", err))
		}
	}
	said := ""
	for {
		rollback, waiting, err := u.Policy.Rollback(ctx, u.From.Measurements)
		if err != nil {
			return failed(fmt.Errorf("narrowing the measurement policy to node image %s: %w; run 'constellation upgrade abort' again", u.From.Digest, err))
		}
		if len(waiting) == 0 {
			fmt.Fprintf(out, "  measurement policy %s in force at every key service (%d)\n", rollback, len(u.Policy.KeyServices))
			return nil
		}
		addrs := make([]string, 0, len(waiting))
		for a := range waiting {
			addrs = append(addrs, a)
		}
		sort.Strings(addrs)
		if line := strings.Join(addrs, ", "); line != said {
			said = line
			fmt.Fprintf(out, "  waiting for the key services at %s (%s): they have not answered, or not taken the rollback; a control-plane node that is still joining serves its policy port once it has the master secret\n",
				line, firstLine(waiting[addrs[0]].Error()))
		}
		select {
		case <-ctx.Done():
			return failed(fmt.Errorf("interrupted while waiting for the key services at %s; the other key services accept node image %s only: run 'constellation upgrade abort' again", said, u.From.Digest))
		case <-u.deadline():
			return checkFailed(fmt.Errorf("the key services at %s have not taken the rollback within --wait (%w); the others accept node image %s only. "+
				"A control-plane node whose key service never answers may hold the old policy: let it finish joining, or remove it through the provider, then run 'constellation upgrade abort' again",
				said, waiting[addrs[0]], u.From.Digest))
		case <-time.After(rollbackRetry):
		}
		if u.Reconnect != nil {
			if err := u.refresh(ctx); err != nil {
				fmt.Fprintf(out, "  finding the control-plane nodes: %v\n", err)
			}
		}
	}
}

// deadline is closed at the deadline (never without one).
func (u *imageUpgrade) deadline() <-chan time.Time {
	if u.Deadline.IsZero() {
		return nil
	}
	return time.After(time.Until(u.Deadline))
}

func (u *imageUpgrade) out() io.Writer {
	if u.Out == nil {
		return io.Discard
	}
	return u.Out
}

// upgradeCounts are the nodes an upgrade replaced and the nodes it has to replace in all: those replaced, and
// every node of the cluster (nodes, by name) that is neither a replacement nor a node it replaced already (the
// node in flight among them). Once it succeeded, the total is the replaced.
func upgradeCounts(nu *v1alpha1.NodeUpgrade, nodes []string) (done, total int) {
	if !current(nu) {
		return 0, len(nodes)
	}
	ours := map[string]bool{}
	for _, n := range nu.Status.Nodes {
		if n.Step == v1alpha1.StepDone {
			done++
			ours[n.OldNode] = true
		}
		if n.ReplacementNode != "" {
			ours[n.ReplacementNode] = true
		}
	}
	if nu.Status.Phase == v1alpha1.PhaseSucceeded {
		return done, done
	}
	total = done
	for _, name := range nodes {
		if !ours[name] {
			total++
		}
	}
	return done, total
}

// printUpgrade writes the upgrade section of 'status': the NodeUpgrade's target, phase and progress
// (replaced/total), the node in flight with its step, and how to roll a failed upgrade back.
func printUpgrade(out io.Writer, nu *v1alpha1.NodeUpgrade, nodes []string) {
	fmt.Fprintln(out)
	if !current(nu) {
		fmt.Fprintf(out, "Upgrade to node image %s: not yet taken up by the upgrade controller\n", nu.Spec.ImageDigest)
		return
	}
	done, total := upgradeCounts(nu, nodes)
	phase := string(nu.Status.Phase)
	if nu.Spec.Abort && !final(nu) {
		phase += ", aborting after the node in flight"
	} else if nu.Spec.Paused && !final(nu) {
		phase += ", paused"
	}
	fmt.Fprintf(out, "Upgrade to node image %s: %s, %d/%d nodes replaced\n", nu.Spec.ImageDigest, phase, done, total)
	if cur := inFlight(nu); cur != nil {
		node := cur.OldNode + " (" + cur.Role + ")"
		if cur.ReplacementNode != "" {
			node += " -> " + cur.ReplacementNode
		}
		fmt.Fprintf(out, "  node %s, step %s: %s\n", node, cur.Step, firstLine(cur.Message))
	}
	fmt.Fprintf(out, "  %s\n", firstLine(nu.Status.Message))
	switch {
	case nu.Status.Phase == v1alpha1.PhaseFailed:
		fmt.Fprintf(out, "  %s\n", rollbackHint)
	case !final(nu):
		fmt.Fprintln(out, "  'constellation apply' follows it; 'constellation upgrade abort' rolls it back")
	}
}

// showUpgrade writes the upgrade section of 'status' if the cluster has a NodeUpgrade; why not, if it cannot
// be read (a cluster without the upgrade controller's CRD has none).
func showUpgrade(ctx context.Context, out io.Writer, api *kubeapi.Client) {
	nu, err := getNodeUpgrade(ctx, api)
	if err != nil {
		fmt.Fprintf(out, "\nUpgrade: %v\n", err)
		return
	}
	if nu == nil {
		return
	}
	var list struct {
		Items []struct{ Metadata struct{ Name string } }
	}
	if err := api.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
		fmt.Fprintf(out, "\nUpgrade: listing nodes: %v\n", err)
		return
	}
	var nodes []string
	for _, n := range list.Items {
		nodes = append(nodes, n.Metadata.Name)
	}
	printUpgrade(out, nu, nodes)
}

// clusterKubernetesVersion is the Kubernetes version of the cluster's kubeadm configuration
// (kube-system/kubeadm-config), which kubeadm init and kubeadm upgrade apply write.
func clusterKubernetesVersion(ctx context.Context, api *kubeapi.Client) (string, error) {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := api.Do(ctx, http.MethodGet, "/api/v1/namespaces/kube-system/configmaps/kubeadm-config", "", nil, &cm); err != nil {
		return "", fmt.Errorf("reading the cluster's kubeadm configuration (kube-system/kubeadm-config): %w", err)
	}
	var cc struct {
		KubernetesVersion string `json:"kubernetesVersion"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["ClusterConfiguration"]), &cc); err != nil || cc.KubernetesVersion == "" {
		return "", fmt.Errorf("kube-system/kubeadm-config names no Kubernetes version (%v)", err)
	}
	return cc.KubernetesVersion, nil
}

// imageKubernetesVersion is the Kubernetes version of a node image, as its verified signed measurements
// (res) name it: never from its manifest, which the host can edit. Measurements signed before statements
// carried the version give none, and an error: nothing may decide a Kubernetes upgrade without it.
func imageKubernetesVersion(res *signed.Result) (string, error) {
	if res.Predicate.KubernetesVersion == "" {
		return "", fmt.Errorf("the signed measurements of node image %s name no Kubernetes version (they were signed before signatures carried it): "+
			"the Kubernetes version of an upgrade is taken from the signature only; sign the image again ('make node-image', or a release that signs it)", res.Predicate.ImageDigest)
	}
	return res.Predicate.KubernetesVersion, nil
}
