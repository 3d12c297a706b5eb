package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	dto "github.com/prometheus/client_model/go"

	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/reattestation"
)

// SoakEnv selects the mini-cluster soak and sets its duration (a Go duration, e.g. 30m); unset, TestMiniSoak
// is skipped at once (`make soak-mini` sets it).
const SoakEnv = "CONSTELLATION_E2E_SOAK"

// TestMiniSoak runs a mini cluster (1 control plane, 2 workers) under a steady load for the duration in
// $CONSTELLATION_E2E_SOAK, while the continuous attestation checks every node at its default interval. The
// load is a DaemonSet of the user application (one pod per node) whose every round writes a file to the node's
// state disk and reads it back, exchanges a payload with the pods on the two other nodes (through the mesh),
// and writes its counters into a ConfigMap. Throughout, by watches of the API server (Nodes, the controller's
// records, the pods and the load's ConfigMaps) and by following the key and join services' logs: no node ever
// leaves Trusted, no quarantine or unreachable taint, label or cordon appears, no key is refused, no pod
// restarts, and every round of the load succeeds. At the end it reports, from the controller's metrics, the
// checks per node, the latency of a check (p50, p99) and the largest attestation age seen, and the memory and
// open files of the node processes at the start and at the end.
func TestMiniSoak(t *testing.T) {
	raw := os.Getenv(SoakEnv)
	if raw == "" {
		t.Skip(SoakEnv + " is not set: the soak runs only on request (make soak-mini)")
	}
	duration, err := time.ParseDuration(raw)
	if err != nil || duration <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 30m", SoakEnv, raw)
	}
	// The cluster's start, the load's and the end take up to about 20 minutes besides the soak itself.
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < duration+20*time.Minute {
		t.Fatalf("a soak of %v needs a test timeout of at least %v: raise go test's -timeout (SOAK_TIMEOUT with make soak-mini)", duration, duration+20*time.Minute)
	}
	cl := startCluster(t, 1, 2)
	c, k, eventually := cl.c, cl.k, cl.eventually
	state, _, err := mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cl.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The load: the user application, loaded into the nodes, one pod per node.
	const ref = "example.com/constellation/soak-load:v1"
	app, _ := writeArchive(t, t.TempDir(), workloadImage(t, ref, "soak load"))
	if out, code := c.run("mini", "load", app); code != 0 {
		t.Fatalf("mini load: exit %d\n%s", code, out)
	}
	manifest := filepath.Join(t.TempDir(), "soak.yaml")
	if err := os.WriteFile(manifest, []byte(fmt.Sprintf(soakManifest, ref)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := k("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}

	m := newSoakMonitor(t, client)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	m.start(ctx)
	eventually("every node trusted and every load pod exchanging with both others", func() (string, bool) {
		return m.ready()
	})
	cp := node(t, state, "control-plane-0")
	scrape := func() (map[string]*dto.MetricFamily, error) { return scrapeReattestMetrics(cp.PID) }
	var before map[string]*dto.MetricFamily
	eventually("the continuous attestation's metrics", func() (string, bool) {
		before, err = scrape()
		return fmt.Sprint(err), err == nil
	})
	memBefore := nodeMemory(state)

	// From here on, anything off is a violation.
	m.arm()
	t.Logf("soak: %v of steady load, re-attestation every %v (the default)", duration, reattestation.DefaultInterval)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); m.followLogs(ctx, "key-service", keyServiceTrouble) }()
	go func() { defer wg.Done(); m.followLogs(ctx, "join-service", joinServiceTrouble) }()
	maxAge := map[string]float64{}
	go func() {
		defer wg.Done()
		m.sampleMetrics(ctx, scrape, before, maxAge)
	}()
	progress := time.NewTicker(time.Minute)
	defer progress.Stop()
	end := time.After(duration)
	began := time.Now()
soak:
	for {
		select {
		case <-end:
			break soak
		case <-m.failed:
			t.Errorf("the soak stopped after %v at its first violation", time.Since(began).Round(time.Second))
			break soak
		case <-progress.C:
			t.Logf("soak: %v of %v; %s", time.Since(began).Round(time.Second), duration, m.progress())
		}
	}
	ran := time.Since(began)
	m.checkNow(time.Now()) // the records and the load as they are at the end
	cancel()
	wg.Wait()
	after, err := scrape()
	if err != nil {
		t.Errorf("the continuous attestation's metrics at the end: %v", err)
	}
	memAfter := nodeMemory(state)

	// The logs in full: a line a broken stream missed counts as well.
	for _, svc := range []struct {
		name    string
		trouble func(string) bool
	}{{"key-service", keyServiceTrouble}, {"join-service", joinServiceTrouble}} {
		out, err := k("-n", "kube-system", "logs", "daemonset/"+svc.name, "--since-time="+m.armed.UTC().Format(time.RFC3339))
		if err != nil {
			t.Errorf("logs of the %s: %v\n%s", svc.name, err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if svc.trouble(line) {
				m.violate("%s logged: %s", svc.name, line)
			}
		}
	}

	report := soakFigures(ran, before, after, maxAge, memBefore, memAfter, m)
	t.Log("soak figures:\n" + report)
	if path := os.Getenv("CONSTELLATION_E2E_SOAK_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
			t.Error(err)
		}
	}
	// The controller kept attesting every node at its interval: at least 80 % of the rounds the duration holds.
	if after != nil {
		want := int(0.8 * ran.Seconds() / reattestation.DefaultInterval.Seconds())
		checks := counterDelta(before, after, "constellation_reattest_checks_total", "outcome", "verified")
		for _, n := range []string{"control-plane-0", "worker-0", "worker-1"} {
			if checks[n] < float64(want) {
				m.violate("node %s was verified %v times in %v, want at least %d", n, checks[n], ran.Round(time.Second), want)
			}
		}
	}
	for _, v := range m.violations() {
		t.Error(v)
	}
}

// soakManifest runs the load (the user application of ./workload with -soak) on every node; %s is its image.
const soakManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: soak-load}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: soak-load}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
- {apiGroups: [""], resources: [configmaps], verbs: [get, create, patch, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: soak-load}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: soak-load}
subjects: [{kind: ServiceAccount, name: soak-load}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: soak-load}
spec:
  selector: {matchLabels: {app: soak-load}}
  template:
    metadata: {labels: {app: soak-load}}
    spec:
      serviceAccountName: soak-load
      tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
      containers:
      - name: load
        image: %s
        imagePullPolicy: Never
        args: ["-soak", "-listen", ":8080", "-data", "/data", "-peers", "app=soak-load", "-period", "2s"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 5}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
`

// keyServiceTrouble tells whether a line of the key service's log is a refusal.
func keyServiceTrouble(line string) bool {
	return strings.Contains(line, "refused")
}

// joinServiceTrouble tells whether a line of the join service's log is a refusal, an error, or the continuous
// attestation finding a node wrong or unreachable.
func joinServiceTrouble(line string) bool {
	for _, s := range []string{"refused", `"level":"ERROR"`, "failed its re-attestation", "unreachable for re-attestation", `"msg":"node quarantined`} {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// loadStatus is a load pod's report (its ConfigMap).
type loadStatus struct {
	rounds, ok, failed, peers int
	diskBytes                 int64
	exchanges                 int
	lastError                 string
	seen                      time.Time // when the watch last delivered it
}

func parseLoadStatus(cm *corev1.ConfigMap, now time.Time) loadStatus {
	n := func(k string) int { v, _ := strconv.Atoi(cm.Data[k]); return v }
	disk, _ := strconv.ParseInt(cm.Data["diskBytes"], 10, 64)
	return loadStatus{rounds: n("rounds"), ok: n("ok"), failed: n("failed"), peers: n("lastPeers"), diskBytes: disk,
		exchanges: n("peerExchanges"), lastError: cm.Data["lastError"], seen: now}
}

// soakMonitor follows the cluster through watches (informers) and collects what violates the soak's
// invariants once it is armed.
type soakMonitor struct {
	t        *testing.T
	client   kubernetes.Interface
	nodes    cache.Indexer
	records  cache.Indexer
	stopOnce sync.Once
	failed   chan struct{} // closed at the first violation

	mu         sync.Mutex
	isArmed    bool
	armed      time.Time
	found      []string
	load       map[string]loadStatus // by pod
	baseline   map[string]loadStatus // at arming
	restarts   map[string]int32      // container restarts by pod (namespace/name), at arming
	recordSeen map[string]int        // record updates by node, after arming
}

func newSoakMonitor(t *testing.T, client kubernetes.Interface) *soakMonitor {
	return &soakMonitor{t: t, client: client, failed: make(chan struct{}), load: map[string]loadStatus{},
		restarts: map[string]int32{}, recordSeen: map[string]int{}}
}

// start runs the watches until ctx ends.
func (m *soakMonitor) start(ctx context.Context) {
	all := informers.NewSharedInformerFactory(m.client, 0)
	nodeInf := all.Core().V1().Nodes().Informer()
	podInf := all.Core().V1().Pods().Informer()
	recs := informers.NewSharedInformerFactoryWithOptions(m.client, 0, informers.WithNamespace(reattestation.RecordNamespace))
	recInf := recs.Coordination().V1().Leases().Informer()
	loads := informers.NewSharedInformerFactoryWithOptions(m.client, 0, informers.WithNamespace("default"),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "app=soak-status" }))
	loadInf := loads.Core().V1().ConfigMaps().Informer()
	m.nodes, m.records = nodeInf.GetIndexer(), recInf.GetIndexer()

	nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.nodeChanged(obj) },
		UpdateFunc: func(_, obj any) { m.nodeChanged(obj) },
		DeleteFunc: func(obj any) { m.violate("a Node object was deleted: %v", objName(obj)) },
	})
	recInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.recordChanged(obj) },
		UpdateFunc: func(_, obj any) { m.recordChanged(obj) },
		DeleteFunc: func(obj any) { m.violate("the attestation record %v was deleted", objName(obj)) },
	})
	podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.podChanged(obj) },
		UpdateFunc: func(_, obj any) { m.podChanged(obj) },
		DeleteFunc: func(obj any) { m.podDeleted(obj) },
	})
	loadInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.loadChanged(obj) },
		UpdateFunc: func(_, obj any) { m.loadChanged(obj) },
	})
	for _, f := range []interface{ Start(<-chan struct{}) }{all, recs, loads} {
		f.Start(ctx.Done())
	}
	cache.WaitForCacheSync(ctx.Done(), nodeInf.HasSynced, podInf.HasSynced, recInf.HasSynced, loadInf.HasSynced)
	// What a watch alone cannot show: a record that stays as it was while its verification grows old, a load
	// pod that stops reporting. Checked against the watches' caches, not by listing.
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				m.checkNow(now)
			}
		}
	}()
}

func objName(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Key
	}
	if o, ok := obj.(metav1.Object); ok {
		return o.GetNamespace() + "/" + o.GetName()
	}
	return fmt.Sprint(obj)
}

// ready tells whether the cluster is where the soak starts: three nodes, each with a Trusted record, and a
// load pod on each that has reached both others.
func (m *soakMonitor) ready() (string, bool) {
	now := time.Now()
	var b strings.Builder
	ok := len(m.nodes.List()) == 3
	for _, obj := range m.nodes.List() {
		n := obj.(*corev1.Node)
		r, has := reattestation.RecordOf(m.record(n.Name), n.Name, n.UID)
		fmt.Fprintf(&b, "%s: record %+v\n", n.Name, r)
		ok = ok && has && r.Trusted(now)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(&b, "load: %+v\n", m.load)
	ok = ok && len(m.load) == 3
	for _, s := range m.load {
		ok = ok && s.ok > 0 && s.peers == 2
	}
	return b.String(), ok
}

// arm starts counting violations, from the load's and the pods' state now.
func (m *soakMonitor) arm() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.isArmed, m.armed = true, time.Now()
	m.baseline = map[string]loadStatus{}
	for pod, s := range m.load {
		m.baseline[pod] = s
	}
}

func (m *soakMonitor) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	m.mu.Lock()
	armed := m.isArmed
	if armed {
		m.found = append(m.found, time.Now().UTC().Format("15:04:05")+" "+msg)
	}
	m.mu.Unlock()
	if armed {
		m.stopOnce.Do(func() { close(m.failed) })
	}
}

func (m *soakMonitor) violations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.found)
}

func (m *soakMonitor) record(name string) *coordinationv1.Lease {
	obj, ok, _ := m.records.GetByKey(reattestation.RecordNamespace + "/" + name)
	if !ok {
		return nil
	}
	return obj.(*coordinationv1.Lease)
}

func (m *soakMonitor) nodeChanged(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	if n.Spec.Unschedulable {
		m.violate("node %s cordoned", n.Name)
	}
	for _, taint := range n.Spec.Taints {
		if taint.Key == reattestation.QuarantineTaint || taint.Key == reattestation.UnreachableTaint {
			m.violate("node %s tainted %s:%s", n.Name, taint.Key, taint.Effect)
		}
	}
	if reason, ok := n.Labels[meshpeers.QuarantineLabel]; ok {
		m.violate("node %s quarantined: %s", n.Name, reason)
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
			m.violate("node %s not Ready: %s %s", n.Name, cond.Reason, cond.Message)
		}
	}
}

func (m *soakMonitor) recordChanged(obj any) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	m.mu.Lock()
	if m.isArmed {
		m.recordSeen[l.Name]++
	}
	m.mu.Unlock()
	m.checkRecord(l.Name, time.Now())
}

// checkRecord checks that the record of node name vouches for it at now.
func (m *soakMonitor) checkRecord(name string, now time.Time) {
	obj, ok, _ := m.nodes.GetByKey(name)
	if !ok {
		m.violate("an attestation record of no node: %s", name)
		return
	}
	n := obj.(*corev1.Node)
	r, ok := reattestation.RecordOf(m.record(name), name, n.UID)
	switch {
	case !ok:
		m.violate("node %s has no attestation record of its Node object", name)
	case !r.Trusted(now):
		m.violate("node %s left Trusted: %+v (at %s)", name, r, now.UTC().Format(time.RFC3339Nano))
	case r.Alert != "":
		m.violate("node %s record alerts: %s", name, r.Alert)
	}
}

func (m *soakMonitor) podChanged(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := p.Namespace + "/" + p.Name
	var restarts int32
	for _, cs := range p.Status.ContainerStatuses {
		restarts += cs.RestartCount
	}
	m.mu.Lock()
	before, known := m.restarts[key]
	m.restarts[key] = restarts
	armed := m.isArmed
	m.mu.Unlock()
	if known && restarts > before {
		m.violate("pod %s restarted (%d restarts)", key, restarts)
	}
	if armed && !known {
		m.violate("a new pod %s appeared on %s", key, p.Spec.NodeName)
	}
	if p.Labels["app"] == "soak-load" {
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status != corev1.ConditionTrue {
				m.violate("load pod %s on %s not ready: %s", key, p.Spec.NodeName, cond.Message)
			}
		}
	}
}

func (m *soakMonitor) podDeleted(obj any) {
	m.violate("pod %s deleted", objName(obj))
}

func (m *soakMonitor) loadChanged(obj any) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return
	}
	s := parseLoadStatus(cm, time.Now())
	pod := cm.Data["pod"]
	m.mu.Lock()
	base, armed := m.baseline[pod]
	m.load[pod] = s
	isArmed := m.isArmed
	m.mu.Unlock()
	switch {
	case isArmed && !armed:
		m.violate("a new load pod %s reports", pod)
	case armed && s.failed > base.failed:
		m.violate("load pod %s: %d rounds failed; the last: %s", pod, s.failed-base.failed, s.lastError)
	case armed && s.peers != 2:
		m.violate("load pod %s reached %d peers, want 2", pod, s.peers)
	}
}

// checkNow checks what time alone changes: every node's record still vouches for it, every load pod reported
// within the last 30 s.
func (m *soakMonitor) checkNow(now time.Time) {
	m.mu.Lock()
	armed := m.isArmed
	var stalled []string
	for pod, s := range m.load {
		if now.Sub(s.seen) > 30*time.Second {
			stalled = append(stalled, fmt.Sprintf("%s (last report %v ago, round %d)", pod, now.Sub(s.seen).Round(time.Second), s.rounds))
		}
	}
	m.mu.Unlock()
	if !armed {
		return
	}
	for _, obj := range m.nodes.List() {
		m.checkRecord(obj.(*corev1.Node).Name, now)
	}
	for _, s := range stalled {
		m.violate("load pod stalled: %s", s)
	}
}

// progress is a line on the load so far.
func (m *soakMonitor) progress() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var parts []string
	for _, pod := range slices.Sorted(maps.Keys(m.load)) {
		s, b := m.load[pod], m.baseline[pod]
		parts = append(parts, fmt.Sprintf("%s %d rounds ok, %d failed", pod, s.ok-b.ok, s.failed-b.failed))
	}
	return strings.Join(parts, "; ")
}

// followLogs follows the log of the service's pods from the moment the soak was armed until ctx ends, and
// reports every line trouble picks. A stream that ends early is opened again from its last line's time.
func (m *soakMonitor) followLogs(ctx context.Context, service string, trouble func(string) bool) {
	pods, err := m.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + service})
	if err != nil || len(pods.Items) == 0 {
		if ctx.Err() == nil {
			m.violate("finding the %s's pods: %v", service, err)
		}
		return
	}
	var wg sync.WaitGroup
	for _, p := range pods.Items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			since := metav1.NewTime(m.armed)
			for ctx.Err() == nil {
				stream, err := m.client.CoreV1().Pods("kube-system").GetLogs(p.Name, &corev1.PodLogOptions{Follow: true, SinceTime: &since, Timestamps: true}).Stream(ctx)
				if err != nil {
					if ctx.Err() == nil {
						m.t.Logf("following the log of %s: %v; again in a moment", p.Name, err)
						select {
						case <-ctx.Done():
						case <-time.After(2 * time.Second):
						}
					}
					continue
				}
				sc := bufio.NewScanner(stream)
				sc.Buffer(make([]byte, 64<<10), 1<<20)
				for sc.Scan() {
					ts, line, _ := strings.Cut(sc.Text(), " ")
					if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
						since = metav1.NewTime(t)
					}
					if trouble(line) {
						m.violate("%s logged: %s", p.Name, line)
					}
				}
				stream.Close()
			}
		}()
	}
	wg.Wait()
}

// sampleMetrics scrapes the controller's metrics every 2 s until ctx ends: no check may fail and no node may
// be quarantined; it keeps the largest attestation age of each node in maxAge.
func (m *soakMonitor) sampleMetrics(ctx context.Context, scrape func() (map[string]*dto.MetricFamily, error), before map[string]*dto.MetricFamily, maxAge map[string]float64) {
	misses := 0
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		mf, err := scrape()
		if err != nil {
			if misses++; misses >= 3 && ctx.Err() == nil {
				m.violate("the continuous attestation's metrics unreadable %d times in a row: %v", misses, err)
			}
			continue
		}
		misses = 0
		m.mu.Lock()
		for node, age := range gaugeByNode(mf, "constellation_reattest_attestation_age_seconds") {
			maxAge[node] = max(maxAge[node], age)
		}
		m.mu.Unlock()
		for reason, n := range counterDelta(before, mf, "constellation_reattest_failures_total", "", "") {
			if n > 0 {
				m.violate("the continuous attestation counted %v failed checks (%s)", n, reason)
			}
		}
		if n := counterDelta(before, mf, "constellation_reattest_quarantines_total", "", "")[""]; n > 0 {
			m.violate("the continuous attestation quarantined %v nodes", n)
		}
		for node, s := range nodeStates(mf) {
			if s != string(reattestation.Trusted) {
				m.violate("the controller has node %s %s", node, s)
			}
		}
	}
}

// scrapeReattestMetrics reads the controller's metrics on the control-plane node (first process pid), where
// the join service serves them on the node's loopback address.
func scrapeReattestMetrics(pid int) (map[string]*dto.MetricFamily, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "curl", "-sS", "-f", "-m", "5", fmt.Sprintf("http://127.0.0.1:%d/metrics", reattestation.MetricsPort))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.Bytes())
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(out))
}

func label(mt *dto.Metric, name string) string {
	for _, l := range mt.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func gaugeByNode(mf map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	for _, mt := range mf[name].GetMetric() {
		out[label(mt, "node")] = mt.GetGauge().GetValue()
	}
	return out
}

// nodeStates is each node's state in the controller's metrics.
func nodeStates(mf map[string]*dto.MetricFamily) map[string]string {
	out := map[string]string{}
	for _, mt := range mf["constellation_reattest_node_state"].GetMetric() {
		if mt.GetGauge().GetValue() == 1 {
			out[label(mt, "node")] = label(mt, "state")
		}
	}
	return out
}

// counterDelta is the growth of the counter name from before to after, by the label other than filterLabel
// (the node, or the reason; "" for an unlabelled counter), counting only samples whose filterLabel is
// filterValue (filterLabel "": all).
func counterDelta(before, after map[string]*dto.MetricFamily, name, filterLabel, filterValue string) map[string]float64 {
	key := func(mt *dto.Metric) (string, bool) {
		if filterLabel != "" && label(mt, filterLabel) != filterValue {
			return "", false
		}
		var parts []string
		for _, l := range mt.GetLabel() {
			if l.GetName() != filterLabel {
				parts = append(parts, l.GetValue())
			}
		}
		return strings.Join(parts, ","), true
	}
	out := map[string]float64{}
	for _, mt := range after[name].GetMetric() {
		if k, ok := key(mt); ok {
			out[k] += mt.GetCounter().GetValue()
		}
	}
	for _, mt := range before[name].GetMetric() {
		if k, ok := key(mt); ok {
			out[k] -= mt.GetCounter().GetValue()
		}
	}
	return out
}

// histogramQuantile estimates the q-quantile of the observations the histogram name gained from before to
// after, interpolating linearly within a bucket (as Prometheus' histogram_quantile does).
func histogramQuantile(before, after map[string]*dto.MetricFamily, name string, q float64) (float64, uint64) {
	cum := func(mf map[string]*dto.MetricFamily) ([]float64, []uint64, uint64) {
		ms := mf[name].GetMetric()
		if len(ms) == 0 {
			return nil, nil, 0
		}
		h := ms[0].GetHistogram()
		var bounds []float64
		var counts []uint64
		for _, b := range h.GetBucket() {
			bounds, counts = append(bounds, b.GetUpperBound()), append(counts, b.GetCumulativeCount())
		}
		return bounds, counts, h.GetSampleCount()
	}
	bounds, a, total := cum(after)
	_, b, totalBefore := cum(before)
	n := total - totalBefore
	if n == 0 {
		return math.NaN(), 0
	}
	rank := q * float64(n)
	lower, below := 0.0, 0.0
	for i, upper := range bounds {
		c := float64(a[i])
		if i < len(b) {
			c -= float64(b[i])
		}
		if c >= rank {
			if c == below {
				return upper, n
			}
			return lower + (upper-lower)*(rank-below)/(c-below), n
		}
		lower, below = upper, c
	}
	return math.Inf(1), n // beyond the largest bucket
}

// procUsage is a node process's resident memory and open files.
type procUsage struct {
	pid   int
	rssKB int
	fds   int
}

// soakProcesses are the node processes whose memory the soak follows, by their command name (15 bytes at most).
var soakProcesses = []string{"bootstrapper", "join-service", "key-service", "verification-se", "kubelet", "containerd", "kube-apiserver", "etcd"}

// nodeMemory reads the resident memory and open files of the node processes from /proc, by "node/command".
func nodeMemory(state mini.State) map[string]procUsage {
	out := map[string]procUsage{}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		pid, _ := strconv.Atoi(filepath.Base(dir))
		comm, err := os.ReadFile(dir + "/comm")
		if err != nil || !slices.Contains(soakProcesses, strings.TrimSpace(string(comm))) {
			continue
		}
		cg, err := os.ReadFile(dir + "/cgroup")
		if err != nil {
			continue
		}
		var nodeName string
		for _, n := range state.Nodes {
			if bytes.Contains(cg, []byte("/"+n.Cgroup+"/")) || bytes.Contains(cg, []byte("/"+n.Cgroup+"\n")) {
				nodeName = n.Name
			}
		}
		if nodeName == "" {
			continue
		}
		status, err := os.ReadFile(dir + "/status")
		if err != nil {
			continue
		}
		u := procUsage{pid: pid}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				u.rssKB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			}
		}
		fds, _ := os.ReadDir(dir + "/fd")
		u.fds = len(fds)
		key := nodeName + "/" + strings.TrimSpace(string(comm))
		if prev, ok := out[key]; ok {
			// Several of the same name on a node (a shim's children): the figures add up.
			u.rssKB, u.fds, u.pid = u.rssKB+prev.rssKB, u.fds+prev.fds, prev.pid
		}
		out[key] = u
	}
	return out
}

// soakFigures is the soak's report.
func soakFigures(ran time.Duration, before, after map[string]*dto.MetricFamily, maxAge map[string]float64, memBefore, memAfter map[string]procUsage, m *soakMonitor) string {
	var b strings.Builder
	fmt.Fprintf(&b, "duration %v, re-attestation interval %v\n", ran.Round(time.Second), reattestation.DefaultInterval)
	if after != nil {
		verified := counterDelta(before, after, "constellation_reattest_checks_total", "outcome", "verified")
		all := counterDelta(before, after, "constellation_reattest_checks_total", "", "")
		fmt.Fprintf(&b, "%-16s %8s %8s %12s %14s\n", "node", "checks", "verified", "record writes", "max age (s)")
		m.mu.Lock()
		for _, n := range slices.Sorted(maps.Keys(verified)) {
			var checks float64
			for k, v := range all {
				if strings.HasPrefix(k, n+",") {
					checks += v
				}
			}
			fmt.Fprintf(&b, "%-16s %8.0f %8.0f %12d %14.1f\n", n, checks, verified[n], m.recordSeen[n], maxAge[n])
		}
		m.mu.Unlock()
		p50, n := histogramQuantile(before, after, "constellation_reattest_check_latency_seconds", 0.5)
		p99, _ := histogramQuantile(before, after, "constellation_reattest_check_latency_seconds", 0.99)
		fmt.Fprintf(&b, "check latency over %d checks: p50 %.1f ms, p99 %.1f ms (from the histogram's buckets)\n", n, p50*1000, p99*1000)
	}
	m.mu.Lock()
	for _, pod := range slices.Sorted(maps.Keys(m.load)) {
		s, base := m.load[pod], m.baseline[pod]
		fmt.Fprintf(&b, "load %s: %d rounds ok, %d failed, %d MiB written and read back, %d payloads echoed across nodes\n",
			pod, s.ok-base.ok, s.failed-base.failed, (s.diskBytes-base.diskBytes)>>20, s.exchanges-base.exchanges)
	}
	m.mu.Unlock()
	fmt.Fprintf(&b, "%-32s %10s %10s %8s %8s %8s\n", "process", "RSS start", "RSS end", "change", "fds", "pid")
	for _, k := range slices.Sorted(maps.Keys(memAfter)) {
		a, bf := memAfter[k], memBefore[k]
		change, same := "", "same"
		if bf.rssKB > 0 {
			change = fmt.Sprintf("%+.0f%%", 100*float64(a.rssKB-bf.rssKB)/float64(bf.rssKB))
		}
		if bf.pid != a.pid {
			same = "new"
		}
		fmt.Fprintf(&b, "%-32s %7d KiB %7d KiB %8s %3d->%-3d %8s\n", k, bf.rssKB, a.rssKB, change, bf.fds, a.fds, same)
	}
	return b.String()
}

// TestHistogramQuantile estimates quantiles of what a histogram gained between two scrapes.
func TestHistogramQuantile(t *testing.T) {
	hist := func(counts ...uint64) map[string]*dto.MetricFamily {
		h := &dto.Histogram{}
		for i, c := range counts {
			h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: proto(float64(i + 1)), CumulativeCount: &c})
		}
		total := counts[len(counts)-1]
		h.SampleCount = &total
		return map[string]*dto.MetricFamily{"h": {Metric: []*dto.Metric{{Histogram: h}}}}
	}
	// Before: 10 observations at most 1. Then 100 more: 50 in (1, 2], 49 in (2, 3], 1 in (3, 4].
	before, after := hist(10, 10, 10, 10), hist(10, 60, 109, 110)
	if q, n := histogramQuantile(before, after, "h", 0.5); n != 100 || q != 2 {
		t.Errorf("p50 = %v over %d, want 2 over 100", q, n)
	}
	if q, _ := histogramQuantile(before, after, "h", 0.25); q != 1.5 {
		t.Errorf("p25 = %v, want 1.5", q)
	}
	if q, _ := histogramQuantile(before, after, "h", 0.995); q != 3.5 {
		t.Errorf("p99.5 = %v, want 3.5", q)
	}
	if q, n := histogramQuantile(after, after, "h", 0.5); n != 0 || !math.IsNaN(q) {
		t.Errorf("no new observations: %v over %d", q, n)
	}
}

func proto(f float64) *float64 { return &f }
