package suite

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

func init() {
	register(Suite{Names: []string{"mesh-converge-1000", "apiserver-rps-1000", "mesh-rps-1000", "apiserver-cpu-1000",
		"mesh-follower-cpu-1000", "mesh-follower-memory-1000", "mesh-sync-1000", "mesh-poll-list-kb-1000",
		"mesh-node-events-1000", "reattest-record-writes-1000"},
		Run: runMeshScale, OnRequest: true})
}

// scaleNodes is the number of simulated nodes.
const scaleNodes = 1000

// kwokAnnotation marks the Node objects KWOK manages.
const kwokAnnotation = "kwok.x-k8s.io/node"

// runMeshScale measures the mesh record at a thousand nodes, against a real API server (etcd and
// kube-apiserver as built for the node image) whose Node objects KWOK keeps alive as kubelets would: each node
// renews its Lease every 10 s and reports its status every 60-120 s (more often than a kubelet's 5 minutes,
// so the figures are on the safe side). Every one of the 1000 nodes runs the mesh's follower (meshpeers.Watcher,
// what every node's mesh agent runs) with its own node credentials and its own watch, all in this process.
//
//   - mesh-sync-1000: seconds until all 1000 followers have the whole record after they start
//   - apiserver-rps-1000, mesh-rps-1000: API requests per second in a steady minute, of everyone (KWOK's
//     heartbeats included) and of the 1000 followers alone
//   - apiserver-cpu-1000: kube-apiserver's CPU (cores) in that minute
//   - mesh-follower-cpu-1000: CPU milliseconds per follower per minute, mesh-follower-memory-1000: heap KiB
//     per follower (the record of 1000 nodes each)
//   - mesh-converge-1000: seconds from a node leaving the record (its key removed) until it is gone from all
//     1000 followers' peer lists (median of 5)
//   - mesh-poll-list-kb-1000: the size of one list of the Node objects, which the previous design (every node
//     listing every 2 s) fetched 500 times per second at this size
//   - mesh-node-events-1000: Node watch events the API server sent per follower per minute in the steady minute
//     (every change of any Node object reaches every follower)
//   - reattest-record-writes-1000: the continuous attestation's record writes per second in that minute
//
// Throughout, the continuous attestation's load runs as its controller makes it at 1000 nodes: every node's
// record (a Lease in reattestation.RecordNamespace) written after every check, every 10 s ± 1 s per node, which
// is more often than the controller writes it (after about every other check).
func runMeshScale(ctx context.Context) ([]Result, error) {
	kwok, err := buildKWOK(ctx)
	if err != nil {
		return nil, err
	}
	// The thousand followers' client library would log every slow watch start.
	klog.SetSlogLogger(discardLogger())
	if _, _, err := kubeapitest.Binaries(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bench-meshscale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	srv, stop, err := kubeapitest.Run(dir)
	if err != nil {
		return nil, err
	}
	defer stop()
	adminDir := filepath.Join(dir, "admin")
	if err := os.Mkdir(adminDir, 0o700); err != nil {
		return nil, err
	}
	adminKubeconfig, err := srv.WriteKubeconfig(adminDir, "admin", "system:masters")
	if err != nil {
		return nil, err
	}
	admin, err := kubeapi.FromKubeconfig(adminKubeconfig)
	if err != nil {
		return nil, err
	}
	rbac, err := meshpeers.Manifests()
	if err != nil {
		return nil, err
	}
	if err := kubeapitest.Create(ctx, admin, rbac); err != nil {
		return nil, err
	}
	keys := make([]wgmesh.Key, scaleNodes)
	if err := parallel(16, scaleNodes, func(i int) error {
		_, pub, err := wgmesh.GenerateKey()
		if err != nil {
			return err
		}
		keys[i] = pub
		node := map[string]any{"metadata": map[string]any{"name": nodeName(i), "annotations": map[string]string{
			kwokAnnotation: "fake", meshpeers.KeyAnnotation: pub.String()}}}
		return admin.Do(ctx, http.MethodPost, "/api/v1/nodes", "", node, nil)
	}); err != nil {
		return nil, fmt.Errorf("creating the nodes: %w", err)
	}
	progress("%d nodes created; starting KWOK", scaleNodes)
	stopKWOK, err := startKWOK(ctx, kwok, dir, adminKubeconfig)
	if err != nil {
		return nil, err
	}
	defer stopKWOK()
	if err := waitNodesReady(ctx, admin); err != nil {
		return nil, err
	}

	progress("KWOK reports all nodes Ready; starting the continuous attestation's record writes")
	records, err := startRecordLoad(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer records.stop()

	progress("starting %d followers", scaleNodes)
	// One follower per node, each with its node's own credentials (a client certificate of
	// system:node:<name>), so each has its own connection and watch.
	var requests atomic.Int64
	followers := make([]*meshpeers.Watcher, scaleNodes)
	if err := parallel(16, scaleNodes, func(i int) error {
		cfg, err := srv.RESTConfig("system:node:"+nodeName(i), "system:nodes")
		if err != nil {
			return err
		}
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				requests.Add(1)
				return rt.RoundTrip(r)
			})
		}
		followers[i], err = meshpeers.NewWatcher(cfg, discardLogger())
		return err
	}); err != nil {
		return nil, err
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for _, f := range followers {
		go f.Run(fctx)
	}
	for _, f := range followers {
		if !f.WaitSynced(ctx) {
			return nil, ctx.Err()
		}
		if peers, _ := f.Peers(); len(peers) != scaleNodes {
			return nil, fmt.Errorf("a follower has %d peers after its first list, want %d", len(peers), scaleNodes)
		}
	}
	syncTime := time.Since(start)

	progress("all followers synced in %s; measuring a steady minute", syncTime.Round(time.Millisecond))
	// A steady minute.
	time.Sleep(10 * time.Second)
	window := 60 * time.Second
	apiBefore, err := apiserverRequests(ctx, srv)
	if err != nil {
		return nil, err
	}
	followerReqBefore := requests.Load()
	eventsBefore, err := apiserverMetric(ctx, srv, nodeWatchEvents)
	if err != nil {
		return nil, err
	}
	writesBefore := records.writes.Load()
	cpuBefore, apiCPUBefore := processCPU(), pidCPU(srv.APIServerPID)
	time.Sleep(window)
	cpuAfter, apiCPUAfter := processCPU(), pidCPU(srv.APIServerPID)
	writesAfter := records.writes.Load()
	apiAfter, err := apiserverRequests(ctx, srv)
	if err != nil {
		return nil, err
	}
	eventsAfter, err := apiserverMetric(ctx, srv, nodeWatchEvents)
	if err != nil {
		return nil, err
	}
	if err := records.err(); err != nil {
		return nil, err
	}
	followerRPS := float64(requests.Load()-followerReqBefore) / window.Seconds()
	apiRPS := (apiAfter - apiBefore - 1) / window.Seconds() // less the first scrape itself
	followerCPU := float64(cpuAfter-cpuBefore) / float64(time.Millisecond) / scaleNodes / window.Minutes()
	apiCPU := float64(apiCPUAfter-apiCPUBefore) / float64(window)
	nodeEvents := (eventsAfter - eventsBefore) / scaleNodes / window.Minutes()
	recordWrites := float64(writesAfter-writesBefore) / window.Seconds()

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	memPerFollower := float64(ms.HeapInuse) / 1024 / scaleNodes

	progress("steady minute: %.1f req/s in all, %.2f of the followers, %.1f record writes/s, %.1f Node events per follower per minute; measuring convergence", apiRPS, followerRPS, recordWrites, nodeEvents)
	// Convergence: a node leaves the record; how long until no follower has it as a peer.
	var converge []time.Duration
	for round := range 5 {
		i := 100 + round*150
		d, err := measureRemoval(ctx, admin, followers, nodeName(i))
		if err != nil {
			return nil, err
		}
		converge = append(converge, d)
		progress("node %s gone from every follower after %s", nodeName(i), d.Round(time.Millisecond))
	}
	slices.Sort(converge)

	var list struct{ Items []json.RawMessage }
	raw, err := rawGet(ctx, srv, "/api/v1/nodes")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Items) != scaleNodes {
		return nil, fmt.Errorf("listing the nodes: %d items, %v", len(list.Items), err)
	}
	return []Result{
		{"mesh-sync-1000", syncTime.Seconds(), "s"},
		{"apiserver-rps-1000", apiRPS, "req/s"},
		{"mesh-rps-1000", followerRPS, "req/s"},
		{"apiserver-cpu-1000", apiCPU, "cores"},
		{"mesh-follower-cpu-1000", followerCPU, "ms/min per node"},
		{"mesh-follower-memory-1000", memPerFollower, "KiB per node"},
		{"mesh-converge-1000", converge[len(converge)/2].Seconds(), "s"},
		{"mesh-poll-list-kb-1000", float64(len(raw)) / 1024, "KiB"},
		{"mesh-node-events-1000", nodeEvents, "events/min per node"},
		{"reattest-record-writes-1000", recordWrites, "writes/s"},
	}, nil
}

// progress tells on stderr how far a long benchmark is.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func nodeName(i int) string { return fmt.Sprintf("node-%04d", i) }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// parallel runs fn(0..n-1) on workers goroutines and returns the first error.
func parallel(workers, n int, fn func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || errs[w] != nil {
					return
				}
				errs[w] = fn(i)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// buildKWOK builds KWOK from its pinned module (build/kwok) into _out/tools/kwok, once.
func buildKWOK(ctx context.Context) (string, error) {
	out, err := filepath.Abs("_out/tools/kwok")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "sigs.k8s.io/kwok/cmd/kwok")
	cmd.Dir = "build/kwok"
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building KWOK (build/kwok): %v: %s", err, b)
	}
	return out, nil
}

// startKWOK runs KWOK for the annotated nodes with KWOK's own stages: node-initialize (Ready at once) and the
// node heartbeat with a lease, its status report every 60-120 s.
func startKWOK(ctx context.Context, bin, dir, kubeconfig string) (func(), error) {
	modDir, err := exec.CommandContext(ctx, "go", "list", "-C", "build/kwok", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok").Output()
	if err != nil {
		return nil, fmt.Errorf("locating KWOK's module: %w", err)
	}
	src := strings.TrimSpace(string(modDir))
	var stages []string
	for _, f := range []string{"kustomize/stage/node/fast/node-initialize.yaml", "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return nil, err
		}
		stages = append(stages, string(b))
	}
	hb := stages[1]
	for from, to := range map[string]string{"durationMilliseconds: 600000": "durationMilliseconds: 60000", "jitterDurationMilliseconds: 610000": "jitterDurationMilliseconds: 120000"} {
		if !strings.Contains(hb, from) {
			return nil, fmt.Errorf("KWOK's heartbeat stage has no %q", from)
		}
		hb = strings.Replace(hb, from, to, 1)
	}
	stages[1] = hb
	cfg := filepath.Join(dir, "kwok.yaml")
	if err := os.WriteFile(cfg, []byte(strings.Join(stages, "\n---\n")), 0o600); err != nil {
		return nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(kctx, bin, "--kubeconfig", kubeconfig, "--config", cfg,
		"--manage-nodes-with-annotation-selector", kwokAnnotation+"=fake", "--node-lease-duration-seconds", "40",
		"--server-address", "127.0.0.1:0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(dir, "kwok.log"))
	if err != nil {
		cancel()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("starting KWOK: %w", err)
	}
	return func() { cancel(); cmd.Wait(); logf.Close() }, nil
}

// waitNodesReady waits until KWOK reported every node Ready.
func waitNodesReady(ctx context.Context, admin *kubeapi.Client) error {
	for {
		var list struct {
			Items []struct {
				Status struct {
					Conditions []struct{ Type, Status string }
				}
			}
		}
		if err := admin.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
			return err
		}
		ready := 0
		for _, n := range list.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					ready++
				}
			}
		}
		if ready == scaleNodes {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("KWOK made %d of %d nodes Ready: %w", ready, scaleNodes, ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

// measureRemoval removes the node's key from the record and returns how long until every follower had it
// gone from its peers.
func measureRemoval(ctx context.Context, admin *kubeapi.Client, followers []*meshpeers.Watcher, node string) (time.Duration, error) {
	var wg sync.WaitGroup
	seen := make([]time.Time, len(followers))
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	has := func(f *meshpeers.Watcher) bool {
		peers, _ := f.Peers()
		return slices.ContainsFunc(peers, func(p meshpeers.Peer) bool { return p.Node == node })
	}
	for i, f := range followers {
		if !has(f) {
			return 0, fmt.Errorf("follower %d does not have %s before its removal", i, node)
		}
	}
	start := time.Now()
	for i, f := range followers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for has(f) {
				select {
				case <-fctx.Done():
					return
				case <-f.Changed():
				}
			}
			seen[i] = time.Now()
		}()
	}
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]any{meshpeers.KeyAnnotation: nil}}}
	// An overloaded API server may answer later than the client waits; the patch is the same again.
	for {
		err := admin.Do(ctx, http.MethodPatch, "/api/v1/nodes/"+node, kubeapi.MergePatch, patch, nil)
		var timeout net.Error
		if errors.As(err, &timeout) && timeout.Timeout() && ctx.Err() == nil {
			progress("node %s: the API server did not answer the patch in time; sending it again", node)
			continue
		}
		if err != nil {
			return 0, err
		}
		break
	}
	patched := time.Since(start)
	wg.Wait()
	var last time.Time
	for i, t := range seen {
		if t.IsZero() {
			return 0, fmt.Errorf("follower %d still has %s: %w", i, node, ctx.Err())
		}
		if t.After(last) {
			last = t
		}
	}
	progress("node %s: the API server took %s to apply the change", node, patched.Round(time.Millisecond))
	return last.Sub(start), nil
}

// apiserverRequests is the API server's count of requests served (apiserver_request_total).
func apiserverRequests(ctx context.Context, srv *kubeapitest.Server) (float64, error) {
	return apiserverMetric(ctx, srv, func(line string) bool { return strings.HasPrefix(line, "apiserver_request_total{") })
}

// nodeWatchEvents selects the API server's count of watch events of Node objects sent to watchers.
func nodeWatchEvents(line string) bool {
	return strings.HasPrefix(line, "apiserver_watch_events_total{") && (strings.Contains(line, `resource="nodes"`) || strings.Contains(line, `kind="Node"`))
}

// apiserverMetric is the sum of the API server's metric lines that match.
func apiserverMetric(ctx context.Context, srv *kubeapitest.Server, match func(line string) bool) (float64, error) {
	body, err := rawGet(ctx, srv, "/metrics")
	if err != nil {
		return 0, err
	}
	var total float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if !match(line) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		total += v
	}
	return total, sc.Err()
}

// rawGet reads a path as the admin, undecoded.
func rawGet(ctx context.Context, srv *kubeapitest.Server, path string) ([]byte, error) {
	cfg, err := srv.RESTConfig("admin", "system:masters")
	if err != nil {
		return nil, err
	}
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// processCPU is this process's user and system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pidCPU is a process's user and system CPU time from /proc.
func pidCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// recordLoad writes the continuous attestation's records of all nodes as its controller would.
type recordLoad struct {
	writes atomic.Int64
	mu     sync.Mutex
	first  error
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startRecordLoad creates the records' namespace and writes every node's record every 10 s ± 1 s, as the
// controller's service account would, until stop.
func startRecordLoad(ctx context.Context, srv *kubeapitest.Server) (*recordLoad, error) {
	cfg, err := srv.RESTConfig("admin", "system:masters")
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = -1, 0 // the controller's own client is not the limit measured here
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: reattestation.RecordNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &recordLoad{cancel: cancel}
	// One writer per node, as the controller's checks are (its concurrency bounds the checks in flight, not
	// the writes).
	for _, n := range nodes.Items {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.follow(lctx, client, n.Name, n.UID)
		}()
	}
	return l, nil
}

func (l *recordLoad) follow(ctx context.Context, client kubernetes.Interface, name string, uid types.UID) {
	leases := client.CoordinationV1().Leases(reattestation.RecordNamespace)
	validity := int32(reattestation.RecordValidity(reattestation.DefaultInterval).Seconds())
	holder := "bench"
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: reattestation.RecordNamespace, Annotations: map[string]string{
			reattestation.NodeUIDAnnotation: string(uid), reattestation.StateAnnotation: string(reattestation.Trusted)}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &validity},
	}
	timer := time.NewTimer(time.Duration(mrand.Int64N(int64(reattestation.DefaultInterval))))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := metav1.NewMicroTime(time.Now())
		lease.Spec.RenewTime = &now
		var err error
		if lease.ResourceVersion == "" {
			lease, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		} else {
			lease, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err != nil {
			if ctx.Err() == nil {
				l.mu.Lock()
				if l.first == nil {
					l.first = fmt.Errorf("writing the record of %s: %w", name, err)
				}
				l.mu.Unlock()
			}
			return
		}
		l.writes.Add(1)
		jitter := time.Duration(mrand.Int64N(int64(reattestation.DefaultInterval/5))) - reattestation.DefaultInterval/10
		timer.Reset(reattestation.DefaultInterval + jitter)
	}
}

// err is the first write that failed, if any.
func (l *recordLoad) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

func (l *recordLoad) stop() {
	l.cancel()
	l.wg.Wait()
}
