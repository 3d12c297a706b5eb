package reattestation

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
)

// statusOf is what `constellation status` shows as the node's continuous attestation, read as status reads
// it (the administrator's credentials, reattestation.Records and Describe).
func (c *cluster) statusOf(t *testing.T, name string) string {
	t.Helper()
	records, err := Records(t.Context(), c.adminAPI)
	if err != nil {
		t.Fatal(err)
	}
	n := c.nodeObject(t, name)
	return Describe(name, n.UID, n.Labels, records[name], time.Now())
}

// TestNodeCannotForgeItsRecord is the attack of a node that failed its re-attestation (enforcement paused, so
// not quarantined) and, with its own kubelet's credentials, forges a "trusted, verified just now" record: on
// its Node object (the annotations the controller used to write there, which a kubelet may write), and in the
// record itself: creating, replacing, patching or deleting its Lease in RecordNamespace, or creating one for
// another node; or a release, as if the join service had admitted it again. Whatever the API server accepted,
// status and the controller still see the node failed.
func TestNodeCannotForgeItsRecord(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	pause := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ControlConfigMap, Namespace: ControlNamespace}, Data: map[string]string{EnforcementKey: Paused}}
	if _, err := c.admin.CoreV1().ConfigMaps(ControlNamespace).Create(t.Context(), pause, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	ctl.waitState(t, "worker-1", Trusted)
	extendPCR(t, c.nodes["worker-0"])
	ctl.waitState(t, "worker-0", Failed)
	// The check that found it also recorded it (the record is written before OnCheck).
	if got := c.statusOf(t, "worker-0"); !strings.HasPrefix(got, "failed "+ReasonMeasurements) {
		t.Fatalf("status of the failed node: %q", got)
	}

	ctx := t.Context()
	kubelet := c.kubelet(t, "worker-0")
	node := c.nodeObject(t, "worker-0")
	now := time.Now().UTC()
	forged := map[string]string{
		StateAnnotation:   string(Trusted),
		NodeUIDAnnotation: string(node.UID),
		// An image, as if it had proved one (the upgrade controller trusts the image of a Trusted record).
		AttestedImageAnnotation: "sha256:" + strings.Repeat("2", 64),
		// A release, as if the join service had admitted it again.
		ReleasedAnnotation: now.Format(time.RFC3339Nano),
		// The annotation of the last verification when the record was on the Node object.
		"constellation.dev/attestation-verified": now.Format(time.RFC3339),
	}
	// On its own Node object: the API server accepts it (a kubelet may write its Node's annotations), and it
	// must not matter.
	if err := kubelet.Do(ctx, http.MethodPatch, "/api/v1/nodes/worker-0", kubeapi.MergePatch, map[string]any{"metadata": map[string]any{"annotations": forged}}, nil); err != nil {
		t.Fatalf("the kubelet writes its own Node's annotations: %v", err)
	}
	validity := int32(3600)
	lease := func(name string) *coordinationv1.Lease {
		return &coordinationv1.Lease{
			TypeMeta:   metav1.TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: RecordNamespace, Annotations: forged},
			Spec:       coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: now}, LeaseDurationSeconds: &validity},
		}
	}
	records := "/apis/coordination.k8s.io/v1/namespaces/" + RecordNamespace + "/leases"
	current, err := c.admin.CoordinationV1().Leases(RecordNamespace).Get(ctx, "worker-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	replaced := lease("worker-0")
	replaced.ResourceVersion = current.ResourceVersion
	for what, try := range map[string]func() error{
		"replace its record": func() error {
			return kubelet.Do(ctx, http.MethodPut, records+"/worker-0", "", replaced, nil)
		},
		"patch its record": func() error {
			return kubelet.Do(ctx, http.MethodPatch, records+"/worker-0", kubeapi.MergePatch, map[string]any{"metadata": map[string]any{"annotations": forged}}, nil)
		},
		"delete its record": func() error { return kubelet.Do(ctx, http.MethodDelete, records+"/worker-0", "", nil, nil) },
		"create a record":   func() error { return kubelet.Do(ctx, http.MethodPost, records, "", lease("worker-0"), nil) },
		"create another node's record": func() error {
			return kubelet.Do(ctx, http.MethodPost, records, "", lease("worker-2"), nil)
		},
		"read the records": func() error { return kubelet.Do(ctx, http.MethodGet, records, "", nil, nil) },
	} {
		if err := try(); !kubeapi.IsStatus(err, http.StatusForbidden) {
			t.Errorf("the failed node's kubelet tries to %s: %v, want 403 Forbidden", what, err)
		}
	}
	// Nor may it make the records' namespace its own (deleting it, or creating it anew after it was deleted).
	if err := kubelet.Do(ctx, http.MethodDelete, "/api/v1/namespaces/"+RecordNamespace, "", nil, nil); !kubeapi.IsStatus(err, http.StatusForbidden) {
		t.Errorf("the failed node's kubelet deletes the records' namespace: %v, want 403 Forbidden", err)
	}

	// Status still shows it failed, and the controller's next check still finds it so.
	if got := c.statusOf(t, "worker-0"); !strings.HasPrefix(got, "failed "+ReasonMeasurements) || strings.Contains(got, "trusted") {
		t.Fatalf("status of the node after its forgery: %q, want failed", got)
	}
	ctl.waitCheck(t, "worker-0", func(ch check) bool { return true })
	if got := c.statusOf(t, "worker-0"); !strings.HasPrefix(got, "failed "+ReasonMeasurements) {
		t.Fatalf("status after the next check: %q, want failed", got)
	}
	if got := c.statusOf(t, "worker-1"); !strings.HasPrefix(got, "trusted") {
		t.Fatalf("status of the healthy node: %q", got)
	}
	if r, ok := c.record(t, "worker-0"); !ok || r.Image != "" || r.TrustedImage(time.Now()) != "" {
		t.Fatalf("the failed node's record after its forgery: %+v", r)
	}
}

// TestNewLeaderContinuesFromRecords: a controller that takes over (a change of leader) starts from the
// records of the one before. A node that failed (its evidence bound another mesh key) while enforcement was
// paused, and whose evidence is right again, stays Failed: only an attested rejoin lifts that, not a new
// leader that would attest it from scratch.
func TestNewLeaderContinuesFromRecords(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	pause := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ControlConfigMap, Namespace: ControlNamespace}, Data: map[string]string{EnforcementKey: Paused}}
	if _, err := c.admin.CoreV1().ConfigMaps(ControlNamespace).Create(t.Context(), pause, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := c.startStoppable(t, fastOptions())
	first.waitState(t, "worker-0", Trusted)
	first.waitState(t, "worker-1", Trusted)
	key := c.nodes["worker-0"].key
	c.nodes["worker-0"].setMeshKey(newKey(t))
	first.waitState(t, "worker-0", Failed)
	c.nodes["worker-0"].setMeshKey(key)
	first.waitCheck(t, "worker-0", func(ch check) bool { return ch.state == Failed })
	first.stop()

	next := c.start(t, fastOptions())
	if ch := next.waitCheck(t, "worker-0", func(check) bool { return true }); ch.state != Failed || !strings.HasPrefix(ch.reason, ReasonMeshKey) {
		t.Fatalf("the new leader's first check of the failed node: %+v, want Failed (%s)", ch, ReasonMeshKey)
	}
	if ch := next.waitCheck(t, "worker-1", func(check) bool { return true }); ch.state != Trusted {
		t.Fatalf("the new leader's first check of the healthy node: %+v", ch)
	}
}

// TestRecordOfDeletedNode: the record of a deleted node goes with it, and a record left from an earlier Node
// object of the same name (another UID) is no record of the new one: neither for status nor for the
// controller.
func TestRecordOfDeletedNode(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	ctx := t.Context()
	ctl := c.startStoppable(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	leases := c.admin.CoordinationV1().Leases(RecordNamespace)
	w, err := leases.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=worker-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := c.admin.CoreV1().Nodes().Delete(ctx, "worker-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for ev := range w.ResultChan() {
		if ev.Type == watch.Deleted {
			break
		}
	}
	if ctx.Err() != nil {
		t.Fatal(ctx.Err())
	}
	ctl.stop()

	// A record of an earlier worker-0, failed (as if the deletion had been missed).
	old := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "worker-0", Namespace: RecordNamespace, Annotations: map[string]string{
		NodeUIDAnnotation: "an-earlier-node", StateAnnotation: string(Failed) + " " + ReasonMeasurements}}}
	if _, err := leases.Create(ctx, old, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.register(t, c.nodes["worker-0"], false)
	if got := c.statusOf(t, "worker-0"); got != "pending (no record)" {
		t.Fatalf("status of the new worker-0 with the earlier one's record: %q", got)
	}
	next := c.start(t, fastOptions())
	if ch := next.waitCheck(t, "worker-0", func(check) bool { return true }); ch.state != Trusted {
		t.Fatalf("the new worker-0 took the earlier one's record: %+v", ch)
	}
	if r, ok := c.record(t, "worker-0"); !ok || r.State != string(Trusted) {
		t.Fatalf("the new worker-0's record: %+v %v", r, ok)
	}
	if n := c.nodeObject(t, "worker-0"); n.Labels[meshpeers.QuarantineLabel] != "" {
		t.Fatal("the new worker-0 was quarantined by the earlier one's record")
	}
}

// stoppable is a controller the test stops before it ends.
type stoppable struct {
	*controller
	stop func()
}

// startStoppable runs a controller like start, with a stop that returns once it has stopped.
func (c *cluster) startStoppable(t *testing.T, o Options) stoppable {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctl, done := c.run(t, ctx, o)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stoppable{ctl, stop}
}

// TestForgedReleaseFailsAgain: a quarantined node forges its release after an attested rejoin, with its own
// kubelet's credentials: the "rejoined" state on its Node object (where the record used to be) and a release in
// its record. The first changes nothing, the second is refused; it stays Failed and quarantined.
func TestForgedReleaseFailsAgain(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1", "worker-2"}, "worker-0", "worker-1", "worker-2")
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	ctl.waitState(t, "worker-1", Trusted)
	ctl.waitState(t, "worker-2", Trusted)
	// worker-2 is a control-plane node; quarantining one of three keeps etcd's quorum.
	extendPCR(t, c.nodes["worker-2"])
	ctl.waitState(t, "worker-2", Failed)
	kubelet := c.kubelet(t, "worker-2")
	ctx := t.Context()
	release := map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		StateAnnotation: ReleasedState, ReleasedAnnotation: time.Now().UTC().Format(time.RFC3339Nano)}}}
	if err := kubelet.Do(ctx, http.MethodPatch, "/api/v1/nodes/worker-2", kubeapi.MergePatch, release, nil); err != nil {
		t.Fatal(err)
	}
	path := "/apis/coordination.k8s.io/v1/namespaces/" + RecordNamespace + "/leases/worker-2"
	if err := kubelet.Do(ctx, http.MethodPatch, path, kubeapi.MergePatch, release, nil); !kubeapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("the quarantined node's kubelet writes a release into its record: %v, want 403 Forbidden", err)
	}
	// Two more checks: still Failed, still quarantined.
	for range 2 {
		if ch := ctl.waitCheck(t, "worker-2", func(check) bool { return true }); ch.state != Failed || !strings.HasPrefix(ch.reason, ReasonMeasurements) {
			t.Fatalf("after the forged release: %+v", ch)
		}
	}
	if n := c.nodeObject(t, "worker-2"); n.Labels[meshpeers.QuarantineLabel] == "" {
		t.Fatalf("worker-2 is not quarantined: %v", n.Labels)
	}
	if got := c.statusOf(t, "worker-2"); !strings.HasPrefix(got, "QUARANTINED") {
		t.Fatalf("status of worker-2: %q", got)
	}
	if r, _ := c.record(t, "worker-2"); r.State != string(Failed) || r.Released != "" {
		t.Fatalf("worker-2's record: %+v", r)
	}
}
