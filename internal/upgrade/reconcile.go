package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

// podNodeIndex indexes the cached pods by the node they are bound to.
const podNodeIndex = "spec.nodeName"

// Reconciler drives the cluster's NodeUpgrade, one step of one node per call.
type Reconciler struct {
	// Client reads Nodes and Pods from the manager's cache and writes through to the API server.
	Client client.Client
	// Reader reads the NodeUpgrade from the API server itself, never from a cache: the status is the
	// controller's memory, and a stale copy of it would repeat a step.
	Reader client.Reader
	Fleet  Fleet
	Etcd   Etcd
	Log    *slog.Logger
	// Retry is how long to wait before asking again what only time changes: an eviction a
	// PodDisruptionBudget refused, an etcd member that has not started yet.
	Retry time.Duration
	// JoinTimeout is how long a replacement may take to register and become Ready; after it, the upgrade
	// fails (the old node was not touched).
	JoinTimeout time.Duration
	// now is the clock of status timestamps.
	now func() time.Time
}

// Reconcile makes one step of the upgrade and records it in the NodeUpgrade's status.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var nu v1alpha1.NodeUpgrade
	if err := r.Reader.Get(ctx, req.NamespacedName, &nu); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	stored := nu.DeepCopy()
	// save stores the status as it is now: a merge patch of what changed since it was last stored, without a
	// version check, as the controller (the leader) is the status' only writer, so that a spec edited
	// meanwhile (abort, pause) does not lose a step. If it cannot, it puts the status back as it was stored, so
	// that nothing of the failed step is written later.
	save := func() error {
		if equality.Semantic.DeepEqual(stored.Status, nu.Status) {
			return nil
		}
		base := nu.DeepCopy()
		base.Status = stored.Status
		if err := r.Client.Status().Patch(ctx, &nu, client.MergeFrom(base)); err != nil {
			stored.Status.DeepCopyInto(&nu.Status)
			return fmt.Errorf("recording the upgrade's progress in NodeUpgrade %s: %w", nu.Name, err)
		}
		stored = nu.DeepCopy()
		return nil
	}
	res, err := r.step(ctx, &nu, save)
	if serr := save(); serr != nil {
		return reconcile.Result{}, errors.Join(err, serr)
	}
	return res, err
}

// step advances the upgrade by one step. Errors it returns are transient (the API server); failures of the
// upgrade go into the status.
func (r *Reconciler) step(ctx context.Context, nu *v1alpha1.NodeUpgrade, save func() error) (reconcile.Result, error) {
	st := &nu.Status
	st.ObservedGeneration = nu.Generation
	if st.Phase == v1alpha1.PhaseFailed {
		return reconcile.Result{}, nil // final: the operator looks at what failed and creates a new NodeUpgrade
	}
	cur := current(st)
	if cur == nil && (st.ImageDigest != nu.Spec.ImageDigest || st.KubernetesVersion != nu.Spec.KubernetesVersion) {
		// A new target (or the first): start from the nodes as they are.
		st.ImageDigest, st.KubernetesVersion = nu.Spec.ImageDigest, nu.Spec.KubernetesVersion
		st.Nodes = nil
		r.setPhase(st, v1alpha1.PhasePending, "looking for nodes that do not run image "+st.ImageDigest)
	}
	if cur != nil {
		return r.advance(ctx, nu, cur)
	}
	if nu.Spec.Abort {
		r.setPhase(st, v1alpha1.PhaseAborted, fmt.Sprintf("aborted by spec.abort after %d replaced nodes", len(st.Nodes)))
		return reconcile.Result{}, nil
	}
	if nu.Spec.Paused {
		r.setPhase(st, phaseOr(st.Phase, v1alpha1.PhasePending), "paused by spec.paused before the next node")
		return reconcile.Result{}, nil
	}
	next, role, existing, err := r.next(ctx, st)
	if err != nil {
		return reconcile.Result{}, err
	}
	if next == "" {
		r.setPhase(st, v1alpha1.PhaseSucceeded, fmt.Sprintf("every node runs image %s (%d replaced)", st.ImageDigest, len(st.Nodes)))
		return reconcile.Result{}, nil
	}
	if err := r.checkReplacement(ctx, st, next, role); err != nil {
		st.Nodes = append(st.Nodes, v1alpha1.NodeProgress{OldNode: next, Role: role})
		cur = &st.Nodes[len(st.Nodes)-1]
		r.setStep(cur, v1alpha1.StepCreating, "")
		r.fail(st, cur, err)
		return reconcile.Result{}, nil
	}
	if role != RoleControlPlane && st.KubernetesVersion != "" {
		// kubeadm moves the addons once the old control-plane nodes are gone; a worker of the new version
		// would find a kube-proxy it does not have.
		why, err := r.addonsAt(ctx, st.KubernetesVersion)
		var kf *kubeadmFailure
		switch {
		case errors.As(err, &kf):
			st.Nodes = append(st.Nodes, v1alpha1.NodeProgress{OldNode: next, Role: role})
			cur = &st.Nodes[len(st.Nodes)-1]
			r.setStep(cur, v1alpha1.StepCreating, "")
			r.fail(st, cur, fmt.Errorf("%w\nNo worker was replaced", err))
			return reconcile.Result{}, nil
		case err != nil:
			return reconcile.Result{}, err
		case why != "":
			r.setPhase(st, v1alpha1.PhaseRunning, fmt.Sprintf("waiting for kubeadm to move the addons to Kubernetes %s before replacing worker %s (%s)", st.KubernetesVersion, next, why))
			return reconcile.Result{RequeueAfter: r.Retry}, nil
		}
	}
	// Record that a replacement is being created before asking for it: if the controller stops in between,
	// the next one sees the mark and stops instead of creating a second extra node.
	st.Nodes = append(st.Nodes, v1alpha1.NodeProgress{OldNode: next, Role: role, Step: v1alpha1.StepCreating})
	cur = &st.Nodes[len(st.Nodes)-1]
	r.setStep(cur, v1alpha1.StepCreating, "asking the provider for a "+role+" node with image "+st.ImageDigest)
	r.setPhase(st, v1alpha1.PhaseRunning, "replacing "+next)
	if err := save(); err != nil {
		return reconcile.Result{}, err
	}
	cur = &st.Nodes[len(st.Nodes)-1]
	r.Log.Info("Replacing node", "node", next, "role", role, "image", st.ImageDigest)
	name, err := r.Fleet.CreateNode(ctx, role, st.ImageDigest)
	if err != nil {
		r.fail(st, cur, fmt.Errorf("the provider did not create a replacement: %w; nothing was changed, delete and recreate the NodeUpgrade to try again", err))
		return reconcile.Result{}, nil
	}
	// The provider is the host: a replacement it names must be a node that did not exist before, or the
	// upgrade would drain a node for one that is there already (and count that one as upgraded).
	if len(validation.IsDNS1123Subdomain(name)) > 0 || existing[name] || r.known(st, name, cur) {
		r.fail(st, cur, fmt.Errorf("the provider named the replacement %q, which is not a new node; nothing was drained", name))
		return reconcile.Result{}, nil
	}
	cur.ReplacementNode = name
	r.setStep(cur, v1alpha1.StepJoining, "waiting for "+name+" to register")
	return reconcile.Result{}, nil
}

// checkReplacement refuses to replace the node name of the role when that would break the cluster: the
// control-plane node that serves the cluster's endpoint (checkEndpoint), any node for a Kubernetes version
// kubeadm cannot upgrade the cluster to (checkTarget), and a worker while the control plane is not on the
// target version yet (a kubelet newer than the API server).
func (r *Reconciler) checkReplacement(ctx context.Context, st *v1alpha1.NodeUpgradeStatus, name, role string) error {
	if role == RoleControlPlane {
		if err := r.checkEndpoint(ctx, name); err != nil {
			return err
		}
	}
	if st.KubernetesVersion == "" {
		return nil
	}
	if err := r.checkTarget(ctx, st.KubernetesVersion); err != nil {
		return err
	}
	if role != RoleControlPlane {
		why, err := r.controlPlaneAt(ctx, st.KubernetesVersion)
		if err != nil {
			return err
		}
		if why != "" {
			return fmt.Errorf("refusing to replace worker %s by a node of Kubernetes %s before the control plane is on %s (%s): a kubelet must never be newer than the API server; "+
				"nothing was changed, find out why the control plane was not upgraded (the control-plane replacements' kubeadm upgrade apply)", name, st.KubernetesVersion, st.KubernetesVersion, why)
		}
	}
	return nil
}

// advance takes the node in flight one step further.
func (r *Reconciler) advance(ctx context.Context, nu *v1alpha1.NodeUpgrade, cur *v1alpha1.NodeProgress) (reconcile.Result, error) {
	st := &nu.Status
	switch cur.Step {
	case v1alpha1.StepCreating:
		// Only a stopped controller leaves this mark behind (see step): the provider may or may not have
		// created a node, and creating another could leave two extra nodes.
		r.fail(st, cur, errors.New("the controller stopped while the provider created the replacement; check the provider for a node it created for this, delete it, and recreate the NodeUpgrade"))
		return reconcile.Result{}, nil
	case v1alpha1.StepJoining:
		return r.joining(ctx, nu, cur)
	case v1alpha1.StepDraining:
		return r.draining(ctx, nu, cur)
	case v1alpha1.StepRemoving:
		return r.removing(ctx, st, cur)
	}
	r.fail(st, cur, fmt.Errorf("unknown step %q", cur.Step))
	return reconcile.Result{}, nil
}

// joining waits until the replacement is registered, Ready, and reports the wanted image and version.
func (r *Reconciler) joining(ctx context.Context, nu *v1alpha1.NodeUpgrade, cur *v1alpha1.NodeProgress) (reconcile.Result, error) {
	st := &nu.Status
	// wait waits for the replacement until the join timeout, then fails.
	wait := func(msg string) (reconcile.Result, error) {
		left := r.JoinTimeout
		if cur.StepStarted != nil {
			left -= r.clock().Sub(cur.StepStarted.Time)
		}
		if left <= 0 {
			r.fail(st, cur, fmt.Errorf("%s did not join within %s (%s); the old node was not touched, delete the replacement through the provider", cur.ReplacementNode, r.JoinTimeout, msg))
			return reconcile.Result{}, nil
		}
		r.setMessage(st, cur, msg)
		return reconcile.Result{RequeueAfter: left}, nil
	}
	var node corev1.Node
	if err := r.Client.Get(ctx, types.NamespacedName{Name: cur.ReplacementNode}, &node); apierrors.IsNotFound(err) {
		return wait("waiting for " + cur.ReplacementNode + " to register")
	} else if err != nil {
		return reconcile.Result{}, fmt.Errorf("reading node %s: %w", cur.ReplacementNode, err)
	}
	// Only the replacement itself can write this (with its kubelet's credentials): kubeadm failed on it.
	if msg := node.Annotations[v1alpha1.KubeadmErrorAnnotation]; msg != "" {
		r.fail(st, cur, fmt.Errorf("kubeadm failed on the replacement %s: %s\nThe old node was not touched; delete the replacement through the provider", cur.ReplacementNode, msg))
		return reconcile.Result{}, nil
	}
	if ready, why := nodeReady(&node); !ready {
		return wait("waiting for " + cur.ReplacementNode + " to become Ready: " + why)
	}
	// kubeadm labels a control-plane node only after its kubelet registered it (and it may be Ready by then):
	// a control-plane replacement without the label yet is waited for. A kubelet cannot set the label itself
	// (NodeRestriction), so a worker replacement that has it joined as a control-plane node.
	switch cp := isControlPlane(&node); {
	case cur.Role == RoleControlPlane && !cp:
		return wait("waiting for kubeadm to mark " + cur.ReplacementNode + " a control-plane node")
	case cur.Role != RoleControlPlane && cp:
		r.fail(st, cur, fmt.Errorf("the replacement %s joined with another role than %s", cur.ReplacementNode, cur.Role))
		return reconcile.Result{}, nil
	}
	// The image is what the replacement's attestation proved (its record), never what it or the provider says.
	var lease coordinationv1.Lease
	var record *coordinationv1.Lease
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: reattestation.RecordNamespace, Name: node.Name}, &lease); err == nil {
		record = &lease
	} else if !apierrors.IsNotFound(err) {
		return reconcile.Result{}, fmt.Errorf("reading the attestation record of node %s: %w", node.Name, err)
	}
	switch digest, why := r.attestedImage(&node, record); digest {
	case st.ImageDigest:
	case "":
		// The record changes with the node's next re-attestation, or goes stale with time: ask again soon.
		res, err := wait("waiting for the attestation of " + cur.ReplacementNode + " to prove its image: " + why)
		if res.RequeueAfter > r.Retry {
			res.RequeueAfter = r.Retry
		}
		return res, err
	default:
		r.fail(st, cur, fmt.Errorf("the replacement %s runs image %s by its attestation, not %s; the old node was not touched, delete the replacement through the provider", cur.ReplacementNode, digest, st.ImageDigest))
		return reconcile.Result{}, nil
	}
	if v := node.Status.NodeInfo.KubeletVersion; st.KubernetesVersion != "" && v != st.KubernetesVersion {
		r.fail(st, cur, fmt.Errorf("the replacement %s runs Kubernetes %s, not %s", cur.ReplacementNode, v, st.KubernetesVersion))
		return reconcile.Result{}, nil
	}
	if cur.Role == RoleControlPlane && st.KubernetesVersion != "" {
		// A replacement of a newer Kubernetes upgrades the cluster's configuration with kubeadm upgrade apply
		// once it joined: until then, the cluster (its addons, the next nodes' join) is not on the new version.
		why, err := r.upgradedTo(ctx, st.KubernetesVersion)
		if err != nil {
			return reconcile.Result{}, err
		}
		if why != "" {
			res, err := wait(fmt.Sprintf("waiting for kubeadm upgrade apply on %s to move the cluster to Kubernetes %s (%s)", cur.ReplacementNode, st.KubernetesVersion, why))
			if res.RequeueAfter > r.Retry {
				res.RequeueAfter = r.Retry
			}
			return res, err
		}
	}
	if nu.Spec.Paused {
		r.setMessage(st, cur, "paused by spec.paused before draining "+cur.OldNode)
		return reconcile.Result{}, nil
	}
	r.setStep(cur, v1alpha1.StepDraining, "cordoning "+cur.OldNode)
	r.setPhase(st, v1alpha1.PhaseRunning, "draining "+cur.OldNode)
	return reconcile.Result{}, nil
}

// draining cordons the old node and evicts its pods, until none is left but DaemonSet and static pods.
func (r *Reconciler) draining(ctx context.Context, nu *v1alpha1.NodeUpgrade, cur *v1alpha1.NodeProgress) (reconcile.Result, error) {
	st := &nu.Status
	var node corev1.Node
	if err := r.Client.Get(ctx, types.NamespacedName{Name: cur.OldNode}, &node); apierrors.IsNotFound(err) {
		r.fail(st, cur, errors.New("the node disappeared while it was drained; its pods may not have moved"))
		return reconcile.Result{}, nil
	} else if err != nil {
		return reconcile.Result{}, fmt.Errorf("reading node %s: %w", cur.OldNode, err)
	}
	if !node.Spec.Unschedulable {
		orig := node.DeepCopy()
		node.Spec.Unschedulable = true
		if err := r.Client.Patch(ctx, &node, client.MergeFrom(orig)); err != nil {
			r.fail(st, cur, fmt.Errorf("cordoning: %w", err))
			return reconcile.Result{}, nil
		}
		r.Log.Info("Cordoned node", "node", cur.OldNode)
	}
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.MatchingFields{podNodeIndex: cur.OldNode}); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing the pods of node %s: %w", cur.OldNode, err)
	}
	var terminating, blocked []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if stays(p) {
			continue
		}
		id := p.Namespace + "/" + p.Name
		if p.DeletionTimestamp != nil {
			terminating = append(terminating, id)
			continue
		}
		ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}}
		err := r.Client.SubResource("eviction").Create(ctx, p, ev)
		switch {
		case err == nil:
			r.Log.Info("Evicted pod", "node", cur.OldNode, "pod", id)
			terminating = append(terminating, id)
		case apierrors.IsNotFound(err):
		case apierrors.IsTooManyRequests(err):
			// A PodDisruptionBudget does not allow it now: ask again later, never delete.
			blocked = append(blocked, id+" ("+string(apierrors.ReasonForError(err))+": "+statusMessage(err)+")")
		default:
			r.fail(st, cur, fmt.Errorf("evicting pod %s: %w", id, err))
			return reconcile.Result{}, nil
		}
	}
	switch {
	case len(blocked) > 0:
		r.setMessage(st, cur, fmt.Sprintf("the eviction of %s is refused for now, asking again every %s", strings.Join(blocked, ", "), r.Retry))
		return reconcile.Result{RequeueAfter: r.Retry}, nil
	case len(terminating) > 0:
		slices.Sort(terminating)
		r.setMessage(st, cur, "waiting for pods to end: "+strings.Join(terminating, ", "))
		return reconcile.Result{}, nil // their deletion triggers the next call
	}
	r.setStep(cur, v1alpha1.StepRemoving, "removing "+cur.OldNode)
	r.setPhase(st, v1alpha1.PhaseRunning, "removing "+cur.OldNode)
	return reconcile.Result{}, nil
}

// removing takes a control-plane node out of etcd, has the provider delete the node, and deletes its Node.
func (r *Reconciler) removing(ctx context.Context, st *v1alpha1.NodeUpgradeStatus, cur *v1alpha1.NodeProgress) (reconcile.Result, error) {
	if cur.Role == RoleControlPlane {
		if err := r.Etcd.RemoveMember(ctx, cur.OldNode, cur.ReplacementNode); errors.Is(err, ErrNotYet) {
			r.setMessage(st, cur, "waiting to remove the etcd member of "+cur.OldNode+": "+err.Error())
			return reconcile.Result{RequeueAfter: r.Retry}, nil
		} else if err != nil {
			r.fail(st, cur, fmt.Errorf("removing its etcd member: %w", err))
			return reconcile.Result{}, nil
		}
		r.Log.Info("Removed etcd member", "node", cur.OldNode)
	}
	if err := r.Fleet.DeleteNode(ctx, cur.OldNode); err != nil {
		r.fail(st, cur, fmt.Errorf("the provider did not delete the node: %w", err))
		return reconcile.Result{}, nil
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cur.OldNode}}
	if err := r.Client.Delete(ctx, node); err != nil && !apierrors.IsNotFound(err) {
		r.fail(st, cur, fmt.Errorf("deleting its Node object: %w", err))
		return reconcile.Result{}, nil
	}
	r.Log.Info("Replaced node", "node", cur.OldNode, "replacement", cur.ReplacementNode)
	r.setStep(cur, v1alpha1.StepDone, "replaced by "+cur.ReplacementNode)
	r.setPhase(st, v1alpha1.PhaseRunning, "replaced "+cur.OldNode)
	return reconcile.Result{}, nil
}

// next picks the node to replace next: a node whose attestation does not prove the wanted image (see
// [Reconciler.attestedImage]) and is neither replaced nor a replacement, control-plane nodes first, by name.
// existing are the names of all nodes.
func (r *Reconciler) next(ctx context.Context, st *v1alpha1.NodeUpgradeStatus) (name, role string, existing map[string]bool, err error) {
	var nodes corev1.NodeList
	if err := r.Client.List(ctx, &nodes); err != nil {
		return "", "", nil, fmt.Errorf("listing nodes: %w", err)
	}
	var leases coordinationv1.LeaseList
	if err := r.Client.List(ctx, &leases, client.InNamespace(reattestation.RecordNamespace)); err != nil {
		return "", "", nil, fmt.Errorf("listing the nodes' attestation records: %w", err)
	}
	records := map[string]*coordinationv1.Lease{}
	for i := range leases.Items {
		records[leases.Items[i].Name] = &leases.Items[i]
	}
	existing = map[string]bool{}
	var cps, workers []string
	for i := range nodes.Items {
		n := &nodes.Items[i]
		existing[n.Name] = true
		if image, _ := r.attestedImage(n, records[n.Name]); image == st.ImageDigest || r.known(st, n.Name, nil) {
			continue
		}
		if isControlPlane(n) {
			cps = append(cps, n.Name)
		} else {
			workers = append(workers, n.Name)
		}
	}
	slices.Sort(cps)
	slices.Sort(workers)
	switch {
	case len(cps) > 0:
		return cps[0], RoleControlPlane, existing, nil
	case len(workers) > 0:
		return workers[0], RoleWorker, existing, nil
	}
	return "", "", existing, nil
}

// attestedImage is the node image the node's attestation record (lease, nil if none) vouches for now: the image
// of the measurement set its evidence last matched, if the record is of this Node object (its UID) and Trusted
// (verified within its validity). Otherwise it is "", and why says why.
func (r *Reconciler) attestedImage(n *corev1.Node, lease *coordinationv1.Lease) (image, why string) {
	if lease == nil {
		return "", "no attestation record yet"
	}
	rec, ok := reattestation.RecordOf(lease, n.Name, n.UID)
	if !ok {
		return "", "its attestation record is of another Node object (" + reattestation.NodeUIDAnnotation + ")"
	}
	now := r.clock()
	if !rec.Trusted(now) {
		if rec.State == string(reattestation.Trusted) {
			return "", fmt.Sprintf("its attestation record is stale (last verified %s)", rec.LastVerified.UTC().Format(time.RFC3339))
		}
		return "", "its attestation record is " + rec.State + ", not trusted"
	}
	if rec.TrustedImage(now) == "" {
		return "", "its evidence matched a measurement set that names no node image"
	}
	return rec.TrustedImage(now), ""
}

// checkEndpoint refuses to replace the control-plane node that serves the cluster's control-plane endpoint
// (the API server address in every kubelet's and kubeadm's configuration, kube-public/cluster-info): once it is
// gone, no node reaches the control plane any more.
func (r *Reconciler) checkEndpoint(ctx context.Context, name string) error {
	var info corev1.ConfigMap
	if err := r.Reader.Get(ctx, types.NamespacedName{Namespace: "kube-public", Name: "cluster-info"}, &info); err != nil {
		return fmt.Errorf("reading the cluster's control-plane endpoint (kube-public/cluster-info): %w", err)
	}
	kc, err := clientcmd.Load([]byte(info.Data["kubeconfig"]))
	if err != nil {
		return fmt.Errorf("the kubeconfig of kube-public/cluster-info: %w", err)
	}
	var node corev1.Node
	if err := r.Client.Get(ctx, types.NamespacedName{Name: name}, &node); err != nil {
		return fmt.Errorf("reading node %s: %w", name, err)
	}
	for _, c := range kc.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil || u.Hostname() == "" {
			return fmt.Errorf("the control-plane endpoint %q of kube-public/cluster-info is not a URL", c.Server)
		}
		for _, a := range node.Status.Addresses {
			if a.Address == u.Hostname() {
				return fmt.Errorf("%s serves the cluster's control-plane endpoint %s, which every node uses; it cannot be replaced before the endpoint moves to an address that outlives it (a load balancer or a virtual IP)", name, c.Server)
			}
		}
	}
	return nil
}

// known reports whether name is an old or a replacement node of this upgrade, other than in skip.
func (r *Reconciler) known(st *v1alpha1.NodeUpgradeStatus, name string, skip *v1alpha1.NodeProgress) bool {
	for i := range st.Nodes {
		p := &st.Nodes[i]
		if p != skip && (p.OldNode == name || p.ReplacementNode == name) {
			return true
		}
	}
	return false
}

// current is the replacement in flight, or nil.
func current(st *v1alpha1.NodeUpgradeStatus) *v1alpha1.NodeProgress {
	if n := len(st.Nodes); n > 0 && st.Nodes[n-1].Step != v1alpha1.StepDone {
		return &st.Nodes[n-1]
	}
	return nil
}

// fail stops the upgrade: the node's step failed with err.
func (r *Reconciler) fail(st *v1alpha1.NodeUpgradeStatus, cur *v1alpha1.NodeProgress, err error) {
	cur.Message = err.Error()
	msg := fmt.Sprintf("node %s, step %s: %v", cur.OldNode, cur.Step, err)
	r.Log.Error("Upgrade failed", "node", cur.OldNode, "step", cur.Step, "error", err)
	r.setPhase(st, v1alpha1.PhaseFailed, msg)
}

// setPhase sets the phase and message, and the conditions that go with them.
func (r *Reconciler) setPhase(st *v1alpha1.NodeUpgradeStatus, phase v1alpha1.Phase, msg string) {
	st.Phase, st.Message = phase, msg
	progressing, degraded := metav1.ConditionFalse, metav1.ConditionFalse
	switch phase {
	case v1alpha1.PhaseRunning, v1alpha1.PhasePending:
		progressing = metav1.ConditionTrue
	case v1alpha1.PhaseFailed:
		degraded = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: "Progressing", Status: progressing, Reason: string(phase), Message: msg, ObservedGeneration: st.ObservedGeneration})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: "Degraded", Status: degraded, Reason: string(phase), Message: msg, ObservedGeneration: st.ObservedGeneration})
}

// setMessage says what the node in flight waits for.
func (r *Reconciler) setMessage(st *v1alpha1.NodeUpgradeStatus, cur *v1alpha1.NodeProgress, msg string) {
	cur.Message = msg
	if st.Phase != v1alpha1.PhaseRunning {
		r.setPhase(st, v1alpha1.PhaseRunning, msg)
	}
}

// setStep moves the node in flight to a step.
func (r *Reconciler) setStep(cur *v1alpha1.NodeProgress, step v1alpha1.Step, msg string) {
	now := metav1.NewTime(r.clock().Truncate(time.Second))
	cur.Step, cur.Message, cur.StepStarted = step, msg, &now
}

func (r *Reconciler) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

func phaseOr(p, def v1alpha1.Phase) v1alpha1.Phase {
	if p == "" || p == v1alpha1.PhaseSucceeded || p == v1alpha1.PhaseAborted {
		return def
	}
	return p
}

// nodeReady reports whether the node is Ready, and if not, why.
func nodeReady(n *corev1.Node) (bool, string) {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue, fmt.Sprintf("Ready=%s %s %s", c.Status, c.Reason, c.Message)
		}
	}
	return false, "no Ready condition yet"
}

func isControlPlane(n *corev1.Node) bool {
	_, ok := n.Labels[controlPlaneLabel]
	return ok
}

// stays reports whether a pod stays on a drained node: DaemonSet pods (their controller would recreate them
// there) and static pods (the node's own; their API objects are mirrors).
func stays(p *corev1.Pod) bool {
	if _, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		return true
	}
	if c := metav1.GetControllerOf(p); c != nil && c.Kind == "DaemonSet" && strings.HasPrefix(c.APIVersion, "apps/") {
		return true
	}
	return false
}

// statusMessage is the API server's message of an error.
func statusMessage(err error) string {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Message
	}
	return err.Error()
}
