package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	providerdaemon "github.com/constellation-dev/constellation/internal/provider/daemon"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/upgrade"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
)

const (
	upgradeFromDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	upgradeToDigest   = "sha256:2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e"
)

// installUpgradeController creates the upgrade controller's objects (its CRD first) in the API server and
// waits until it serves NodeUpgrades; it returns an administrator's client.
func installUpgradeController(t *testing.T, srv *kubeapitest.Server) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, v1alpha1.AddToScheme} {
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
	// The records' namespace comes with the join service, which the bootstrapper deploys before the controller.
	if err := admin.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: reattestation.RecordNamespace}}); err != nil {
		t.Fatal(err)
	}
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
	for {
		var nus v1alpha1.NodeUpgradeList
		if err := admin.List(t.Context(), &nus); err == nil {
			return admin
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// upgradeFixture is a cluster as 'apply' upgrades it: the key services of two control-plane nodes (swtpm
// nodes of the old image, members of the cluster), a real API server, and the real upgrade controller with
// the controller's permissions, whose provider (testFleet) registers each node it creates as its kubelet
// would, Ready, with the image it was asked for.
type upgradeFixture struct {
	t        *testing.T
	srv      *kubeapitest.Server
	admin    client.Client
	fleet    *testFleet
	policies []*keyservice.Policy
	up       *PolicyUpgrade
	old, new measurements.M
	// peerPolicy is the peer policy last handed to the provider.
	peerPolicy []measurements.M
	// registered counts the registrations of the new image; recorded is the image the state file records.
	mu         sync.Mutex
	registered int
	recorded   []clusterImage
}

// quietControllers silences the logs of the controller's libraries once (they are global).
var quietControllers sync.Once

func newUpgradeFixture(t *testing.T) *upgradeFixture {
	t.Helper()
	quietControllers.Do(func() {
		ctrllog.SetLogger(logr.Discard())
		klog.SetLogger(logr.Discard())
	})
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := kms.NewDeriver(ms)
	clusterID, _ := d.ClusterID()
	key, _ := d.MeasurementPolicyKey()
	policies, addrs, roots, old := controlPlaneKeyServices(t, 2, d, clusterID)
	f := &upgradeFixture{t: t, srv: kubeapitest.New(t), policies: policies, old: old, new: otherImage(old, 0x2e)}
	f.admin = installUpgradeController(t, f.srv)
	// The cluster's endpoint is a load balancer's: every node can be replaced.
	f.create(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cluster-info", Namespace: "kube-public"}, Data: map[string]string{"kubeconfig": `apiVersion: v1
kind: Config
clusters:
- name: ""
  cluster:
    server: https://10.0.0.100:6443
`}})
	f.fleet = &testFleet{f: f, held: map[string]bool{}}
	for _, n := range []struct{ name, role string }{{"control-plane-0", upgrade.RoleControlPlane}, {"worker-0", upgrade.RoleWorker}} {
		if err := f.fleet.register(n.name, n.role, upgradeFromDigest, true); err != nil {
			t.Fatal(err)
		}
	}
	f.up = &PolicyUpgrade{
		Key: key, ClusterID: clusterID, KeyServices: addrs, Known: []measurements.M{f.new, old}, API: f.srv.Client(t),
		Trust: func(sets ...measurements.M) (attestation.Validator, error) {
			return keyservice.MemberValidators(attestation.MiniVTPM, roots, clusterID, nil)(sets)
		},
		PeerPolicy: func(_ context.Context, sets ...measurements.M) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.peerPolicy = sets
			return nil
		},
	}
	f.runController()
	return f
}

func (f *upgradeFixture) create(obj client.Object) {
	f.t.Helper()
	if err := f.admin.Create(context.Background(), obj); err != nil {
		f.t.Fatalf("creating %s: %v", obj.GetName(), err)
	}
}

// runController runs the upgrade controller as its service account until the test ends.
func (f *upgradeFixture) runController() {
	f.t.Helper()
	cfg, err := f.srv.RESTConfig("system:serviceaccount:kube-system:"+deploy.Name, "system:serviceaccounts", "system:serviceaccounts:kube-system")
	if err != nil {
		f.t.Fatal(err)
	}
	mgr, err := upgrade.NewManager(cfg, upgrade.Options{
		Fleet: f.fleet, Etcd: noEtcdMembers{}, Log: slog.New(slog.DiscardHandler),
		LeaderElection: true, LeaseNamespace: "kube-system", Retry: 100 * time.Millisecond,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	f.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("the controller: %v", err)
		}
	})
}

// upgrade is what 'apply' drives, from the image the state file records to the configured one.
func (f *upgradeFixture) upgrade(out *bytes.Buffer, from, to clusterImage) *imageUpgrade {
	return &imageUpgrade{
		Policy: f.up, API: f.srv.Client(f.t), From: from, To: to, Out: out,
		Register: func(context.Context) (string, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.registered++
			return upgradeToDigest, nil
		},
		Record: func(img clusterImage) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.recorded = append(f.recorded, img)
			return nil
		},
	}
}

func (f *upgradeFixture) oldImage() clusterImage {
	return clusterImage{Digest: upgradeFromDigest, Measurements: f.old}
}
func (f *upgradeFixture) newImage() clusterImage {
	return clusterImage{Digest: upgradeToDigest, Measurements: f.new}
}

// inForce is the measurement policy in force at each key service.
func (f *upgradeFixture) inForce() []*policyupdate.Update {
	var us []*policyupdate.Update
	for _, p := range f.policies {
		u, _ := p.Current()
		us = append(us, u)
	}
	return us
}

// nodeUpgrade reads the NodeUpgrade (nil: none).
func (f *upgradeFixture) nodeUpgrade() *v1alpha1.NodeUpgrade {
	f.t.Helper()
	nu, err := getNodeUpgrade(context.Background(), f.srv.Client(f.t))
	if err != nil {
		f.t.Fatal(err)
	}
	return nu
}

// waitFor waits until the NodeUpgrade satisfies cond (the test's timeout bounds the wait).
func (f *upgradeFixture) waitFor(cond func(*v1alpha1.NodeUpgrade) bool) *v1alpha1.NodeUpgrade {
	f.t.Helper()
	for {
		if nu := f.nodeUpgrade(); nu != nil && cond(nu) {
			return nu
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodes are the names of the Node objects.
func (f *upgradeFixture) nodes() []string {
	f.t.Helper()
	var list corev1.NodeList
	if err := f.admin.List(context.Background(), &list); err != nil {
		f.t.Fatal(err)
	}
	var names []string
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	return names
}

// testFleet creates nodes as a provider whose nodes join at once: it registers their Node, Ready unless the
// test holds new nodes back, with the image asked for; it fails every creation if fail is set.
type testFleet struct {
	f       *upgradeFixture
	mu      sync.Mutex
	calls   []string
	n       int
	hold    bool
	held    map[string]bool
	fail    error
	created []string
}

func (fl *testFleet) CreateNode(_ context.Context, role, image string) (string, error) {
	fl.mu.Lock()
	fl.calls = append(fl.calls, "create "+role+" "+image)
	if fl.fail != nil {
		fl.mu.Unlock()
		return "", fl.fail
	}
	fl.n++
	name := fmt.Sprintf("%s-%d", role, fl.n)
	hold := fl.hold
	fl.held[name] = hold
	fl.created = append(fl.created, name)
	fl.mu.Unlock()
	return name, fl.register(name, role, image, !hold)
}

func (fl *testFleet) DeleteNode(_ context.Context, name string) error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.calls = append(fl.calls, "delete "+name)
	return nil
}

func (fl *testFleet) log() []string {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return append([]string(nil), fl.calls...)
}

// register creates a Node as its kubelet would, and the attestation record the re-attestation controller (the
// join service's service account) writes once the node's evidence matched the measurement set of image: the
// controller reads a node's image from there.
func (fl *testFleet) register(name, role, image string, ready bool) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if role == upgrade.RoleControlPlane {
		n.Labels = map[string]string{"node-role.kubernetes.io/control-plane": ""}
	}
	if err := fl.f.admin.Create(context.Background(), n); err != nil {
		return err
	}
	validity := int32(3600)
	record := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: reattestation.RecordNamespace, Annotations: map[string]string{
			reattestation.StateAnnotation: string(reattestation.Trusted), reattestation.NodeUIDAnnotation: string(n.UID),
			reattestation.AttestedImageAnnotation: image,
		}},
		Spec: coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: time.Now()}, LeaseDurationSeconds: &validity},
	}
	if err := fl.f.admin.Create(context.Background(), record); err != nil {
		return fmt.Errorf("writing the attestation record of %s: %w", name, err)
	}
	return fl.setReady(name, ready)
}

// setReady sets the Node's Ready condition, as its kubelet would.
func (fl *testFleet) setReady(name string, ready bool) error {
	var n corev1.Node
	if err := fl.f.admin.Get(context.Background(), types.NamespacedName{Name: name}, &n); err != nil {
		return err
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.1." + fmt.Sprint(len(name))}}
	return fl.f.admin.Status().Update(context.Background(), &n)
}

// release makes the held nodes Ready.
func (fl *testFleet) release() {
	fl.mu.Lock()
	fl.hold = false
	var names []string
	for name, held := range fl.held {
		if held {
			names = append(names, name)
			fl.held[name] = false
		}
	}
	fl.mu.Unlock()
	for _, name := range names {
		if err := fl.setReady(name, true); err != nil {
			fl.f.t.Error(err)
		}
	}
}

// noEtcdMembers has no etcd member to remove (the control-plane nodes here run no etcd).
type noEtcdMembers struct{}

func (noEtcdMembers) RemoveMember(context.Context, string, string) error { return nil }

// apply on a cluster whose configuration names another node image: the image is made known to the provider,
// both images are accepted while the controller replaces every node (control plane first), the progress is
// printed once per step and node, and once the controller reports success only the new image is accepted and
// the state file records it. A second apply finds nothing to do.
func TestApplyUpgradesTheCluster(t *testing.T) {
	f := newUpgradeFixture(t)
	var out bytes.Buffer
	if err := f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background()); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if f.registered != 1 || len(f.recorded) != 1 || f.recorded[0].Digest != upgradeToDigest {
		t.Fatalf("registered %d times, recorded %+v", f.registered, f.recorded)
	}
	for _, u := range f.inForce() {
		if len(u.Sets) != 1 || !containsSet(u.Sets, f.new) {
			t.Fatalf("a key service has %v in force, want the new image only", u)
		}
	}
	if f.peerPolicy != nil {
		t.Fatalf("the peer policy after the upgrade: %v, want none", f.peerPolicy)
	}
	if _, _, found, _ := keyservice.LoadNarrowing(context.Background(), f.up.API); found {
		t.Fatal("the narrowing is still left in the cluster")
	}
	nu := f.nodeUpgrade()
	if nu.Status.Phase != v1alpha1.PhaseSucceeded || nu.Spec.ImageDigest != upgradeToDigest || nu.Spec.KubernetesVersion != "" {
		t.Fatalf("NodeUpgrade: %+v %+v", nu.Spec, nu.Status)
	}
	if calls := strings.Join(f.fleet.log(), ", "); calls != "create control-plane "+upgradeToDigest+", delete control-plane-0, create worker "+upgradeToDigest+", delete worker-0" {
		t.Fatalf("provider calls: %s", calls)
	}
	text := out.String()
	for _, step := range []v1alpha1.Step{v1alpha1.StepJoining, v1alpha1.StepDraining, v1alpha1.StepRemoving, v1alpha1.StepDone} {
		for _, node := range []string{"control-plane-0 (control-plane) -> control-plane-1", "worker-0 (worker) -> worker-2"} {
			if n := strings.Count(text, "  "+node+": "+string(step)+": "); n != 1 {
				t.Errorf("%d lines for %s, step %s, want 1", n, node, step)
			}
		}
	}
	for _, want := range []string{"upgrade succeeded", "Upgrade finished"} {
		if !strings.Contains(text, want) {
			t.Errorf("the output does not say %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("apply's output:\n%s", text)
	}
	var status bytes.Buffer
	printUpgrade(&status, nu, f.nodes())
	if !strings.Contains(status.String(), "Succeeded, 2/2 nodes replaced") {
		t.Fatalf("status:\n%s", status.String())
	}

	// abort after the upgrade finished (the state file records the new image): nothing to roll back.
	out.Reset()
	if err := f.upgrade(&out, f.newImage(), clusterImage{}).abort(context.Background()); err == nil || ExitCode(err) != ExitBadInput || !strings.Contains(err.Error(), "succeeded and is finished") || f.nodeUpgrade() == nil {
		t.Fatalf("abort after the upgrade finished: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := f.upgrade(&out, f.newImage(), f.newImage()).run(context.Background()); err != nil || !strings.Contains(out.String(), "nothing to upgrade") {
		t.Fatalf("apply again: %v\n%s", err, out.String())
	}
	if f.registered != 1 || len(f.fleet.log()) != 4 {
		t.Fatalf("apply again changed something: registered %d times, provider calls %v", f.registered, f.fleet.log())
	}
}

// Interrupted (Ctrl-C) while the controller waits for a replacement, apply leaves the upgrade running and
// says how to resume; status shows it with the node in flight; apply again follows the same upgrade (nothing
// registered or asked again) to its end.
func TestApplyResumesAnInterruptedUpgrade(t *testing.T) {
	f := newUpgradeFixture(t)
	f.fleet.mu.Lock()
	f.fleet.hold = true
	f.fleet.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- f.upgrade(&out, f.oldImage(), f.newImage()).run(ctx) }()
	f.waitFor(func(nu *v1alpha1.NodeUpgrade) bool {
		cur := inFlight(nu)
		return cur != nil && cur.Step == v1alpha1.StepJoining && strings.Contains(cur.Message, "Ready")
	})
	cancel()
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "interrupted") || !strings.Contains(err.Error(), "'constellation apply' again") || ExitCode(err) != ExitFailed {
		t.Fatalf("interrupted apply: %v", err)
	}
	if len(f.recorded) != 0 {
		t.Fatal("an interrupted upgrade was recorded")
	}
	for _, u := range f.inForce() {
		if len(u.Sets) != 2 {
			t.Fatalf("a key service has %v in force while the upgrade runs, want both images", u)
		}
	}
	nu := f.nodeUpgrade()
	var status bytes.Buffer
	printUpgrade(&status, nu, f.nodes())
	for _, want := range []string{"Running, 0/2 nodes replaced", "node control-plane-0 (control-plane) -> control-plane-1, step joining", "upgrade abort"} {
		if !strings.Contains(status.String(), want) {
			t.Errorf("status does not say %q:\n%s", want, status.String())
		}
	}

	// apply again, with the same configuration: it follows.
	out.Reset()
	done = make(chan error, 1)
	go func() { done <- f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background()) }()
	f.fleet.release()
	if err := <-done; err != nil {
		t.Fatalf("apply again: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "Following the upgrade") || f.registered != 1 || len(f.recorded) != 1 {
		t.Fatalf("apply again: registered %d times, recorded %v:\n%s", f.registered, f.recorded, out.String())
	}
	if nu := f.nodeUpgrade(); nu.Generation != 1 || nu.Status.Phase != v1alpha1.PhaseSucceeded {
		t.Fatalf("NodeUpgrade after the second apply: generation %d, %+v", nu.Generation, nu.Status)
	}
}

// A failed upgrade: apply exits non-zero with the controller's message and how to roll back, and so does
// apply again (nothing new is asked); 'upgrade abort' removes the NodeUpgrade and rolls the policy back to
// the old image, and the next apply starts afresh.
func TestApplyReportsAFailedUpgradeAndAbortRollsBack(t *testing.T) {
	f := newUpgradeFixture(t)
	f.fleet.mu.Lock()
	f.fleet.fail = errors.New("out of machines")
	f.fleet.mu.Unlock()
	var out bytes.Buffer
	err := f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background())
	if !errors.Is(err, errUpgradeFailed) || ExitCode(err) != ExitFailed || !strings.Contains(err.Error(), "out of machines") || !strings.Contains(err.Error(), "constellation upgrade abort") {
		t.Fatalf("apply of a failing upgrade: %v", err)
	}
	if !strings.Contains(out.String(), "control-plane-0 (control-plane): creating: ") {
		t.Errorf("the output does not show the failed step:\n%s", out.String())
	}
	err = f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background())
	if !errors.Is(err, errUpgradeFailed) || f.registered != 1 || len(f.recorded) != 0 || len(f.fleet.log()) != 1 {
		t.Fatalf("apply again after the failure: %v; registered %d times, recorded %v, provider calls %v", err, f.registered, f.recorded, f.fleet.log())
	}

	out.Reset()
	if err := f.upgrade(&out, clusterImage{}, clusterImage{}).abort(context.Background()); err == nil || ExitCode(err) != ExitBadInput || !strings.Contains(err.Error(), "records no node image") {
		t.Fatalf("abort without the image the cluster ran before: %v", err)
	}
	if err := f.upgrade(&out, f.oldImage(), clusterImage{}).abort(context.Background()); err != nil {
		t.Fatalf("abort: %v\n%s", err, out.String())
	}
	if f.nodeUpgrade() != nil {
		t.Fatal("the NodeUpgrade is left after the abort")
	}
	// No node was replaced: the rollback replaced none either.
	if calls := f.fleet.log(); len(calls) != 1 {
		t.Fatalf("provider calls %v, want the failed create only", calls)
	}
	for _, want := range []string{"the upgrade had failed", "Upgrade rolled back: every node runs node image " + upgradeFromDigest} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("abort does not say %q:\n%s", want, out.String())
		}
	}
	for _, u := range f.inForce() {
		if u.Epoch != 3 || len(u.Sets) != 1 || !containsSet(u.Sets, f.old) {
			t.Fatalf("a key service has %v in force after the abort, want the old image only at epoch 3", u)
		}
	}
	if f.peerPolicy != nil {
		t.Fatalf("the peer policy after the abort: %v", f.peerPolicy)
	}

	f.fleet.mu.Lock()
	f.fleet.fail = nil
	f.fleet.mu.Unlock()
	out.Reset()
	if err := f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background()); err != nil {
		t.Fatalf("apply after the rollback: %v\n%s", err, out.String())
	}
	if f.registered != 2 || len(f.recorded) != 1 {
		t.Fatalf("apply after the rollback: registered %d times, recorded %v", f.registered, f.recorded)
	}
}

// The controller failed on the node of the new image it was finishing after the rollback was asked for (the
// NodeUpgrade names the old image, its status the new one, Failed): the controller acts on it no more, so abort
// replaces it by a new NodeUpgrade toward the old image, and completes the rollback.
func TestAbortAfterTheNodeInFlightFailed(t *testing.T) {
	f := newUpgradeFixture(t)
	f.fleet.mu.Lock()
	f.fleet.fail = errors.New("out of machines")
	f.fleet.mu.Unlock()
	var out bytes.Buffer
	if err := f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background()); !errors.Is(err, errUpgradeFailed) {
		t.Fatalf("apply: %v", err)
	}
	var nu v1alpha1.NodeUpgrade
	if err := f.admin.Get(t.Context(), types.NamespacedName{Name: v1alpha1.Name}, &nu); err != nil {
		t.Fatal(err)
	}
	orig := nu.DeepCopy()
	nu.Spec.ImageDigest = upgradeFromDigest
	if err := f.admin.Patch(t.Context(), &nu, client.MergeFrom(orig)); err != nil {
		t.Fatal(err)
	}
	f.waitFor(func(nu *v1alpha1.NodeUpgrade) bool {
		return nu.Status.ObservedGeneration == nu.Generation && nu.Status.Phase == v1alpha1.PhaseFailed && !current(nu)
	})
	out.Reset()
	if err := f.upgrade(&out, f.oldImage(), clusterImage{}).abort(context.Background()); err != nil {
		t.Fatalf("abort: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "the upgrade had failed") || f.nodeUpgrade() != nil {
		t.Fatalf("abort did not replace the failed NodeUpgrade:\n%s", out.String())
	}
	for _, u := range f.inForce() {
		if len(u.Sets) != 1 || !containsSet(u.Sets, f.old) {
			t.Fatalf("a key service has %v in force after the rollback, want the old image only", u)
		}
	}
}

// apply with the old configuration while the upgrade runs rolls it back: the controller finishes the node in
// flight (the control-plane node, to the new image), then replaces it by a node of the old image; only then is
// the policy narrowed to the old image, and the NodeUpgrade removed. The worker, never replaced, stays.
func TestApplyOldConfigurationRollsTheUpgradeBack(t *testing.T) {
	f := newUpgradeFixture(t)
	f.fleet.mu.Lock()
	f.fleet.hold = true
	f.fleet.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- f.upgrade(&out, f.oldImage(), f.newImage()).run(ctx) }()
	f.waitFor(func(nu *v1alpha1.NodeUpgrade) bool {
		cur := inFlight(nu)
		return cur != nil && cur.Step == v1alpha1.StepJoining
	})
	cancel()
	<-done

	out.Reset()
	done = make(chan error, 1)
	go func() { done <- f.upgrade(&out, f.oldImage(), f.oldImage()).run(context.Background()) }()
	f.waitFor(func(nu *v1alpha1.NodeUpgrade) bool { return nu.Spec.ImageDigest == upgradeFromDigest })
	// Both images are accepted until the rollback is done.
	for _, u := range f.inForce() {
		if len(u.Sets) != 2 {
			t.Fatalf("a key service has %v in force while the rollback runs, want both images", u)
		}
	}
	f.fleet.release()
	if err := <-done; err != nil {
		t.Fatalf("apply with the old configuration: %v\n%s", err, out.String())
	}
	if f.nodeUpgrade() != nil {
		t.Fatal("the NodeUpgrade is left after the rollback")
	}
	for _, u := range f.inForce() {
		if len(u.Sets) != 1 || !containsSet(u.Sets, f.old) {
			t.Fatalf("a key service has %v in force after the rollback, want the old image only", u)
		}
	}
	if f.peerPolicy != nil {
		t.Fatalf("the peer policy after the rollback: %v", f.peerPolicy)
	}
	// The controller finished the control-plane node it was replacing, replaced it again by one of the old image,
	// and left the worker, which runs the old image.
	want := "create control-plane " + upgradeToDigest + ", delete control-plane-0, create control-plane " + upgradeFromDigest + ", delete control-plane-1"
	if calls := strings.Join(f.fleet.log(), ", "); calls != want {
		t.Fatalf("provider calls: %s\nwant: %s", calls, want)
	}
	if nodes := strings.Join(f.nodes(), " "); nodes != "control-plane-2 worker-0" {
		t.Fatalf("nodes after the rollback: %s", nodes)
	}
	for _, want := range []string{"rolling the upgrade back", "asked the upgrade controller to roll back: it finishes control-plane-0 (step joining)",
		"control-plane-0 (control-plane) -> control-plane-1: done", "control-plane-1 (control-plane) -> control-plane-2: done",
		"Upgrade rolled back: every node runs node image " + upgradeFromDigest} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output does not say %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("apply's output:\n%s", out.String())
	}
	if len(f.recorded) != 0 {
		t.Fatal("a rolled back upgrade was recorded")
	}
}

// An 'apply' that follows the upgrade while 'upgrade abort' turns it into a rollback stops following and
// leaves the policy alone: the rollback's success is not the upgrade's, and narrowing to the new image would
// refuse every node of the old one.
func TestApplyStopsFollowingARolledBackUpgrade(t *testing.T) {
	f := newUpgradeFixture(t)
	f.fleet.mu.Lock()
	f.fleet.hold = true
	f.fleet.mu.Unlock()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background()) }()
	f.waitFor(func(nu *v1alpha1.NodeUpgrade) bool {
		cur := inFlight(nu)
		return cur != nil && cur.Step == v1alpha1.StepJoining
	})
	var abortOut bytes.Buffer
	aborted := make(chan error, 1)
	go func() { aborted <- f.upgrade(&abortOut, f.oldImage(), clusterImage{}).abort(context.Background()) }()
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "turned toward node image "+upgradeFromDigest) {
		t.Fatalf("apply while the upgrade is rolled back: %v\n%s", err, out.String())
	}
	f.fleet.release()
	if err := <-aborted; err != nil {
		t.Fatalf("abort: %v\n%s", err, abortOut.String())
	}
	for _, u := range f.inForce() {
		if len(u.Sets) != 1 || !containsSet(u.Sets, f.old) {
			t.Fatalf("a key service has %v in force after the rollback, want the old image only", u)
		}
	}
	if len(f.recorded) != 0 {
		t.Fatal("a rolled back upgrade was recorded")
	}
}

// The rollback narrows the policy at the key services of the control-plane nodes there are once it is done. One
// of them does not answer (its node is still joining: its key service serves its policy port only once it has
// the master secret; or the host keeps it silent): abort narrows at the others, says which one it waits for,
// and never skips it; once the provider no longer lists that node (it was removed), abort completes.
func TestAbortWaitsForAKeyServiceThatDoesNotAnswer(t *testing.T) {
	f := newUpgradeFixture(t)
	var out bytes.Buffer
	// An upgrade that failed half-way: the window is open, the controller stopped.
	f.fleet.mu.Lock()
	f.fleet.fail = errors.New("out of machines")
	f.fleet.mu.Unlock()
	if err := f.upgrade(&out, f.oldImage(), f.newImage()).run(context.Background()); !errors.Is(err, errUpgradeFailed) {
		t.Fatalf("apply: %v", err)
	}
	// A control-plane node the provider lists whose key service does not answer: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := ln.Addr().String()
	ln.Close()
	live := f.up.KeyServices
	var mu sync.Mutex
	// At first the provider lists only the node whose key service does not answer (the others' are not up yet).
	listed := []string{silent}
	f.up.KeyServices = slices.Clone(listed)
	iu := f.upgrade(&out, f.oldImage(), clusterImage{})
	api := iu.API
	iu.Reconnect = func(context.Context) (*kubeapi.Client, []string, error) {
		mu.Lock()
		defer mu.Unlock()
		return api, slices.Clone(listed), nil
	}
	defer func(d time.Duration) { rollbackRetry = d }(rollbackRetry)
	rollbackRetry = 10 * time.Millisecond
	out.Reset()
	w := &syncBuffer{}
	iu.Out = w
	done := make(chan error, 1)
	go func() { done <- iu.abort(context.Background()) }()
	for !strings.Contains(w.String(), "waiting for the key services at "+silent) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, u := range f.inForce() {
		if len(u.Sets) != 2 {
			t.Fatalf("a key service has %v in force while no key service answered, want both images", u)
		}
	}
	// The others answer now: they get the old image only, while abort keeps waiting for the silent one.
	mu.Lock()
	listed = append(slices.Clone(live), silent)
	mu.Unlock()
	for {
		narrowed := true
		for _, u := range f.inForce() {
			narrowed = narrowed && len(u.Sets) == 1 && containsSet(u.Sets, f.old)
		}
		if narrowed {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("abort ended while a key service it must narrow did not answer: %v\n%s", err, w.String())
	default:
	}
	if f.nodeUpgrade() == nil {
		t.Fatal("the NodeUpgrade was removed before the rollback was in force everywhere")
	}
	// The node is removed through the provider: abort completes.
	mu.Lock()
	listed = live
	mu.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("abort: %v\n%s", err, w.String())
	}
	if f.nodeUpgrade() != nil {
		t.Fatal("the NodeUpgrade is left after the rollback")
	}
	if n := strings.Count(w.String(), "waiting for the key services"); n != 1 {
		t.Errorf("%d lines about the silent key service, want 1:\n%s", n, w.String())
	}
}

// syncBuffer is a bytes.Buffer that a test reads while another goroutine writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The attack: the host (which can write the workspace's image directory) hands 'apply' a new node image whose
// measurements are not signed, or are signed for another image, or whose manifest claims another Kubernetes
// version than the signed measurements name (the upgrade would skip kubeadm's upgrade path or break the version
// skew), or whose measurements were signed before statements named the Kubernetes version (no signed version:
// no Kubernetes upgrade decision). apply on the running cluster refuses before anything changes: the provider
// is asked nothing (the image is not registered), no measurement policy window is opened, no NodeUpgrade
// created, the state file stays. The same workspace with the genuine bundle and manifest does reach the
// provider, with the signed Kubernetes version, so the refusal is the signature's.
func TestApplyRefusesAnUpgradeToAnUnverifiedImage(t *testing.T) {
	imageDir := t.TempDir()
	expected, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: [32]byte{0x2e}, Cmdline: nodeimage.DefaultCmdline})
	if err != nil {
		t.Fatal(err)
	}
	rawMeas, _ := json.Marshal(expected)
	measPath := filepath.Join(imageDir, "measurements.json")
	write(t, measPath, rawMeas)
	rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: upgradeToDigest, Cmdline: nodeimage.DefaultCmdline, Versions: nodeimage.Versions{Kubernetes: "v1.37.2"}})
	write(t, filepath.Join(imageDir, "node-image.json"), rawManifest)
	sig := signImage(t, imageDir)
	ws := t.TempDir()
	if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...); code != 0 {
		t.Fatalf("config generate: %s", errOut)
	}
	bundlePath := measPath + signed.BundleSuffix
	genuineBundle, _ := os.ReadFile(bundlePath)
	// The same measurements, genuinely signed, but for the image the cluster runs.
	signFile(t, devKey(t), imageDir, "measurements.json", upgradeFromDigest, attestation.MiniVTPM.Name)
	otherDigestBundle, _ := os.ReadFile(bundlePath)
	// The same measurements, genuinely signed for this image, as signed before statements named versions.
	signFile(t, devKey(t), imageDir, "measurements.json", upgradeToDigest, attestation.MiniVTPM.Name)
	unversionedBundle, _ := os.ReadFile(bundlePath)
	stopTestLog(t)
	manifestPath := filepath.Join(imageDir, "node-image.json")
	// The host edits the manifest of the genuinely signed image (Kubernetes v1.37.2) to claim the cluster's
	// Kubernetes: apply would skip kubeadm's upgrade of the control plane and replace the nodes by ones whose
	// kubelet is a minor version ahead of it.
	claimsOlder, _ := json.Marshal(nodeimage.Manifest{Digest: upgradeToDigest, Cmdline: nodeimage.DefaultCmdline, Versions: nodeimage.Versions{Kubernetes: "v1.36.4"}})
	// The same claim, with a second Kubernetes key that a lenient reader takes instead of the first.
	claimsTwice := bytes.Replace(rawManifest, []byte(`"kubernetes":"v1.37.2"`), []byte(`"kubernetes":"v1.37.2","kubernetes":"v1.36.4"`), 1)

	// The running cluster, initialised with the old image: its master secret, state, kubeconfig and provider.
	ms, _ := kms.GenerateMasterSecret()
	if err := kms.WriteSecretFile(filepath.Join(ws, kms.MasterSecretFileName), &kms.SecretFile{Plain: ms}, false); err != nil {
		t.Fatal(err)
	}
	d, _ := kms.NewDeriver(ms)
	clusterID, _ := d.ClusterID()
	if err := writeClusterState(ws, clusterState{ClusterID: hex.EncodeToString(clusterID), Endpoint: "127.0.0.1:6443", ImageDigest: upgradeFromDigest, Measurements: otherImage(expected, 0x11)}); err != nil {
		t.Fatal(err)
	}
	genuineState, _ := os.ReadFile(filepath.Join(ws, StateFile))
	srv := kubeapitest.New(t)
	installUpgradeController(t, srv)
	kubeconfig, _ := os.ReadFile(srv.Kubeconfig(t, "kubeapitest-admin", "system:masters"))
	write(t, filepath.Join(ws, AdminKubeconfigFile), kubeconfig)
	dir := filepath.Join(ws, miniDirName)
	if err := os.MkdirAll(filepath.Join(dir, "ak-ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	write(t, filepath.Join(dir, "ak-ca", "ca-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: node.CA.Certificate().Raw}))
	daemon := exec.Command("sh", "-c", "sleep 600", "mini") // a provider process, as DaemonAlive sees it
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { daemon.Process.Kill(); daemon.Wait() })
	rawState, _ := json.Marshal(mini.State{Status: providerdaemon.Status{DaemonPID: daemon.Process.Pid, Phase: mini.PhaseRunning, MetadataURL: "http://127.0.0.1:1"},
		Nodes: []mini.NodeState{{Name: "control-plane-0", Role: "control-plane", IP: "127.0.0.1"}}})
	write(t, mini.StatePath(dir), rawState)
	// The provider's control socket: it records what it is asked, and registers the image.
	var mu sync.Mutex
	var asked []string
	ln, err := net.Listen("unix", mini.ControlSocket(dir))
	if err != nil {
		t.Fatal(err)
	}
	provider := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/v1/node-images" {
			json.NewEncoder(w).Encode(map[string]string{"digest": upgradeToDigest})
		}
	})}
	go provider.Serve(ln)
	t.Cleanup(func() { provider.Close() })
	api := srv.Client(t)
	unchanged := func(t *testing.T) {
		t.Helper()
		if nu, err := getNodeUpgrade(context.Background(), api); err != nil || nu != nil {
			t.Errorf("a NodeUpgrade: %+v, %v", nu, err)
		}
		if _, _, found, err := keyservice.LoadWindow(context.Background(), api); err != nil || found {
			t.Errorf("a measurement policy window was left in the cluster (%v)", err)
		}
		if raw, _ := os.ReadFile(filepath.Join(ws, StateFile)); !bytes.Equal(raw, genuineState) {
			t.Errorf("the state file changed:\n%s", raw)
		}
	}
	for _, tc := range []struct {
		name     string
		bundle   []byte
		manifest []byte // default: the genuine manifest
		code     int
		wantErr  string
	}{
		{"unsigned measurements", nil, nil, 2, "bundle"},
		{"measurements signed for another image", otherDigestBundle, nil, 1, "not for image"},
		{"a manifest that claims another Kubernetes version than the signed one", genuineBundle, claimsOlder, 1,
			"claims Kubernetes v1.36.4, but its signed measurements say Kubernetes v1.37.2"},
		{"a manifest that names the Kubernetes version twice", genuineBundle, claimsTwice, 1, `key "kubernetes" twice`},
		{"measurements signed without a Kubernetes version", unversionedBundle, nil, 1, "name no Kubernetes version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(bundlePath)
			if tc.bundle != nil {
				write(t, bundlePath, tc.bundle)
			}
			manifest := rawManifest
			if tc.manifest != nil {
				manifest = tc.manifest
			}
			write(t, manifestPath, manifest)
			mu.Lock()
			asked = nil
			mu.Unlock()
			_, errOut, code := run(append([]string{"apply", "--workspace", ws}, sig...)...)
			if code != tc.code || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, want %d and an error containing %q:\n%s", code, tc.code, tc.wantErr, errOut)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(asked) != 0 {
				t.Errorf("the provider was asked %v", asked)
			}
			unchanged(t)
		})
	}
	// The genuine bundle and manifest: apply gets as far as the provider (and stops at the key services, which
	// this workspace does not have), with the signed Kubernetes version.
	write(t, bundlePath, genuineBundle)
	write(t, manifestPath, rawManifest)
	out, errOut, code := run(append([]string{"apply", "--workspace", ws}, sig...)...)
	mu.Lock()
	defer mu.Unlock()
	if code != 1 || len(asked) == 0 || asked[0] != "/v1/node-images" || !strings.Contains(out, "runs Kubernetes v1.37.2") {
		t.Fatalf("apply with the genuine image: exit %d, provider asked %v:\n%s\n%s", code, asked, out, errOut)
	}
}

// What apply does with a running cluster, by the image the state file records, the configured one and the
// NodeUpgrade in the cluster.
func TestDecideUpgrade(t *testing.T) {
	const a, b, c = "sha256:aa", "sha256:bb", "sha256:cc"
	nu := func(target string, phase v1alpha1.Phase, abort bool) *v1alpha1.NodeUpgrade {
		n := &v1alpha1.NodeUpgrade{Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: target, Abort: abort}}
		n.Generation = 2
		n.Status = v1alpha1.NodeUpgradeStatus{ObservedGeneration: 2, ImageDigest: target, Phase: phase}
		return n
	}
	stale := nu(b, v1alpha1.PhaseSucceeded, false)
	stale.Generation = 3 // the spec changed, the controller has not answered yet
	for _, tc := range []struct {
		name     string
		from, to string
		nu       *v1alpha1.NodeUpgrade
		want     upgradeAction
		wantErr  string
	}{
		{"the configured image, no upgrade", a, a, nil, actionNone, ""},
		{"the configured image, its upgrade done", a, a, nu(a, v1alpha1.PhaseSucceeded, false), actionNone, ""},
		{"the configured image, an upgrade aborted", a, a, nu(b, v1alpha1.PhaseAborted, true), actionRollback, ""},
		{"the configured image, a rollback to it runs", a, a, nu(a, v1alpha1.PhaseRunning, false), actionRollback, ""},
		{"the configured image, a rollback to it failed", a, a, nu(a, v1alpha1.PhaseFailed, false), actionRollback, ""},
		{"a new image while a rollback runs", a, b, nu(a, v1alpha1.PhaseRunning, false), 0, "rollback to image"},
		{"the old configuration while the upgrade runs", a, a, nu(b, v1alpha1.PhaseRunning, false), actionRollback, ""},
		{"the old configuration after the upgrade failed", a, a, nu(b, v1alpha1.PhaseFailed, false), actionRollback, ""},
		{"the old configuration after the upgrade succeeded", a, a, nu(b, v1alpha1.PhaseSucceeded, false), 0, "finish that upgrade"},
		{"a new image", a, b, nil, actionStart, ""},
		{"a new image after an earlier upgrade", a, b, nu(a, v1alpha1.PhaseSucceeded, false), actionStart, ""},
		{"a new image after an aborted upgrade", a, b, nu(c, v1alpha1.PhaseAborted, true), actionStart, ""},
		{"the upgrade to it runs", a, b, nu(b, v1alpha1.PhaseRunning, false), actionFollow, ""},
		{"the upgrade to it is not taken up yet", a, b, stale, actionFollow, ""},
		{"the upgrade to it succeeded", a, b, nu(b, v1alpha1.PhaseSucceeded, false), actionFinish, ""},
		{"the upgrade to it failed", a, b, nu(b, v1alpha1.PhaseFailed, false), actionFailed, ""},
		{"the upgrade to it is being aborted", a, b, nu(b, v1alpha1.PhaseRunning, true), 0, "being aborted"},
		{"an upgrade to a third image runs", a, c, nu(b, v1alpha1.PhaseRunning, false), 0, "before another"},
		{"an upgrade to a third image failed", a, c, nu(b, v1alpha1.PhaseFailed, false), 0, "upgrade abort"},
	} {
		got, err := decideUpgrade(tc.from, tc.to, tc.nu)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, %v; want an error containing %q", tc.name, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}
