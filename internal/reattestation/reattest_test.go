package reattestation

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// fastOptions are the controller's options for tests: short intervals (the tests wait for checks, never for
// time).
func fastOptions() Options {
	return Options{Interval: 200 * time.Millisecond, Jitter: 20 * time.Millisecond, Timeout: 2 * time.Second, TaintAfter: 400 * time.Millisecond}
}

// extendPCR changes a measured PCR of the running node, as a component measured after boot would.
func extendPCR(t *testing.T, n *testNode) {
	t.Helper()
	if err := n.tpm.Issuer.Measure(measurements.PCRNodeImage, eventlog.IPL, []byte("a component loaded after the node joined")); err != nil {
		t.Fatal(err)
	}
}

// TestExtendedPCRIsQuarantined is the attack of a node whose measured state changes after it joined (a PCR
// extended): its next evidence fails the current policy, and the others quarantine it: the label it cannot
// remove, the NoExecute taint, the cordon; a healthy node stays trusted throughout.
func TestExtendedPCRIsQuarantined(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	ctl.waitState(t, "worker-1", Trusted)
	if r, ok := c.record(t, "worker-0"); !ok || !r.Trusted(time.Now()) {
		t.Fatalf("worker-0's record: %+v (%v), want trusted with a recent verification time", r, ok)
	}

	extendPCR(t, c.nodes["worker-1"])
	ch := ctl.waitState(t, "worker-1", Failed)
	if !strings.HasPrefix(ch.reason, ReasonMeasurements) {
		t.Fatalf("reason %q, want %s", ch.reason, ReasonMeasurements)
	}
	// The check that found it also quarantined it.
	n := c.nodeObject(t, "worker-1")
	if n.Labels[meshpeers.QuarantineLabel] != ReasonMeasurements || !hasTaint(n, QuarantineTaint, corev1.TaintEffectNoExecute) || !n.Spec.Unschedulable {
		t.Fatalf("worker-1 after failing: labels %v taints %v unschedulable %v, want quarantined", n.Labels, n.Spec.Taints, n.Spec.Unschedulable)
	}
	if r, _ := c.record(t, "worker-1"); r.State != string(Failed) || !strings.HasPrefix(r.Reason, ReasonMeasurements) {
		t.Fatalf("worker-1's record: %+v", r)
	}
	// Failed is final, and the healthy node stays trusted.
	for range 3 {
		ctl.waitCheck(t, "worker-1", func(check) bool { return true })
		if got := ctl.waitCheck(t, "worker-0", func(check) bool { return true }); got.state != Trusted {
			t.Fatalf("the healthy worker: %v", got)
		}
	}
	if got := ctl.waitCheck(t, "worker-1", func(check) bool { return true }); got.state != Failed {
		t.Fatalf("worker-1 left Failed by itself: %v", got)
	}
	if n := c.nodeObject(t, "worker-0"); n.Spec.Unschedulable || hasTaint(n, QuarantineTaint, corev1.TaintEffectNoExecute) || hasTaint(n, UnreachableTaint, corev1.TaintEffectNoSchedule) {
		t.Fatalf("the healthy worker was touched: %v", n.Spec)
	}
}

// TestWrongMeshKeyFails is the attack of a node that answers with evidence bound to another WireGuard key
// than the one it recorded (its mesh traffic would come from a key the cluster did not attest).
func TestWrongMeshKeyFails(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	c.nodes["worker-0"].setMeshKey(newKey(t))
	ch := ctl.waitState(t, "worker-0", Failed)
	if !strings.HasPrefix(ch.reason, ReasonMeshKey) {
		t.Fatalf("reason %q, want %s", ch.reason, ReasonMeshKey)
	}
}

// TestReplayedEvidenceFails is the attack of a node (or the host in its place) that answers with evidence
// it recorded before, genuine but for an old nonce.
func TestReplayedEvidenceFails(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	var recorded []byte
	o := fastOptions()
	o.Fetch = func(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
		if recorded != nil {
			return recorded, nil
		}
		ev, err := verifyservice.FetchGRPCMeshKey(ctx, endpoint, nonce)
		recorded = ev
		return ev, err
	}
	ctl := c.start(t, o)
	ctl.waitState(t, "worker-0", Trusted)
	ch := ctl.waitState(t, "worker-0", Failed)
	if !strings.HasPrefix(ch.reason, ReasonEvidence) {
		t.Fatalf("reason %q, want %s", ch.reason, ReasonEvidence)
	}
}

// TestAnotherNodesEvidenceFails is the attack of a node that relays the controller's nonce to a healthy
// node and answers with that node's fresh, genuine evidence (or claims the healthy node's address).
func TestAnotherNodesEvidenceFails(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	o := fastOptions()
	healthy := c.nodes["worker-0"].ip
	o.Fetch = func(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
		// Every node's request ends up at worker-0.
		_, port, _ := strings.Cut(endpoint, ":")
		return verifyservice.FetchGRPCMeshKey(ctx, healthy+":"+port, nonce)
	}
	ctl := c.start(t, o)
	ch := ctl.waitState(t, "worker-1", Failed)
	if !strings.HasPrefix(ch.reason, ReasonIdentity) {
		t.Fatalf("reason %q, want %s", ch.reason, ReasonIdentity)
	}
	if got := ctl.waitCheck(t, "worker-0", func(check) bool { return true }); got.state == Failed {
		t.Fatalf("worker-0 (its own evidence): %v", got)
	}
}

// TestNoFalseQuarantine: a node whose answers are delayed beyond the timeout, or that does not answer at
// all, becomes unreachable and, after TaintAfter, is tainted NoSchedule, never Failed, never quarantined.
func TestNoFalseQuarantine(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	o := fastOptions()
	o.Timeout = 50 * time.Millisecond
	var slow = make(chan struct{})
	o.Fetch = func(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
		select {
		case <-slow:
			return verifyservice.FetchGRPCMeshKey(ctx, endpoint, nonce)
		default:
		}
		<-ctx.Done() // the node takes longer than the timeout
		return nil, ctx.Err()
	}
	ctl := c.start(t, o)
	for {
		ch := ctl.waitCheck(t, "worker-0", func(check) bool { return true })
		if ch.state == Failed {
			t.Fatalf("a node that did not answer is Failed: %v", ch)
		}
		if n := c.nodeObject(t, "worker-0"); hasTaint(n, UnreachableTaint, corev1.TaintEffectNoSchedule) {
			if _, q := n.Labels[meshpeers.QuarantineLabel]; q || n.Spec.Unschedulable || hasTaint(n, QuarantineTaint, corev1.TaintEffectNoExecute) {
				t.Fatalf("an unreachable node was quarantined: %v", n)
			}
			break
		}
	}
	// It answers again: trusted, the NoSchedule taint goes.
	close(slow)
	ctl.waitState(t, "worker-0", Trusted)
	if n := c.nodeObject(t, "worker-0"); hasTaint(n, UnreachableTaint, corev1.TaintEffectNoSchedule) {
		t.Fatal("the unreachable taint stayed on a trusted node")
	}
}

// TestQuarantinedNodeCannotLiftIt is the quarantined node's attack with its own kubelet's credentials:
// removing the label, the taint, the cordon, or deleting its Node object to register again without them. The
// API server refuses each (NodeRestriction, and the admission policy of Manifests).
func TestQuarantinedNodeCannotLiftIt(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	waitAdmissionPolicy(t, c)
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-1", Trusted)
	extendPCR(t, c.nodes["worker-1"])
	ctl.waitState(t, "worker-1", Failed)
	kubelet := c.kubelet(t, "worker-1")
	ctx := t.Context()
	path := "/api/v1/nodes/worker-1"
	for name, patch := range map[string]map[string]any{
		"remove the label": {"metadata": map[string]any{"labels": map[string]any{meshpeers.QuarantineLabel: nil}}},
		"remove the taint": {"spec": map[string]any{"taints": []any{}}},
		"uncordon":         {"spec": map[string]any{"unschedulable": false}},
	} {
		err := kubelet.Do(ctx, http.MethodPatch, path, kubeapi.MergePatch, patch, nil)
		if !kubeapi.IsStatus(err, http.StatusForbidden) {
			t.Errorf("the quarantined node's kubelet tries to %s: %v, want 403 Forbidden", name, err)
		}
	}
	if err := kubelet.Do(ctx, http.MethodDelete, path, "", nil, nil); !kubeapi.IsStatus(err, http.StatusForbidden) {
		t.Errorf("the quarantined node's kubelet deletes its Node object: %v, want 403 Forbidden", err)
	}
	n := c.nodeObject(t, "worker-1")
	if _, q := n.Labels[meshpeers.QuarantineLabel]; !q || !n.Spec.Unschedulable || !hasTaint(n, QuarantineTaint, corev1.TaintEffectNoExecute) {
		t.Fatalf("worker-1 lifted its quarantine: %v %v", n.Labels, n.Spec)
	}
	// Creating it again under its name (after an administrator deleted it) keeps the quarantine's mark off
	// only if NodeRestriction let the kubelet set the label itself, which it does not; and it may create no
	// Node of another name.
	for _, name := range []string{"worker-1-again", "worker-0"} {
		obj := map[string]any{"metadata": map[string]any{"name": name}}
		if err := kubelet.Do(ctx, http.MethodPost, "/api/v1/nodes", "", obj, nil); !kubeapi.IsStatus(err, http.StatusForbidden) && !kubeapi.IsStatus(err, http.StatusConflict) {
			t.Errorf("the quarantined node's kubelet creates Node %s: %v, want 403 Forbidden", name, err)
		}
	}
}

// waitAdmissionPolicy waits until the API server enforces the quarantine's admission policy (it loads new
// policies asynchronously): a quarantined probe node's kubelet tries to uncordon it until that is refused.
func waitAdmissionPolicy(t *testing.T, c *cluster) {
	t.Helper()
	ctx := t.Context()
	probe := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "probe", Labels: map[string]string{meshpeers.QuarantineLabel: "probe"}}, Spec: corev1.NodeSpec{Unschedulable: true}}
	if _, err := c.admin.CoreV1().Nodes().Create(ctx, probe, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubelet := c.kubelet(t, "probe")
	for {
		err := kubelet.Do(ctx, http.MethodPatch, "/api/v1/nodes/probe", kubeapi.MergePatch, map[string]any{"spec": map[string]any{"unschedulable": false}}, nil)
		if kubeapi.IsStatus(err, http.StatusForbidden) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		// Not yet enforced: cordon the probe again and retry after the policy informer's next sync.
		if err := c.adminAPI.Do(ctx, http.MethodPatch, "/api/v1/nodes/probe", kubeapi.MergePatch, map[string]any{"spec": map[string]any{"unschedulable": true}}, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := c.admin.CoreV1().Nodes().Delete(ctx, "probe", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestReleaseAfterRejoin: the join service's Release, after an attested rejoin, lifts the quarantine, and the
// controller attests the node from scratch.
func TestReleaseAfterRejoin(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	c.nodes["worker-0"].setMeshKey(newKey(t))
	ctl.waitState(t, "worker-0", Failed)
	// The node rejoins: a fresh boot, a fresh key it records.
	key := newKey(t)
	c.nodes["worker-0"].setMeshKey(key)
	if err := c.adminAPI.Do(t.Context(), http.MethodPatch, "/api/v1/nodes/worker-0", kubeapi.MergePatch, map[string]any{"metadata": map[string]any{"annotations": map[string]string{meshpeers.KeyAnnotation: key.String()}}}, nil); err != nil {
		t.Fatal(err)
	}
	released, err := Release(t.Context(), c.admin, "worker-0")
	if err != nil || !released {
		t.Fatalf("Release: %v %v", released, err)
	}
	ctl.waitState(t, "worker-0", Trusted)
	n := c.nodeObject(t, "worker-0")
	if _, q := n.Labels[meshpeers.QuarantineLabel]; q || n.Spec.Unschedulable || hasTaint(n, QuarantineTaint, corev1.TaintEffectNoExecute) {
		t.Fatalf("after Release: %v %v", n.Labels, n.Spec)
	}
}

// TestKeyServiceRefusesQuarantinedNode is the quarantined node's attack on its keys: its disk key asked for
// on its behalf, and any key asked for by the node itself (a quarantined control-plane node's join service),
// from the key service, which checks the mark on the Node object before it hands out a key.
func TestKeyServiceRefusesQuarantinedNode(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-1", Trusted)

	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	ks := keyservice.New(d, slog.New(slog.DiscardHandler))
	ks.RefuseQuarantined(func(ctx context.Context, node string) (bool, error) { return Quarantined(ctx, c.admin, node) })
	members, err := c.currentPolicy()
	if err != nil {
		t.Fatal(err)
	}
	// The key service runs on worker-0's TPM; its callers are the cluster's members.
	srv, err := keyservice.NewGRPCServer(ks, c.nodes["worker-0"].tpm.Issuer, []attestation.Validator{members})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	client := func(n *testNode) *keyservice.Client {
		kc, err := keyservice.NewClient(ln.Addr().String(), n.tpm.Issuer, []attestation.Validator{members})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kc.Close() })
		return kc
	}
	const disk = "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	if _, err := client(c.nodes["worker-0"]).GetDiskKey(t.Context(), disk, "worker-1", 32); err != nil {
		t.Fatalf("worker-1's disk key while it is trusted: %v", err)
	}
	// worker-1 asks for a key itself, over its own aTLS connection, before its measured state changes.
	own := client(c.nodes["worker-1"])
	if _, err := own.GetDataKey(t.Context(), "data-key/x", 32); err != nil {
		t.Fatal(err)
	}

	extendPCR(t, c.nodes["worker-1"])
	ctl.waitState(t, "worker-1", Failed)
	if _, err := client(c.nodes["worker-0"]).GetDiskKey(t.Context(), disk, "worker-1", 32); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the quarantined node's disk key: %v, want PermissionDenied", err)
	}
	// The open connection of its attested handshake from before gets nothing either.
	if _, err := own.GetDataKey(t.Context(), "data-key/x", 32); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a key asked for by the quarantined node: %v, want PermissionDenied", err)
	}
	if _, err := client(c.nodes["worker-0"]).GetDataKey(t.Context(), "data-key/x", 32); err != nil {
		t.Fatalf("the healthy node: %v", err)
	}
}
