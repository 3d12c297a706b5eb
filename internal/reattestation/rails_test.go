package reattestation

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/constellation-dev/constellation/internal/meshpeers"
)

// TestStateMachine walks a node's record through the outcomes of its checks.
func TestStateMachine(t *testing.T) {
	tm := timing{Interval: 10 * time.Second, Jitter: 2 * time.Second, RetryBase: time.Second, TaintAfter: time.Minute}
	t0 := time.Unix(1000, 0)
	s := nodeState{State: Pending}
	s = s.observe(verified, "", t0, tm)
	if s.State != Trusted || s.LastVerified != t0 {
		t.Fatalf("after evidence: %+v", s)
	}
	// Misses within two intervals of the last verification keep it Trusted, with backoff.
	s = s.observe(unreachable, "timeout", t0.Add(11*time.Second), tm)
	if s.State != Trusted || s.Misses != 1 || s.next(tm) != time.Second {
		t.Fatalf("one miss: %+v next %v", s, s.next(tm))
	}
	s = s.observe(unreachable, "timeout", t0.Add(12*time.Second), tm)
	if s.next(tm) != 2*time.Second {
		t.Fatalf("two misses: next %v", s.next(tm))
	}
	s = s.observe(unreachable, "timeout", t0.Add(21*time.Second), tm)
	if s.State != Unreachable {
		t.Fatalf("no evidence for over two intervals: %+v", s)
	}
	for i := range 10 {
		s = s.observe(unreachable, "timeout", t0.Add(time.Duration(22+i)*time.Second), tm)
	}
	if s.next(tm) != tm.Interval {
		t.Fatalf("backoff beyond the interval: %v", s.next(tm))
	}
	if s.taintUnreachable(t0.Add(70*time.Second), tm) {
		t.Fatal("tainted before TaintAfter since the first miss")
	}
	if !s.taintUnreachable(t0.Add(72*time.Second), tm) {
		t.Fatal("not tainted after TaintAfter")
	}
	// Any number of misses never makes it Failed; evidence makes it Trusted again.
	if s.State == Failed {
		t.Fatal("misses made the node Failed")
	}
	s = s.observe(verified, "", t0.Add(80*time.Second), tm)
	if s.State != Trusted || s.Misses != 0 || s.taintUnreachable(t0.Add(200*time.Second), tm) {
		t.Fatalf("evidence again: %+v", s)
	}
	// Wrong evidence is final: neither evidence nor misses leave Failed.
	s = s.observe(wrong, "measurements: PCR 4", t0.Add(90*time.Second), tm)
	for _, o := range []outcome{verified, unreachable, verified} {
		s = s.observe(o, "", t0.Add(100*time.Second), tm)
	}
	if s.State != Failed || s.Reason != "measurements: PCR 4" {
		t.Fatalf("Failed left: %+v", s)
	}
	// A Trusted record goes stale without checks.
	s = nodeState{State: Trusted, LastVerified: t0}.stale(t0.Add(21*time.Second), tm)
	if s.State != Unreachable || s.UnreachableSince != t0 {
		t.Fatalf("stale: %+v", s)
	}
	// Jitter stays within ±Jitter/2.
	for range 100 {
		if d := (nodeState{State: Trusted}).next(tm); d < 9*time.Second || d > 11*time.Second {
			t.Fatalf("jittered interval %v", d)
		}
	}
}

func TestQuorumWithout(t *testing.T) {
	for _, tc := range []struct {
		healthyOthers, total int
		ok                   bool
	}{{0, 1, false}, {1, 2, false}, {1, 3, false}, {2, 3, true}, {2, 4, false}, {3, 4, true}, {3, 5, true}, {2, 5, false}} {
		if got := quorumWithout(tc.healthyOthers, tc.total); got != tc.ok {
			t.Errorf("quorumWithout(%d, %d) = %v, want %v", tc.healthyOthers, tc.total, got, tc.ok)
		}
	}
}

func TestLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"measurements: PCR 4 differs": "measurements",
		"cluster-id: x":               "cluster-id",
		"weird reason with spaces":    "weird-reason-with-spaces",
		strings.Repeat("a", 100):      strings.Repeat("a", 63),
	} {
		if got := labelValue(in); got != want {
			t.Errorf("labelValue(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestControlPlaneQuorumRail: the only control-plane node fails, and etcd would lose its quorum: it is not
// quarantined; the controller alerts (log and AlertAnnotation) instead.
func TestControlPlaneQuorumRail(t *testing.T) {
	c := newCluster(t, []string{"control-plane-0"}, "control-plane-0")
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "control-plane-0", Trusted)
	extendPCR(t, c.nodes["control-plane-0"])
	ctl.waitState(t, "control-plane-0", Failed)
	n := c.nodeObject(t, "control-plane-0")
	if _, q := n.Labels[meshpeers.QuarantineLabel]; q || n.Spec.Unschedulable {
		t.Fatalf("the only control-plane node was quarantined: %v %v", n.Labels, n.Spec)
	}
	if r, _ := c.record(t, "control-plane-0"); !strings.Contains(r.Alert, "quorum") {
		t.Fatalf("no alert in the node's record: %+v", r)
	}
}

// TestPauseRail: with enforcement paused, a failed node is marked and alerted, not quarantined; when the
// switch is turned back, it is quarantined.
func TestPauseRail(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ControlConfigMap, Namespace: ControlNamespace}, Data: map[string]string{EnforcementKey: Paused}}
	if _, err := c.admin.CoreV1().ConfigMaps(ControlNamespace).Create(t.Context(), cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctl := c.start(t, fastOptions())
	ctl.waitState(t, "worker-0", Trusted)
	extendPCR(t, c.nodes["worker-0"])
	ctl.waitState(t, "worker-0", Failed)
	n := c.nodeObject(t, "worker-0")
	if r, _ := c.record(t, "worker-0"); !strings.Contains(r.Alert, "paused") {
		t.Fatalf("paused enforcement: record %+v", r)
	}
	if _, q := n.Labels[meshpeers.QuarantineLabel]; q {
		t.Fatalf("paused enforcement: labels %v", n.Labels)
	}
	cm.Data[EnforcementKey] = "enforcing"
	if _, err := c.admin.CoreV1().ConfigMaps(ControlNamespace).Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		ctl.waitState(t, "worker-0", Failed)
		if n := c.nodeObject(t, "worker-0"); n.Labels[meshpeers.QuarantineLabel] != "" {
			break
		}
	}
}

// TestOneQuarantinePerInterval: two nodes fail at once; the second is quarantined only an interval after the
// first, so that a wrong policy cannot empty the cluster at once.
func TestOneQuarantinePerInterval(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1", "worker-2"})
	o := fastOptions()
	o.Interval = 3 * time.Second
	ctl := c.start(t, o)
	for _, n := range []string{"worker-0", "worker-1", "worker-2"} {
		ctl.waitState(t, n, Trusted)
	}
	extendPCR(t, c.nodes["worker-0"])
	extendPCR(t, c.nodes["worker-1"])
	// Both are checked now, within one interval.
	ctl.mu.Lock()
	for _, n := range []string{"worker-0", "worker-1"} {
		select {
		case ctl.notify[n] <- struct{}{}:
		default: // a check is due already
		}
	}
	ctl.mu.Unlock()
	// The first check of each that finds it Failed (waitState would skip the other's).
	for seen := map[string]bool{}; !seen["worker-0"] || !seen["worker-1"]; {
		select {
		case ch := <-ctl.checks:
			if ch.state == Failed {
				seen[ch.node] = true
			}
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	var quarantined, deferred []string
	for _, name := range []string{"worker-0", "worker-1"} {
		n := c.nodeObject(t, name)
		if n.Labels[meshpeers.QuarantineLabel] != "" {
			quarantined = append(quarantined, name)
		} else if r, _ := c.record(t, name); strings.Contains(r.Alert, "deferred") {
			deferred = append(deferred, name)
		}
	}
	if len(quarantined) != 1 || len(deferred) != 1 {
		t.Fatalf("after both failed at once: quarantined %v, deferred %v; want one each", quarantined, deferred)
	}
	// The deferred one follows an interval later.
	for {
		ctl.waitCheck(t, deferred[0], func(check) bool { return true })
		if n := c.nodeObject(t, deferred[0]); n.Labels[meshpeers.QuarantineLabel] != "" {
			break
		}
	}
	if n := c.nodeObject(t, "worker-2"); n.Labels[meshpeers.QuarantineLabel] != "" {
		t.Fatal("the healthy node was quarantined")
	}
}

// TestOneActiveController: two controllers (the join service on two control-plane nodes) elect one leader by
// the Lease; only it checks nodes; when it stops, the other takes over.
func TestOneActiveController(t *testing.T) {
	c := newCluster(t, []string{"worker-0"})
	type tagged struct{ by, node string }
	checks := make(chan tagged, 1024)
	run := func(id string) context.CancelFunc {
		o := fastOptions()
		o.Client, o.Policy, o.Port = c.admin, c.currentPolicy, c.port
		o.OnCheck = func(node string, _ State, _ string) { checks <- tagged{id, node} }
		o.Log = slog.New(slog.DiscardHandler)
		ctrl, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := RunElected(ctx, ctrl, id); err != nil {
				t.Error(err)
			}
		}()
		stop := func() { cancel(); <-done }
		t.Cleanup(stop)
		return stop
	}
	stopA := run("control-plane-a")
	first := <-checks
	run("control-plane-b")
	for range 10 {
		if ch := <-checks; ch.by != first.by {
			t.Fatalf("checks by %s and %s at once", first.by, ch.by)
		}
	}
	if first.by != "control-plane-a" {
		t.Fatalf("the first controller's checks came from %s", first.by)
	}
	stopA()
	// Checks of A already reported may still be queued; then B takes over.
	for ch := range checks {
		if ch.by == "control-plane-b" {
			break
		}
	}
}
