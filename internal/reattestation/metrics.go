package reattestation

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// MetricsPort is the port on which the join service serves the controller's metrics, on the node's loopback
// address only.
const MetricsPort = 9096

// Metrics are the controller's figures in Prometheus' text format: per node the age of its last verified
// evidence, its state and its checks by outcome; the latency of checks; failures by reason; quarantines.
type Metrics struct {
	reg         *prometheus.Registry
	age         *prometheus.GaugeVec
	state       *prometheus.GaugeVec
	checks      *prometheus.CounterVec
	latency     prometheus.Histogram
	failures    *prometheus.CounterVec
	quarantines prometheus.Counter

	mu       sync.Mutex
	verified map[string]time.Time
}

// NewMetrics returns the controller's metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		age: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "constellation_reattest_attestation_age_seconds",
			Help: "Seconds since the node's evidence last verified (absent: never since the controller started).",
		}, []string{"node"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "constellation_reattest_node_state",
			Help: "1 for the node's current attestation state.",
		}, []string{"node", "state"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "constellation_reattest_checks_total",
			Help: "Checks of the node since the controller started following it, by outcome (verified, unreachable, wrong).",
		}, []string{"node", "outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "constellation_reattest_check_latency_seconds",
			Help:    "Duration of one check: evidence fetched and validated.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "constellation_reattest_failures_total",
			Help: "Checks that did not verify, by reason (unreachable, or why the evidence was wrong).",
		}, []string{"reason"}),
		quarantines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "constellation_reattest_quarantines_total",
			Help: "Nodes quarantined.",
		}),
		verified: map[string]time.Time{},
	}
	m.reg.MustRegister(m.age, m.state, m.checks, m.latency, m.failures, m.quarantines)
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		m.refreshAges(time.Now())
		return m.reg.Gather()
	}), promhttp.HandlerOpts{})
}

func (m *Metrics) refreshAges(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for node, t := range m.verified {
		m.age.WithLabelValues(node).Set(now.Sub(t).Seconds())
	}
}

func (m *Metrics) observe(node string, o outcome, reason string, d time.Duration) {
	if m == nil {
		return
	}
	m.latency.Observe(d.Seconds())
	m.checks.WithLabelValues(node, o.String()).Inc()
	switch o {
	case unreachable:
		m.failures.WithLabelValues("unreachable").Inc()
	case wrong:
		r, _, _ := strings.Cut(reason, ":")
		m.failures.WithLabelValues(r).Inc()
	case verified:
		m.mu.Lock()
		m.verified[node] = time.Now()
		m.mu.Unlock()
	}
}

func (m *Metrics) setState(node string, rec nodeState) {
	if m == nil {
		return
	}
	for _, s := range []State{Pending, Trusted, Unreachable, Failed} {
		v := 0.0
		if s == rec.State {
			v = 1
		}
		m.state.WithLabelValues(node, string(s)).Set(v)
	}
}

func (m *Metrics) quarantined() {
	if m == nil {
		return
	}
	m.quarantines.Inc()
}

func (m *Metrics) forget(node string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	delete(m.verified, node)
	m.mu.Unlock()
	m.age.DeleteLabelValues(node)
	m.checks.DeletePartialMatch(prometheus.Labels{"node": node})
	for _, s := range []State{Pending, Trusted, Unreachable, Failed} {
		m.state.DeleteLabelValues(node, string(s))
	}
}
