package upgrade_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/upgrade"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
)

const (
	oldImage = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	newImage = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func TestMain(m *testing.M) {
	// The controller's libraries log through these; the tests' failures say what matters.
	ctrllog.SetLogger(logr.Discard())
	klog.SetLogger(logr.Discard())
	os.Exit(m.Run())
}

// env is a real API server with the controller's CRD and RBAC installed, a test provider and etcd.
type env struct {
	t     *testing.T
	srv   *kubeapitest.Server
	admin client.Client
	fleet *fleet
	etcd  *etcdMembers
	// joinTimeout, if set, is the controller's.
	joinTimeout time.Duration
	// addrs counts the nodes' addresses given out; the node endpointNode gets the control-plane endpoint's.
	addrs atomic.Int32
	// kubelets are the kubelet versions of nodes (by name) that do not run v1.37.2.
	kubelets     sync.Map
	endpointNode string
	// claim, if set, is the image every node claims on its Node object (default: the new one).
	claim string
}

// endpoint is the cluster's control-plane endpoint, as kubeadm publishes it.
const endpoint = "10.0.0.100"

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := kubeapitest.New(t, "apps")
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := srv.RESTConfig("kubeapitest-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, admin: admin}
	e.fleet = &fleet{env: e, notReady: map[string]bool{}}
	e.etcd = &etcdMembers{fleet: e.fleet}
	// The nodes' attestation records' namespace, which the join service's manifests create before these.
	e.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: reattestation.RecordNamespace}})
	// The controller's manifests, its Deployment included (no pods run here).
	list, err := deploy.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	var l struct{ Items []map[string]any }
	if err := json.Unmarshal(list, &l); err != nil {
		t.Fatal(err)
	}
	for _, item := range l.Items {
		if err := admin.Create(t.Context(), &unstructured.Unstructured{Object: item}); err != nil {
			t.Fatalf("creating the %s of the controller's manifests: %v", item["kind"], err)
		}
	}
	e.waitCRD()
	// The control-plane endpoint kubeadm publishes, as a load balancer's address.
	e.create(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cluster-info", Namespace: "kube-public"}, Data: map[string]string{"kubeconfig": `apiVersion: v1
kind: Config
clusters:
- name: ""
  cluster:
    certificate-authority-data: ""
    server: https://` + endpoint + `:6443
`}})
	// kubeadm's cluster configuration, at the version of the nodes' kubelets.
	e.create(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kubeadm-config", Namespace: "kube-system"}})
	e.setClusterVersion("v1.37.2")
	// Pods need their namespace's default service account (no controller here makes it).
	e.create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "apps"}})
	return e
}

// kubeletVersion is the version the node's kubelet reports.
func (e *env) kubeletVersion(name string) string {
	if v, ok := e.kubelets.Load(name); ok {
		return v.(string)
	}
	return "v1.37.2"
}

// setClusterVersion sets the Kubernetes version of kubeadm's cluster configuration and of its kube-proxy
// addon, as kubeadm init or kubeadm upgrade apply writes them.
func (e *env) setClusterVersion(v string) {
	e.t.Helper()
	e.setClusterConfigVersion(v)
	var ds appsv1.DaemonSet
	err := e.admin.Get(e.t.Context(), types.NamespacedName{Namespace: "kube-system", Name: "kube-proxy"}, &ds)
	if apierrors.IsNotFound(err) {
		labels := map[string]string{"k8s-app": "kube-proxy"}
		ds = appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: "kube-system"},
			Spec: appsv1.DaemonSetSpec{
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "kube-proxy", Image: "registry.k8s.io/kube-proxy:" + v}}}},
			},
		}
		if err := e.admin.Create(e.t.Context(), &ds); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if err != nil {
		e.t.Fatal(err)
	}
	ds.Spec.Template.Spec.Containers[0].Image = "registry.k8s.io/kube-proxy:" + v
	if err := e.admin.Update(e.t.Context(), &ds); err != nil {
		e.t.Fatal(err)
	}
}

// setClusterConfigVersion sets the Kubernetes version of kubeadm's cluster configuration only, as kubeadm
// upgrade apply writes it before its addons.
func (e *env) setClusterConfigVersion(v string) {
	e.t.Helper()
	var cm corev1.ConfigMap
	if err := e.admin.Get(e.t.Context(), types.NamespacedName{Namespace: "kube-system", Name: "kubeadm-config"}, &cm); err != nil {
		e.t.Fatal(err)
	}
	cm.Data = map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: " + v + "\n"}
	if err := e.admin.Update(e.t.Context(), &cm); err != nil {
		e.t.Fatal(err)
	}
}

// waitCRD waits until the API server serves NodeUpgrades.
func (e *env) waitCRD() {
	for {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := e.admin.Get(e.t.Context(), types.NamespacedName{Name: "nodeupgrades.upgrade.constellation.dev"}, &crd); err != nil {
			e.t.Fatal(err)
		}
		for _, c := range crd.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				var list v1alpha1.NodeUpgradeList
				if err := e.admin.List(e.t.Context(), &list); err == nil {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) create(obj client.Object) {
	e.t.Helper()
	if err := e.admin.Create(e.t.Context(), obj); err != nil {
		e.t.Fatalf("creating %s: %v", obj.GetName(), err)
	}
}

// run starts the controller as its service account, with the permissions of its manifests, until stop.
func (e *env) run() (stop func()) {
	e.t.Helper()
	cfg, err := e.srv.RESTConfig("system:serviceaccount:kube-system:"+deploy.Name, "system:serviceaccounts", "system:serviceaccounts:kube-system")
	if err != nil {
		e.t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mgr, err := upgrade.NewManager(cfg, upgrade.Options{
		Fleet: e.fleet, Etcd: e.etcd, Log: log,
		LeaderElection: true, LeaseNamespace: "kube-system",
		Retry: 100 * time.Millisecond, JoinTimeout: e.joinTimeout,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("the controller stopped: %v", err)
		}
	}
	e.t.Cleanup(stop)
	return stop
}

// node registers a Node as a joined kubelet would, Ready unless the fleet holds it back.
func (e *env) node(name, role, image string, ready bool) {
	e.t.Helper()
	if err := e.register(name, role, image, ready); err != nil {
		e.t.Fatal(err)
	}
}

// What a node's kubelet may write on its own Node object to claim an image: every node of the tests claims
// the new one, which must not count for anything.
const (
	claimAnnotation = "constellation.dev/image-digest"
	claimLabel      = "constellation.dev/image"
)

// How the fleet's new nodes' attestation records are (see env.record).
const (
	recordTrusted  = ""          // Trusted, verified just now, with the image the node booted
	recordNone     = "none"      // no record yet
	recordOtherUID = "other-uid" // a Trusted record of an earlier Node object of the same name
	recordStale    = "stale"     // Trusted, but last verified longer ago than it is valid
	recordPending  = "pending"   // not attested yet
)

// register is node, for the fleet (which runs on the controller's goroutines): the Node object as the node's
// kubelet registers it (claiming the new image on it), and the record the re-attestation controller keeps of
// it (see record), with the image the node booted.
func (e *env) register(name, role, image string, ready bool) error {
	return e.registerWith(name, role, image, ready, recordTrusted)
}

func (e *env) registerWith(name, role, image string, ready bool, record string) error {
	claim := newImage
	if e.claim != "" {
		claim = e.claim
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        name,
		Labels:      map[string]string{"kubernetes.io/hostname": name, claimLabel: strings.TrimPrefix(claim, "sha256:")[:63]},
		Annotations: map[string]string{claimAnnotation: claim},
	}}
	if role == upgrade.RoleControlPlane {
		n.Labels["node-role.kubernetes.io/control-plane"] = ""
	}
	if msg := e.fleet.kubeadmError; msg != "" && role == upgrade.RoleControlPlane {
		n.Annotations[v1alpha1.KubeadmErrorAnnotation] = msg
	}
	if err := e.admin.Create(context.Background(), n); err != nil {
		return fmt.Errorf("registering node %s: %w", name, err)
	}
	if err := e.record(n, image, record); err != nil {
		return err
	}
	return e.setNodeReady(name, ready, "KubeletReady")
}

// record writes the attestation record of node n, as the re-attestation controller (the join service's service
// account) writes it after the node's evidence matched the measurement set of image; how says which record.
func (e *env) record(n *corev1.Node, image, how string) error {
	if how == recordNone {
		return nil
	}
	uid, state, verified := string(n.UID), string(reattestation.Trusted), time.Now()
	switch how {
	case recordOtherUID:
		uid = "an-earlier-node-of-this-name"
	case recordStale:
		verified = verified.Add(-2 * time.Hour)
	case recordPending:
		state, image = string(reattestation.Pending), ""
	}
	validity := int32(3600)
	ann := map[string]string{reattestation.StateAnnotation: state, reattestation.NodeUIDAnnotation: uid}
	if image != "" {
		ann[reattestation.AttestedImageAnnotation] = image
	}
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Namespace: reattestation.RecordNamespace, Annotations: ann},
		Spec:       coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: verified}, LeaseDurationSeconds: &validity},
	}
	if err := e.admin.Create(context.Background(), lease); err != nil {
		return fmt.Errorf("writing the attestation record of node %s: %w", n.Name, err)
	}
	return nil
}

// setReady sets the node's Ready condition, as its kubelet would.
func (e *env) setReady(name string, ready bool, reason string) {
	e.t.Helper()
	if err := e.setNodeReady(name, ready, reason); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) setNodeReady(name string, ready bool, reason string) error {
	var n corev1.Node
	if err := e.admin.Get(context.Background(), types.NamespacedName{Name: name}, &n); err != nil {
		return err
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status, Reason: reason, Message: reason, LastHeartbeatTime: metav1.Now()}}
	if n.Status.NodeInfo.KubeletVersion == "" {
		n.Status.NodeInfo.KubeletVersion = e.kubeletVersion(name)
	}
	if len(n.Status.Addresses) == 0 {
		addr := fmt.Sprintf("10.0.1.%d", e.addrs.Add(1))
		if name == e.endpointNode {
			addr = endpoint
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}
	}
	return e.admin.Status().Update(context.Background(), &n)
}

// pod runs a pod on the node (Running and Ready, as its kubelet would report it); it ends at once when evicted.
func (e *env) pod(name, node string, labels map[string]string, owner *metav1.OwnerReference) {
	e.t.Helper()
	e.podGrace(name, node, labels, owner, 0)
}

// podGrace is pod with a termination grace period: evicted, it is terminating until the test ends it as its
// kubelet would.
func (e *env) podGrace(name, node string, labels map[string]string, owner *metav1.OwnerReference, grace int64) {
	e.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To(grace),
			Containers:                    []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	e.create(p)
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := e.admin.Status().Update(e.t.Context(), p); err != nil {
		e.t.Fatal(err)
	}
}

// pods are the names of the pods left in the apps namespace.
func (e *env) pods() []string {
	e.t.Helper()
	var list corev1.PodList
	if err := e.admin.List(context.Background(), &list, client.InNamespace("apps")); err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, p := range list.Items {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	return names
}

// nodes are the names of the Node objects.
func (e *env) nodes() []string {
	e.t.Helper()
	var list corev1.NodeList
	if err := e.admin.List(context.Background(), &list); err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	return names
}

func (e *env) unschedulable(name string) bool {
	e.t.Helper()
	var n corev1.Node
	if err := e.admin.Get(context.Background(), types.NamespacedName{Name: name}, &n); err != nil {
		e.t.Fatal(err)
	}
	return n.Spec.Unschedulable
}

// upgrade asks for the new image.
func (e *env) upgrade() {
	e.create(&v1alpha1.NodeUpgrade{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name}, Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: newImage, KubernetesVersion: "v1.37.2"}})
}

// editSpec changes the NodeUpgrade's spec as an operator would.
func (e *env) editSpec(edit func(*v1alpha1.NodeUpgradeSpec)) {
	e.t.Helper()
	var nu v1alpha1.NodeUpgrade
	if err := e.admin.Get(context.Background(), types.NamespacedName{Name: v1alpha1.Name}, &nu); err != nil {
		e.t.Fatal(err)
	}
	orig := nu.DeepCopy()
	edit(&nu.Spec)
	if err := e.admin.Patch(context.Background(), &nu, client.MergeFrom(orig)); err != nil {
		e.t.Fatal(err)
	}
}

// wait waits until the NodeUpgrade's status satisfies cond (the test's timeout bounds it). A status that
// reached a final phase cond does not accept fails the test at once.
func (e *env) wait(what string, cond func(*v1alpha1.NodeUpgradeStatus) bool) v1alpha1.NodeUpgradeStatus {
	e.t.Helper()
	for {
		var nu v1alpha1.NodeUpgrade
		err := e.admin.Get(context.Background(), types.NamespacedName{Name: v1alpha1.Name}, &nu)
		if err != nil && !apierrors.IsNotFound(err) {
			e.t.Fatal(err)
		}
		if err == nil {
			if cond(&nu.Status) {
				return nu.Status
			}
			if p := nu.Status.Phase; (p == v1alpha1.PhaseFailed || p == v1alpha1.PhaseSucceeded || p == v1alpha1.PhaseAborted) && nu.Status.ObservedGeneration == nu.Generation {
				e.t.Fatalf("waiting for %s, the upgrade ended: %s", what, describe(nu.Status))
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describe(st v1alpha1.NodeUpgradeStatus) string {
	b, _ := json.MarshalIndent(st, "", "  ")
	return string(b)
}

func phase(p v1alpha1.Phase) func(*v1alpha1.NodeUpgradeStatus) bool {
	return func(st *v1alpha1.NodeUpgradeStatus) bool { return st.Phase == p }
}

// inFlight is a condition on the node being replaced.
func inFlight(old string, step v1alpha1.Step, msg string) func(*v1alpha1.NodeUpgradeStatus) bool {
	return func(st *v1alpha1.NodeUpgradeStatus) bool {
		n := len(st.Nodes)
		return n > 0 && st.Nodes[n-1].OldNode == old && st.Nodes[n-1].Step == step && strings.Contains(st.Nodes[n-1].Message, msg)
	}
}

// fleet is the test's provider: it registers a created node's Node object as the node's kubelet would once
// joined, and records what it was asked.
type fleet struct {
	env *env
	mu  sync.Mutex
	// calls are "create <role>" and "delete <name>", in order.
	calls     []string
	n         int
	createErr error
	notReady  map[string]bool // names of nodes to create that stay NotReady
	// kubeadmError, if set, is what the control-plane nodes it creates report of kubeadm on their Node objects.
	kubeadmError string
	// existing, if set, is the name of a node that is there already, which the provider answers instead of
	// creating one; bootImage, if set, is the image it boots instead of the one asked for.
	existing, bootImage string
	// record is how the records of the nodes it creates are (recordTrusted, recordNone, ...).
	record string
	// images are the images it was asked for, in order.
	images []string
	// unmarked registers control-plane nodes without their role label, as before kubeadm marks them.
	unmarked bool
}

func (f *fleet) CreateNode(_ context.Context, role, image string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "create "+role)
	if f.createErr != nil {
		return "", f.createErr
	}
	if image != newImage && image != oldImage {
		return "", fmt.Errorf("asked for image %s", image)
	}
	f.images = append(f.images, image)
	if f.existing != "" {
		return f.existing, nil
	}
	if f.bootImage != "" {
		image = f.bootImage
	}
	f.n++
	name := fmt.Sprintf("%s-new-%d", role, f.n)
	if f.unmarked {
		role = "not yet marked"
	}
	return name, f.env.registerWith(name, role, image, !f.notReady[name], f.record)
}

func (f *fleet) DeleteNode(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+name)
	return nil
}

func (f *fleet) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// etcdMembers records member removals into the fleet's calls, to check their order.
type etcdMembers struct {
	fleet *fleet
	// notYet, while set, is why etcd cannot lose a member yet.
	notYet string
}

func (m *etcdMembers) RemoveMember(_ context.Context, name, replacement string) error {
	m.fleet.mu.Lock()
	defer m.fleet.mu.Unlock()
	if m.notYet != "" {
		return fmt.Errorf("%w: %s", upgrade.ErrNotYet, m.notYet)
	}
	m.fleet.calls = append(m.fleet.calls, "etcd remove "+name+" for "+replacement)
	return nil
}

func (m *etcdMembers) setNotYet(why string) {
	m.fleet.mu.Lock()
	defer m.fleet.mu.Unlock()
	m.notYet = why
}

// cluster is one control-plane node and two workers on the old image.
func (e *env) cluster() {
	e.node("cp-0", upgrade.RoleControlPlane, oldImage, true)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.node("worker-1", upgrade.RoleWorker, oldImage, true)
}

// TestUpgradeReplacesControlPlaneFirst replaces a control-plane node and two workers, in that order, one at a
// time, and drains the workers as a PodDisruptionBudget allows: while it allows no disruption, the pods stay.
func TestUpgradeReplacesControlPlaneFirst(t *testing.T) {
	e := newEnv(t)
	e.cluster()
	app := map[string]string{"app": "web"}
	e.pod("web-0", "worker-0", app, nil)
	e.pod("web-1", "worker-0", app, nil)
	e.podGrace("slow-0", "worker-1", nil, nil, 30)
	e.pod("agent-0", "worker-0", nil, &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "agent", UID: "0b6e5f4c-0000-4000-8000-000000000001", Controller: ptr.To(true)})
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(2)), Selector: &metav1.LabelSelector{MatchLabels: app}},
	}
	e.create(pdb)
	// The disruption controller's view: both pods are needed.
	setPDB := func(allowed int32) {
		if err := e.admin.Get(t.Context(), client.ObjectKeyFromObject(pdb), pdb); err != nil {
			t.Fatal(err)
		}
		pdb.Status = policyv1.PodDisruptionBudgetStatus{ObservedGeneration: pdb.Generation, DisruptionsAllowed: allowed, CurrentHealthy: 2, DesiredHealthy: 2 - allowed, ExpectedPods: 2}
		if err := e.admin.Status().Update(t.Context(), pdb); err != nil {
			t.Fatal(err)
		}
	}
	setPDB(0)

	e.run()
	e.upgrade()
	e.wait("the budget to hold the drain of worker-0", inFlight("worker-0", v1alpha1.StepDraining, "refused"))
	if !e.unschedulable("worker-0") {
		t.Error("worker-0 is drained but not cordoned")
	}
	if got := e.pods(); !slices.Equal(got, []string{"agent-0", "slow-0", "web-0", "web-1"}) {
		t.Fatalf("pods while the budget allows no disruption: %v, want all", got)
	}
	// The application has a spare replica elsewhere now: the budget allows the disruption.
	setPDB(2)
	// worker-1's pod takes its time to end: the node stays until it has.
	e.wait("slow-0 to end", inFlight("worker-1", v1alpha1.StepDraining, "waiting for pods to end: apps/slow-0"))
	if !slices.Contains(e.nodes(), "worker-1") || slices.Contains(e.fleet.Calls(), "delete worker-1") {
		t.Fatal("worker-1 was deleted while its pod was terminating")
	}
	if err := e.admin.Delete(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "slow-0", Namespace: "apps"}}, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	st := e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))

	want := []string{
		"create control-plane", "etcd remove cp-0 for control-plane-new-1", "delete cp-0",
		"create worker", "delete worker-0",
		"create worker", "delete worker-1",
	}
	if got := e.fleet.Calls(); !slices.Equal(got, want) {
		t.Errorf("provider and etcd calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got, want := e.nodes(), []string{"control-plane-new-1", "worker-new-2", "worker-new-3"}; !slices.Equal(got, want) {
		t.Errorf("nodes after the upgrade: %v, want %v", got, want)
	}
	// The DaemonSet's pod is left to its controller; the others were evicted.
	if got := e.pods(); !slices.Equal(got, []string{"agent-0"}) {
		t.Errorf("pods after the upgrade: %v, want only the DaemonSet's", got)
	}
	var steps []string
	for _, n := range st.Nodes {
		steps = append(steps, n.OldNode+">"+n.ReplacementNode+":"+string(n.Step))
	}
	if want := []string{"cp-0>control-plane-new-1:done", "worker-0>worker-new-2:done", "worker-1>worker-new-3:done"}; !slices.Equal(steps, want) {
		t.Errorf("status nodes %v, want %v", steps, want)
	}
}

// TestUpgradeCreateFails stops the upgrade when the provider does not create a replacement: nothing is
// cordoned or deleted, and the status names the node and the step.
func TestUpgradeCreateFails(t *testing.T) {
	e := newEnv(t)
	e.cluster()
	e.fleet.createErr = errors.New("quota exceeded")
	e.run()
	e.upgrade()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "cp-0") || !strings.Contains(st.Message, "creating") || !strings.Contains(st.Message, "quota exceeded") {
		t.Errorf("message %q does not name the node, the step and the provider's error", st.Message)
	}
	if got := e.fleet.Calls(); !slices.Equal(got, []string{"create control-plane"}) {
		t.Errorf("provider calls %v, want one create", got)
	}
	if got := e.nodes(); !slices.Equal(got, []string{"cp-0", "worker-0", "worker-1"}) {
		t.Errorf("nodes %v, want all three old ones", got)
	}
	for _, n := range []string{"cp-0", "worker-0", "worker-1"} {
		if e.unschedulable(n) {
			t.Errorf("%s was cordoned", n)
		}
	}
}

// TestUpgradeWaitsForReadyReplacement never drains a node whose replacement does not become Ready: each
// change of the replacement's state is seen (the status reports it), and the old node stays untouched.
func TestUpgradeWaitsForReadyReplacement(t *testing.T) {
	e := newEnv(t)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.pod("web-0", "worker-0", nil, nil)
	e.fleet.notReady["worker-new-1"] = true
	e.run()
	e.upgrade()
	e.wait("worker-0's replacement", inFlight("worker-0", v1alpha1.StepJoining, "Ready=False"))
	for i := range 5 {
		reason := fmt.Sprintf("NetworkNotReady-%d", i)
		e.setReady("worker-new-1", false, reason)
		e.wait("the controller to see "+reason, inFlight("worker-0", v1alpha1.StepJoining, reason))
		if e.unschedulable("worker-0") {
			t.Fatal("worker-0 was cordoned while its replacement is not Ready")
		}
		if got := e.pods(); !slices.Equal(got, []string{"web-0"}) {
			t.Fatalf("pods %v while the replacement is not Ready, want web-0", got)
		}
		if got := e.fleet.Calls(); !slices.Equal(got, []string{"create worker"}) {
			t.Fatalf("provider calls %v, want one create", got)
		}
	}
	// Once it is Ready, the upgrade goes on.
	e.setReady("worker-new-1", true, "KubeletReady")
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
}

// TestUpgradeJoinTimeout fails the upgrade when a replacement does not join in time, and leaves the old node
// alone. (The timeout is a nanosecond: any replacement is late, whatever the machine's speed.)
func TestUpgradeJoinTimeout(t *testing.T) {
	e := newEnv(t)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.pod("web-0", "worker-0", nil, nil)
	e.fleet.notReady["worker-new-1"] = true
	e.joinTimeout = time.Nanosecond
	e.run()
	e.upgrade()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "worker-0") || !strings.Contains(st.Message, "joining") || !strings.Contains(st.Message, "did not join") {
		t.Errorf("message %q does not name the node, the step and the timeout", st.Message)
	}
	e.refusedUntouched("worker-0", "web-0")
}

// TestUpgradeKeepsControlPlaneEndpoint refuses to replace the control-plane node whose address is the
// cluster's control-plane endpoint: every kubelet talks to it, and would not reach the control plane once it is
// gone. Nothing is created or changed.
func TestUpgradeKeepsControlPlaneEndpoint(t *testing.T) {
	e := newEnv(t)
	e.endpointNode = "cp-0"
	e.cluster()
	e.run()
	e.upgrade()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "cp-0") || !strings.Contains(st.Message, endpoint) {
		t.Errorf("message %q does not name the node and the endpoint", st.Message)
	}
	if got := e.fleet.Calls(); len(got) != 0 {
		t.Errorf("provider calls %v, want none", got)
	}
	if e.unschedulable("cp-0") {
		t.Error("cp-0 was cordoned")
	}
}

// TestUpgradePause holds the upgrade before it starts a node and before it drains one, until it is resumed.
func TestUpgradePause(t *testing.T) {
	e := newEnv(t)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.node("worker-1", upgrade.RoleWorker, oldImage, true)
	e.create(&v1alpha1.NodeUpgrade{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name}, Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: newImage, Paused: true}})
	e.fleet.notReady["worker-new-1"] = true
	e.run()
	e.wait("the pause", func(st *v1alpha1.NodeUpgradeStatus) bool { return strings.Contains(st.Message, "paused") })
	if got := e.fleet.Calls(); len(got) != 0 {
		t.Fatalf("provider calls %v while paused", got)
	}
	e.editSpec(func(s *v1alpha1.NodeUpgradeSpec) { s.Paused = false })
	e.wait("worker-0's replacement", inFlight("worker-0", v1alpha1.StepJoining, "Ready=False"))
	e.editSpec(func(s *v1alpha1.NodeUpgradeSpec) { s.Paused = true })
	e.setReady("worker-new-1", true, "KubeletReady")
	e.wait("the pause before the drain", inFlight("worker-0", v1alpha1.StepJoining, "paused"))
	if e.unschedulable("worker-0") {
		t.Fatal("worker-0 was cordoned while paused")
	}
	e.editSpec(func(s *v1alpha1.NodeUpgradeSpec) { s.Paused = false })
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
	if got, want := e.nodes(), []string{"worker-new-1", "worker-new-2"}; !slices.Equal(got, want) {
		t.Errorf("nodes %v, want %v", got, want)
	}
}

// TestUpgradeWaitsForEtcd keeps a control-plane node, drained, until etcd can do without its member.
func TestUpgradeWaitsForEtcd(t *testing.T) {
	e := newEnv(t)
	e.node("cp-0", upgrade.RoleControlPlane, oldImage, true)
	e.etcd.setNotYet("the replacement's member is a learner")
	e.run()
	e.upgrade()
	e.wait("etcd", inFlight("cp-0", v1alpha1.StepRemoving, "learner"))
	if !slices.Contains(e.nodes(), "cp-0") || slices.Contains(e.fleet.Calls(), "delete cp-0") {
		t.Fatal("cp-0 was deleted while etcd needed its member")
	}
	e.etcd.setNotYet("")
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
	if got, want := e.fleet.Calls(), []string{"create control-plane", "etcd remove cp-0 for control-plane-new-1", "delete cp-0"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
}

// TestUpgradeRefusesOtherKubernetesVersion stops when the replacement's kubelet is not the version asked for.
func TestUpgradeRefusesOtherKubernetesVersion(t *testing.T) {
	e := newEnv(t)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.pod("web-0", "worker-0", nil, nil)
	e.setClusterVersion("v1.38.0") // so that the worker may be replaced
	e.create(&v1alpha1.NodeUpgrade{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name}, Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: newImage, KubernetesVersion: "v1.38.0"}})
	e.run()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "v1.37.2") || !strings.Contains(st.Message, "v1.38.0") {
		t.Errorf("message %q does not name both versions", st.Message)
	}
	e.refusedUntouched("worker-0", "web-0")
}

// TestUpgradeAbort stops after the node being replaced when spec.abort is set.
func TestUpgradeAbort(t *testing.T) {
	e := newEnv(t)
	e.cluster()
	e.fleet.notReady["worker-new-2"] = true
	e.run()
	e.upgrade()
	e.wait("worker-0's replacement", inFlight("worker-0", v1alpha1.StepJoining, "Ready"))
	e.editSpec(func(s *v1alpha1.NodeUpgradeSpec) { s.Abort = true })
	e.setReady("worker-new-2", true, "KubeletReady")
	st := e.wait("the upgrade to abort", phase(v1alpha1.PhaseAborted))
	if len(st.Nodes) != 2 || st.Nodes[1].OldNode != "worker-0" || st.Nodes[1].Step != v1alpha1.StepDone {
		t.Errorf("status after abort: %s, want cp-0 and worker-0 replaced", describe(st))
	}
	if got := e.nodes(); !slices.Equal(got, []string{"control-plane-new-1", "worker-1", "worker-new-2"}) {
		t.Errorf("nodes after abort %v, want worker-1 untouched", got)
	}
	if e.unschedulable("worker-1") {
		t.Error("worker-1 was cordoned after the abort")
	}
}

// TestUpgradeRollsBack turns an upgrade half-way back toward the old image (spec.imageDigest), as 'upgrade
// abort' does: the controller finishes the node in flight, then replaces every node the upgrade moved to the new
// image by one of the old, control plane first, and leaves the node it never replaced.
//
// The attack: every node claims the old image wherever its kubelet can write (an annotation and a label on
// its Node object), the nodes of the new image too. Their attestation records prove the new image: they are
// replaced all the same, and the rollback ends only once no node of the new image is left.
func TestUpgradeRollsBack(t *testing.T) {
	e := newEnv(t)
	e.claim = oldImage
	e.cluster()
	e.fleet.notReady["worker-new-2"] = true
	e.run()
	e.upgrade()
	e.wait("worker-0's replacement", inFlight("worker-0", v1alpha1.StepJoining, "Ready"))
	e.editSpec(func(s *v1alpha1.NodeUpgradeSpec) { s.ImageDigest = oldImage })
	e.setReady("worker-new-2", true, "KubeletReady")
	st := e.wait("the rollback to succeed", func(st *v1alpha1.NodeUpgradeStatus) bool {
		return st.ImageDigest == oldImage && st.Phase == v1alpha1.PhaseSucceeded
	})
	want := []string{
		"create control-plane", "etcd remove cp-0 for control-plane-new-1", "delete cp-0",
		"create worker", "delete worker-0",
		// The rollback: the node in flight was finished; then the nodes of the new image go, the control plane first.
		"create control-plane", "etcd remove control-plane-new-1 for control-plane-new-3", "delete control-plane-new-1",
		"create worker", "delete worker-new-2",
	}
	if got := e.fleet.Calls(); !slices.Equal(got, want) {
		t.Errorf("provider and etcd calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got, want := e.fleet.images, []string{newImage, newImage, oldImage, oldImage}; !slices.Equal(got, want) {
		t.Errorf("images asked of the provider %v, want %v", got, want)
	}
	if got, want := e.nodes(), []string{"control-plane-new-3", "worker-1", "worker-new-4"}; !slices.Equal(got, want) {
		t.Errorf("nodes after the rollback: %v, want %v", got, want)
	}
	if e.unschedulable("worker-1") {
		t.Error("worker-1, which ran the old image throughout, was cordoned")
	}
	var steps []string
	for _, n := range st.Nodes {
		steps = append(steps, n.OldNode+">"+n.ReplacementNode+":"+string(n.Step))
	}
	if want := []string{"control-plane-new-1>control-plane-new-3:done", "worker-new-2>worker-new-4:done"}; !slices.Equal(steps, want) {
		t.Errorf("status nodes %v, want %v", steps, want)
	}
}

// TestUpgradeStopsAfterInterruptedCreate is a controller that stopped after it marked a replacement as being
// created, and before it learned the new node's name: the next one cannot know whether the provider created a
// node, so it stops the upgrade rather than create a second extra node.
func TestUpgradeStopsAfterInterruptedCreate(t *testing.T) {
	e := newEnv(t)
	e.cluster()
	e.upgrade()
	var nu v1alpha1.NodeUpgrade
	if err := e.admin.Get(t.Context(), types.NamespacedName{Name: v1alpha1.Name}, &nu); err != nil {
		t.Fatal(err)
	}
	nu.Status = v1alpha1.NodeUpgradeStatus{
		ObservedGeneration: nu.Generation, Phase: v1alpha1.PhaseRunning, ImageDigest: newImage, KubernetesVersion: "v1.37.2",
		Nodes: []v1alpha1.NodeProgress{{OldNode: "cp-0", Role: upgrade.RoleControlPlane, Step: v1alpha1.StepCreating}},
	}
	if err := e.admin.Status().Update(t.Context(), &nu); err != nil {
		t.Fatal(err)
	}
	e.run()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "cp-0") || !strings.Contains(st.Message, "creating") {
		t.Errorf("message %q does not name the node and the step", st.Message)
	}
	if got := e.fleet.Calls(); len(got) != 0 {
		t.Errorf("provider calls %v, want none", got)
	}
}

// TestUpgradeResumesAfterRestart stops the controller half-way and starts a new one: it resumes from the
// status, creating no second replacement for the node in flight.
func TestUpgradeResumesAfterRestart(t *testing.T) {
	e := newEnv(t)
	e.cluster()
	e.fleet.notReady["worker-new-2"] = true
	stop := e.run()
	e.upgrade()
	e.wait("worker-0's replacement", inFlight("worker-0", v1alpha1.StepJoining, "Ready"))
	stop()
	e.setReady("worker-new-2", true, "KubeletReady")
	e.run()
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
	want := []string{
		"create control-plane", "etcd remove cp-0 for control-plane-new-1", "delete cp-0",
		"create worker", "delete worker-0",
		"create worker", "delete worker-1",
	}
	if got := e.fleet.Calls(); !slices.Equal(got, want) {
		t.Errorf("provider calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestNodeUpgradeAPI checks that the API server takes the CRD's schema: a NodeUpgrade round-trips with its
// status, a bad digest and a second NodeUpgrade are refused.
func TestNodeUpgradeAPI(t *testing.T) {
	e := newEnv(t)
	e.upgrade()
	var nu v1alpha1.NodeUpgrade
	if err := e.admin.Get(t.Context(), types.NamespacedName{Name: v1alpha1.Name}, &nu); err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	nu.Status = v1alpha1.NodeUpgradeStatus{
		Phase: v1alpha1.PhaseRunning, Message: "replacing cp-0", ImageDigest: newImage, ObservedGeneration: 1,
		Nodes: []v1alpha1.NodeProgress{{OldNode: "cp-0", Role: upgrade.RoleControlPlane, ReplacementNode: "cp-1", Step: v1alpha1.StepJoining, StepStarted: &now}},
	}
	want := nu.Status
	if err := e.admin.Status().Update(t.Context(), &nu); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.NodeUpgrade
	if err := e.admin.Get(t.Context(), types.NamespacedName{Name: v1alpha1.Name}, &got); err != nil {
		t.Fatal(err)
	}
	if describe(got.Status) != describe(want) || got.Spec.ImageDigest != newImage || got.Spec.KubernetesVersion != "v1.37.2" {
		t.Errorf("round trip: %s\nwant %s", describe(got.Status), describe(want))
	}
	for name, nu := range map[string]*v1alpha1.NodeUpgrade{
		"a second NodeUpgrade": {ObjectMeta: metav1.ObjectMeta{Name: "other"}, Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: newImage}},
	} {
		if err := e.admin.Create(t.Context(), nu); !apierrors.IsInvalid(err) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	bad := got.DeepCopy()
	bad.Spec.ImageDigest = "sha256:abc"
	if err := e.admin.Update(t.Context(), bad); !apierrors.IsInvalid(err) {
		t.Errorf("a short digest: %v, want invalid", err)
	}
	bad = got.DeepCopy()
	bad.Status.Nodes[0].Step = "patching"
	if err := e.admin.Status().Update(t.Context(), bad); !apierrors.IsInvalid(err) {
		t.Errorf("an unknown step: %v, want invalid", err)
	}

	// The controller's service account may evict pods and change the status, not delete pods or change
	// the spec.
	cfg, err := e.srv.RESTConfig("system:serviceaccount:kube-system:"+deploy.Name, "system:serviceaccounts", "system:serviceaccounts:kube-system")
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := client.New(cfg, client.Options{Scheme: e.admin.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.pod("web-0", "worker-0", nil, nil)
	if err := ctl.Delete(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "apps"}}); !apierrors.IsForbidden(err) {
		t.Errorf("the controller deleting a pod: %v, want forbidden", err)
	}
	spec := got.DeepCopy()
	spec.Spec.Abort = true
	if err := ctl.Update(t.Context(), spec); !apierrors.IsForbidden(err) {
		t.Errorf("the controller changing the spec: %v, want forbidden", err)
	}
	if err := ctl.Get(t.Context(), types.NamespacedName{Name: "kube-system", Namespace: "default"}, &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Errorf("the controller reading a Secret: %v, want forbidden", err)
	}
}

// TestUpgradeRefusesExistingNodeAsReplacement is the host's provider answering a request for a new node with
// the name of a node that is there already (Ready, on the new image): the controller must not drain and delete
// the old node for it, which would shrink the cluster by one node. Nor does it take a name no node can have.
func TestUpgradeRefusesExistingNodeAsReplacement(t *testing.T) {
	for _, answer := range []string{"worker-1", "worker-1/../x"} {
		t.Run(answer, func(t *testing.T) {
			e := newEnv(t)
			e.node("worker-0", upgrade.RoleWorker, oldImage, true)
			e.node("worker-1", upgrade.RoleWorker, newImage, true)
			e.pod("web-0", "worker-0", nil, nil)
			e.fleet.existing = answer
			e.run()
			e.upgrade()
			st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
			if !strings.Contains(st.Message, "worker-0") || !strings.Contains(st.Message, `"`+answer+`"`) {
				t.Errorf("message %q does not name the node and the provider's answer", st.Message)
			}
			e.refusedUntouched("worker-0", "web-0")
		})
	}
}

// TestUpgradeRefusesReplacementOnOtherImage is the host's provider booting the replacement from another image
// than the one asked for (the old one, which the join service still admits during the upgrade), and the
// replacement claiming the new image wherever its kubelet can write (an annotation and a label on its Node
// object, as every node of these tests does): its attestation record proves the old image, and the old node is
// not drained for it.
func TestUpgradeRefusesReplacementOnOtherImage(t *testing.T) {
	e := newEnv(t)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.pod("web-0", "worker-0", nil, nil)
	e.fleet.bootImage = oldImage
	e.run()
	e.upgrade()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "worker-0") || !strings.Contains(st.Message, oldImage) || !strings.Contains(st.Message, "attestation") {
		t.Errorf("message %q does not name the node, the image and where it comes from", st.Message)
	}
	e.refusedUntouched("worker-0", "web-0")
}

// TestUpgradeWaitsForAttestedImage is the replacement of the old image (or of any image) claiming the new one
// on its Node object while its attestation record proves nothing the controller may take: no record yet, the
// record of an earlier Node object of its name, a Trusted record gone stale, a record not Trusted. The
// controller waits for a record that proves the new image (and fails at the join timeout); the old node is not
// drained meanwhile. Once the re-attestation records the new image, the upgrade goes on.
func TestUpgradeWaitsForAttestedImage(t *testing.T) {
	for how, why := range map[string]string{
		recordNone:     "no attestation record",
		recordOtherUID: "another Node object",
		recordStale:    "stale",
		recordPending:  "pending, not trusted",
	} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			e.node("worker-0", upgrade.RoleWorker, oldImage, true)
			e.pod("web-0", "worker-0", nil, nil)
			e.fleet.bootImage, e.fleet.record = oldImage, how
			e.run()
			e.upgrade()
			st := e.wait("the controller to wait for the replacement's attestation", func(st *v1alpha1.NodeUpgradeStatus) bool {
				// Past the provider's create: waiting for the attestation (or gone on, or failed, which the test refuses).
				return st.Phase == v1alpha1.PhaseFailed || len(st.Nodes) > 0 && st.Nodes[0].Step != v1alpha1.StepCreating &&
					(st.Nodes[0].Step != v1alpha1.StepJoining || strings.Contains(st.Nodes[0].Message, why))
			})
			if st.Phase == v1alpha1.PhaseFailed || st.Nodes[0].Step != v1alpha1.StepJoining {
				t.Fatalf("the controller did not wait for the replacement's attestation: %s", describe(st))
			}
			e.refusedUntouched("worker-0", "web-0")

			// The re-attestation proves the new image: the replacement counts, the old node goes.
			var n corev1.Node
			if err := e.admin.Get(t.Context(), types.NamespacedName{Name: "worker-new-1"}, &n); err != nil {
				t.Fatal(err)
			}
			if err := e.admin.DeleteAllOf(t.Context(), &coordinationv1.Lease{}, client.InNamespace(reattestation.RecordNamespace)); err != nil {
				t.Fatal(err)
			}
			if err := e.record(&n, newImage, recordTrusted); err != nil {
				t.Fatal(err)
			}
			e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
			if nodes := e.nodes(); !slices.Equal(nodes, []string{"worker-new-1"}) {
				t.Errorf("nodes %v", nodes)
			}
		})
	}
}

// refusedUntouched checks that the node is still there, schedulable, with its pod, and that the provider
// deleted nothing.
func (e *env) refusedUntouched(node, pod string) {
	e.t.Helper()
	if !slices.Contains(e.nodes(), node) || e.unschedulable(node) {
		e.t.Errorf("%s was cordoned or deleted", node)
	}
	if got := e.pods(); !slices.Equal(got, []string{pod}) {
		e.t.Errorf("pods %v, want %s", got, pod)
	}
	for _, c := range e.fleet.Calls() {
		if strings.HasPrefix(c, "delete") {
			e.t.Errorf("the provider was asked to %s", c)
		}
	}
}

// TestUpgradeWaitsForKubeadmToMarkTheControlPlane is a control-plane replacement whose kubelet registered it (and
// it is Ready) before kubeadm labelled it a control-plane node: the controller waits for the label, and goes on
// once kubeadm set it.
func TestUpgradeWaitsForKubeadmToMarkTheControlPlane(t *testing.T) {
	e := newEnv(t)
	e.node("control-plane-0", upgrade.RoleControlPlane, oldImage, true)
	e.fleet.unmarked = true
	e.run()
	e.upgrade()
	st := e.wait("the controller to wait for the control-plane label", func(st *v1alpha1.NodeUpgradeStatus) bool {
		return st.Phase == v1alpha1.PhaseFailed || inFlight("control-plane-0", v1alpha1.StepJoining, "waiting for kubeadm to mark")(st)
	})
	if st.Phase == v1alpha1.PhaseFailed {
		t.Fatalf("the upgrade failed on a replacement kubeadm had not marked yet: %s", describe(st))
	}
	var n corev1.Node
	if err := e.admin.Get(t.Context(), types.NamespacedName{Name: "control-plane-new-1"}, &n); err != nil {
		t.Fatal(err)
	}
	n.Labels["node-role.kubernetes.io/control-plane"] = ""
	if err := e.admin.Update(t.Context(), &n); err != nil {
		t.Fatal(err)
	}
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
	if nodes := e.nodes(); !slices.Equal(nodes, []string{"control-plane-new-1"}) {
		t.Errorf("nodes %v", nodes)
	}
}

// kubernetesCluster is a cluster of Kubernetes v1.36.3 (one control-plane node, one worker, a pod on the worker)
// that upgrades to a node image of v1.37.2.
func (e *env) kubernetesCluster() {
	e.setClusterVersion("v1.36.3")
	for _, n := range []string{"cp-0", "worker-0"} {
		e.kubelets.Store(n, "v1.36.3")
	}
	e.node("cp-0", upgrade.RoleControlPlane, oldImage, true)
	e.node("worker-0", upgrade.RoleWorker, oldImage, true)
	e.pod("web-0", "worker-0", nil, nil)
}

// TestKubernetesUpgradeControlPlaneFirst upgrades v1.36.3 to v1.37.2: the control-plane replacement counts
// only once the cluster's kubeadm configuration names v1.37.2 (its kubeadm upgrade apply wrote it), and no
// worker is replaced before.
func TestKubernetesUpgradeControlPlaneFirst(t *testing.T) {
	e := newEnv(t)
	e.kubernetesCluster()
	e.run()
	e.upgrade()
	e.wait("the controller to wait for kubeadm upgrade apply", inFlight("cp-0", v1alpha1.StepJoining, "waiting for kubeadm upgrade apply on control-plane-new-1 to move the cluster to Kubernetes v1.37.2 (its kubeadm configuration names v1.36.3)"))
	if got := e.fleet.Calls(); !slices.Equal(got, []string{"create control-plane"}) {
		t.Fatalf("calls while the cluster is on v1.36.3: %v", got)
	}
	if e.unschedulable("cp-0") {
		t.Fatal("cp-0 drained before the cluster was upgraded")
	}
	// kubeadm upgrade apply on control-plane-new-1 uploads the configuration; kubeadm moves the addons only
	// once cp-0 is gone, and no worker is replaced before.
	e.setClusterConfigVersion("v1.37.2")
	e.wait("the controller to wait for the addons", func(st *v1alpha1.NodeUpgradeStatus) bool {
		return strings.Contains(st.Message, "waiting for kubeadm to move the addons to Kubernetes v1.37.2 before replacing worker worker-0 (its kube-proxy DaemonSet runs registry.k8s.io/kube-proxy:v1.36.3)")
	})
	if got := e.fleet.Calls(); slices.Contains(got, "create worker") || !slices.Contains(got, "delete cp-0") {
		t.Fatalf("calls before the addons moved: %v", got)
	}
	e.setClusterVersion("v1.37.2")
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
	want := []string{"create control-plane", "etcd remove cp-0 for control-plane-new-1", "delete cp-0", "create worker", "delete worker-0"}
	if got := e.fleet.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
}

// TestKubernetesUpgradeRefusesWorkerBeforeControlPlane: a worker is never replaced by one of a newer kubelet
// than the control plane runs, whatever the order of the nodes: here the control-plane node runs the new image
// already, but the cluster was not upgraded (its kubeadm configuration names v1.36.3), or a control-plane
// node's kubelet is still on v1.36.3. Nothing is created or drained.
func TestKubernetesUpgradeRefusesWorkerBeforeControlPlane(t *testing.T) {
	for _, tc := range []struct{ name, cluster, cpKubelet, why string }{
		{"configuration not upgraded", "v1.36.3", "v1.37.2", "kubeadm configuration (kube-system/kubeadm-config) names Kubernetes v1.36.3"},
		{"control-plane kubelet not upgraded", "v1.37.2", "v1.36.3", `cp-0 runs kubelet "v1.36.3"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.setClusterVersion(tc.cluster)
			e.kubelets.Store("cp-0", tc.cpKubelet)
			e.kubelets.Store("worker-0", "v1.36.3")
			e.node("cp-0", upgrade.RoleControlPlane, newImage, true)
			e.node("worker-0", upgrade.RoleWorker, oldImage, true)
			e.pod("web-0", "worker-0", nil, nil)
			e.run()
			e.upgrade()
			st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
			if !strings.Contains(st.Message, "refusing to replace worker worker-0 by a node of Kubernetes v1.37.2") || !strings.Contains(st.Message, tc.why) {
				t.Errorf("message %q does not say why", st.Message)
			}
			if calls := e.fleet.Calls(); len(calls) != 0 {
				t.Errorf("the provider was asked: %v", calls)
			}
			e.refusedUntouched("worker-0", "web-0")
		})
	}
}

// TestKubernetesUpgradeStopsOnKubeadmError: the control-plane replacement reports that kubeadm upgrade apply
// failed on it; the upgrade stops with kubeadm's error in its status, the old node untouched.
func TestKubernetesUpgradeStopsOnKubeadmError(t *testing.T) {
	e := newEnv(t)
	e.kubernetesCluster()
	kubeadmErr := "kubeadm upgrade apply v1.37.2 (the cluster ran v1.36.3): exit status 1\n[ERROR CreateJob]: Job \"upgrade-health-check\" in the namespace \"kube-system\" did not complete in 1m5s"
	e.fleet.kubeadmError = kubeadmErr
	e.run()
	e.upgrade()
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "kubeadm failed on the replacement control-plane-new-1: "+kubeadmErr) || !strings.Contains(st.Message, "node cp-0, step joining") {
		t.Errorf("message %q does not carry kubeadm's error", st.Message)
	}
	if n := st.Nodes[len(st.Nodes)-1]; !strings.Contains(n.Message, "[ERROR CreateJob]") {
		t.Errorf("node progress %q does not carry kubeadm's error", n.Message)
	}
	if got := e.fleet.Calls(); !slices.Equal(got, []string{"create control-plane"}) {
		t.Errorf("calls after kubeadm failed: %v", got)
	}
	if e.unschedulable("cp-0") || !slices.Contains(e.nodes(), "cp-0") {
		t.Error("cp-0 was cordoned or deleted")
	}
	// The cluster's configuration reaching the version later does not resume a failed upgrade.
	e.setClusterVersion("v1.37.2")
	if st := e.wait("the status to stay", phase(v1alpha1.PhaseFailed)); len(st.Nodes) != 1 {
		t.Errorf("status %s", describe(st))
	}
}

// TestKubernetesUpgradeRefusesTargetsKubeadmCannotReach: an older version or one that skips a minor version is
// refused before any node is replaced.
func TestKubernetesUpgradeRefusesTargetsKubeadmCannotReach(t *testing.T) {
	for _, tc := range []struct{ cluster, target, why string }{
		{"v1.37.2", "v1.36.3", "kubeadm does not downgrade"},
		{"v1.35.4", "v1.37.2", "one minor version at a time"},
	} {
		t.Run(tc.cluster+"-"+tc.target, func(t *testing.T) {
			e := newEnv(t)
			e.setClusterVersion(tc.cluster)
			e.node("cp-0", upgrade.RoleControlPlane, oldImage, true)
			e.create(&v1alpha1.NodeUpgrade{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name}, Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: newImage, KubernetesVersion: tc.target}})
			e.run()
			st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
			if !strings.Contains(st.Message, tc.why) || !strings.Contains(st.Message, tc.target) {
				t.Errorf("message %q", st.Message)
			}
			if calls := e.fleet.Calls(); len(calls) != 0 {
				t.Errorf("the provider was asked: %v", calls)
			}
		})
	}
}

// TestKubernetesUpgradeIgnoresReportsOfOtherNodes: only the replacement in flight can stop the upgrade with a
// kubeadm failure; a report on any other node's Node object (which that node itself wrote) counts for nothing.
func TestKubernetesUpgradeIgnoresReportsOfOtherNodes(t *testing.T) {
	e := newEnv(t)
	e.kubernetesCluster()
	var n corev1.Node
	if err := e.admin.Get(t.Context(), types.NamespacedName{Name: "worker-0"}, &n); err != nil {
		t.Fatal(err)
	}
	n.Annotations = map[string]string{v1alpha1.KubeadmErrorAnnotation: "kubeadm join: exit status 1"}
	if err := e.admin.Update(t.Context(), &n); err != nil {
		t.Fatal(err)
	}
	e.run()
	e.upgrade()
	e.wait("the controller to wait for kubeadm upgrade apply", inFlight("cp-0", v1alpha1.StepJoining, "waiting for kubeadm upgrade apply"))
	e.setClusterVersion("v1.37.2")
	e.wait("the upgrade to succeed", phase(v1alpha1.PhaseSucceeded))
}

// TestKubernetesUpgradeStopsOnKubeadmAddonError: kubeadm failed to move the addons on the new control-plane
// node, which reported it: the upgrade stops with kubeadm's error before any worker is replaced.
func TestKubernetesUpgradeStopsOnKubeadmAddonError(t *testing.T) {
	e := newEnv(t)
	e.kubernetesCluster()
	e.run()
	e.upgrade()
	e.wait("the controller to wait for kubeadm upgrade apply", inFlight("cp-0", v1alpha1.StepJoining, "waiting for kubeadm upgrade apply"))
	e.setClusterConfigVersion("v1.37.2")
	e.wait("the controller to wait for the addons", func(st *v1alpha1.NodeUpgradeStatus) bool {
		return strings.Contains(st.Message, "waiting for kubeadm to move the addons")
	})
	var n corev1.Node
	if err := e.admin.Get(t.Context(), types.NamespacedName{Name: "control-plane-new-1"}, &n); err != nil {
		t.Fatal(err)
	}
	n.Annotations[v1alpha1.KubeadmErrorAnnotation] = "kubeadm upgrade node phase addon all (to v1.37.2): exit status 1\nerror: unable to update the kube-proxy DaemonSet"
	if err := e.admin.Update(t.Context(), &n); err != nil {
		t.Fatal(err)
	}
	st := e.wait("the upgrade to fail", phase(v1alpha1.PhaseFailed))
	if !strings.Contains(st.Message, "kubeadm failed on control-plane node control-plane-new-1: kubeadm upgrade node phase addon all (to v1.37.2): exit status 1") {
		t.Errorf("message %q does not carry kubeadm's error", st.Message)
	}
	if got := e.fleet.Calls(); slices.Contains(got, "create worker") || slices.Contains(got, "delete worker-0") {
		t.Errorf("a worker was replaced: %v", got)
	}
	if !slices.Contains(e.nodes(), "worker-0") || e.unschedulable("worker-0") || !slices.Contains(e.pods(), "web-0") {
		t.Error("worker-0 was drained")
	}
}
