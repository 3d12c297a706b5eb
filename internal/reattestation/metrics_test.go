package reattestation

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestMetricsChecksPerNode counts each node's checks by outcome, and forgets a node's counters with the node.
func TestMetricsChecksPerNode(t *testing.T) {
	m := NewMetrics()
	m.observe("worker-0", verified, "", time.Millisecond)
	m.observe("worker-0", verified, "", time.Millisecond)
	m.observe("worker-0", unreachable, "dial tcp: refused", time.Millisecond)
	m.observe("worker-1", wrong, "measurements: PCR 4", time.Millisecond)
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		return string(body)
	}
	out := scrape()
	for _, want := range []string{
		`constellation_reattest_checks_total{node="worker-0",outcome="verified"} 2`,
		`constellation_reattest_checks_total{node="worker-0",outcome="unreachable"} 1`,
		`constellation_reattest_checks_total{node="worker-1",outcome="wrong"} 1`,
		`constellation_reattest_check_latency_seconds_count 4`,
		`constellation_reattest_failures_total{reason="measurements"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s:\n%s", want, out)
		}
	}
	m.forget("worker-0")
	if out := scrape(); strings.Contains(out, `node="worker-0"`) {
		t.Errorf("a forgotten node's figures remain:\n%s", out)
	}
}
