package reattestation

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// SoakEnv sets how long TestSoakNoFalseQuarantine runs (a Go duration); unset, it is skipped (`make
// soak-reattest` runs it for 30 minutes).
const SoakEnv = "REATTEST_SOAK"

// TestSoakNoFalseQuarantine runs the controller against honest nodes for a long time (SoakEnv): a real API
// server, six swtpm nodes behind real verification services, checks every second, a network that drops or
// delays one answer in ten beyond the timeout, the policy reloaded now and then, and the controller handed
// over to a new leader every few minutes. No honest node may ever be Failed or quarantined.
func TestSoakNoFalseQuarantine(t *testing.T) {
	soak := os.Getenv(SoakEnv)
	if soak == "" {
		t.Skipf("a soak test: set %s to its duration (make soak-reattest)", SoakEnv)
	}
	length, err := time.ParseDuration(soak)
	if err != nil {
		t.Fatalf("%s=%q: %v", SoakEnv, soak, err)
	}
	names := []string{"control-plane-0", "control-plane-1", "control-plane-2", "worker-0", "worker-1", "worker-2"}
	c := newCluster(t, names, names[:3]...)
	ctx := t.Context()

	// Every change of a Node object: a quarantine label on any of them fails the soak.
	w, err := c.admin.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var marked atomic.Value
	go func() {
		for ev := range w.ResultChan() {
			if n, ok := ev.Object.(*corev1.Node); ok && ev.Type != watch.Deleted {
				if _, q := n.Labels[meshpeers.QuarantineLabel]; q || n.Spec.Unschedulable {
					marked.CompareAndSwap(nil, n.Name+": "+n.Labels[meshpeers.QuarantineLabel])
				}
			}
		}
	}()

	o := fastOptions()
	o.Interval, o.Jitter, o.Timeout, o.TaintAfter = time.Second, 200*time.Millisecond, 500*time.Millisecond, 10*time.Second
	var dropped atomic.Int64
	o.Fetch = func(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
		switch rand.IntN(20) {
		case 0: // lost
			dropped.Add(1)
			return nil, errors.New("connection reset (soak: a lost answer)")
		case 1: // later than the timeout
			dropped.Add(1)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return verifyservice.FetchGRPCMeshKey(ctx, endpoint, nonce)
	}
	counts := map[State]int{}
	end := time.Now().Add(length)
	for term := 0; time.Now().Before(end); term++ {
		ctl := c.startStoppable(t, o)
		termEnd := time.Now().Add(3 * time.Minute)
		for time.Now().Before(termEnd) && time.Now().Before(end) {
			select {
			case ch := <-ctl.checks:
				counts[ch.state]++
				if ch.state == Failed {
					t.Fatalf("an honest node failed its re-attestation: %+v", ch)
				}
				if m := marked.Load(); m != nil {
					t.Fatalf("an honest node was quarantined or cordoned: %v", m)
				}
				if ch.state == Trusted && counts[Trusted]%1000 == 0 {
					// The policy reloaded (the join configuration read again): the same policy.
					c.setPolicy(t, c.base)
				}
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			}
		}
		ctl.stop()
		t.Logf("term %d done: %v checks by state, %d answers lost or late", term, counts, dropped.Load())
	}
	for _, name := range names {
		if got := c.statusOf(t, name); strings.HasPrefix(got, string(Failed)) || strings.HasPrefix(got, "QUARANTINED") {
			t.Errorf("status of honest %s after the soak: %q", name, got)
		}
	}
	if counts[Trusted] == 0 {
		t.Fatal("no node was ever trusted")
	}
	t.Logf("soak of %v: %v checks by state, %d answers lost or late, no false quarantine", length, counts, dropped.Load())
}
