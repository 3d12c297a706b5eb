package suite

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/verifyservice/verifypb"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

func init() {
	register(Suite{Names: []string{"reattest-cpu"}, Run: runReattestCPU})
	register(Suite{Names: []string{"reattest-latency"}, Run: runReattestLatency})
}

// reattestNodes are swtpm nodes named name-0..name-(n-1), members of one cluster (the cluster ID measured),
// each with a mesh key, and the member policy that accepts them.
type reattestNodes struct {
	nodes []*tpmtest.Node
	names []string
	keys  []wgmesh.Key
	v     attestation.Validator
}

func newReattestNodes(ctx context.Context, dir string, n int) (*reattestNodes, error) {
	out := &reattestNodes{}
	var roots []*x509.Certificate
	var base measurements.M
	clusterID := make([]byte, 32)
	if _, err := rand.Read(clusterID); err != nil {
		return nil, err
	}
	for i := range n {
		name := "node-" + strconv.Itoa(i)
		node, err := tpmtest.NewNamedSWTPMNode(ctx, filepath.Join(dir, name), vtpm.ECC, nil, name)
		if err != nil {
			out.close()
			return nil, err
		}
		out.nodes = append(out.nodes, node)
		ev := measurements.ClusterIDEvent(clusterID)
		if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
			out.close()
			return nil, err
		}
		if base == nil {
			base = maps.Clone(node.Policy)
			delete(base, measurements.PCRClusterID)
		}
		roots = append(roots, node.CA.Certificate())
		_, pub, err := wgmesh.GenerateKey()
		if err != nil {
			out.close()
			return nil, err
		}
		out.names, out.keys = append(out.names, name), append(out.keys, pub)
	}
	v, err := vtpm.NewValidator(roots, measurements.MemberPolicy(base, clusterID), nil)
	if err != nil {
		out.close()
		return nil, err
	}
	out.v = v
	return out, nil
}

func (r *reattestNodes) close() {
	for _, n := range r.nodes {
		n.Close()
	}
}

func (r *reattestNodes) nodeObject(i int, ip string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: r.names[i], Annotations: map[string]string{meshpeers.KeyAnnotation: r.keys[i].String()}}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	return n
}

// runReattestCPU measures the controller's CPU time for one interval of 100 nodes: each check validates real
// evidence (from 4 swtpm nodes, reused for the 100 simulated ones, issued beforehand for the check's fresh
// nonce and bound to the node's mesh key) against the member policy, and checks the node's identity and key
// binding. Issuing is the nodes' work and is not counted; the median of 20 rounds.
func runReattestCPU(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-reattest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	nodes, err := newReattestNodes(ctx, dir, 4)
	if err != nil {
		return nil, err
	}
	defer nodes.close()
	const checks, rounds = 100, 20
	type check struct {
		node            *corev1.Node
		evidence, nonce []byte
	}
	all := make([]check, checks)
	for i := range all {
		j := i % len(nodes.nodes)
		nonce := make([]byte, attestation.NonceSize)
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
		ev, err := nodes.nodes[j].Issuer.Issue(ctx, nonce, verifyservice.MeshKeyUserData(nodes.keys[j]))
		if err != nil {
			return nil, err
		}
		all[i] = check{nodes.nodeObject(j, "127.0.0.1"), ev, nonce}
	}
	var cpu []time.Duration
	for range rounds {
		before, err := cpuTime()
		if err != nil {
			return nil, err
		}
		for _, c := range all {
			if s, reason := reattestation.Judge(ctx, nodes.v, c.node, c.evidence, c.nonce); s != reattestation.Trusted {
				return nil, fmt.Errorf("a genuine node's evidence failed: %s", reason)
			}
		}
		after, err := cpuTime()
		if err != nil {
			return nil, err
		}
		cpu = append(cpu, after-before)
	}
	sort.Slice(cpu, func(a, b int) bool { return cpu[a] < cpu[b] })
	return []Result{{"reattest-cpu", ms(cpu[len(cpu)/2]), "ms"}}, nil
}

// cpuTime is the process's user and system CPU time.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// runReattestLatency measures the time from a PCR change on a running node to its quarantine, with the
// controller at its default interval: a real API server (kubeapitest), two swtpm nodes behind real
// verification services, the controller as the join service runs it.
func runReattestLatency(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-reattest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	api := filepath.Join(dir, "api")
	if err := os.MkdirAll(api, 0o700); err != nil {
		return nil, err
	}
	srv, stop, err := kubeapitest.Run(api)
	if err != nil {
		return nil, err
	}
	defer stop()
	cfg, err := srv.RESTConfig("admin", "system:masters")
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	// The records' namespace, as the join service's manifests create it.
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: reattestation.RecordNamespace}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	nodes, err := newReattestNodes(ctx, dir, 2)
	if err != nil {
		return nil, err
	}
	defer nodes.close()
	port := 0
	for i, node := range nodes.nodes {
		ip := "127.0.0." + strconv.Itoa(40+i)
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return nil, err
		}
		port = ln.Addr().(*net.TCPAddr).Port
		g := grpc.NewServer()
		vs := verifyservice.NewGRPCServer(node.Issuer, nil, nil)
		key := nodes.keys[i]
		vs.BindMeshKey(func() (wgmesh.Key, error) { return key, nil })
		verifypb.RegisterVerifyServer(g, vs)
		go g.Serve(ln)
		defer g.Stop()
		obj := nodes.nodeObject(i, ip)
		created, err := client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		created.Status = obj.Status
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return nil, err
		}
	}
	trusted := make(chan string, 64)
	failed := make(chan struct{}, 64)
	c, err := reattestation.New(reattestation.Options{
		Client: client, Policy: func() (attestation.Validator, error) { return nodes.v, nil }, Port: port, Log: discardLogger(),
		OnCheck: func(node string, s reattestation.State, _ string) {
			switch s {
			case reattestation.Trusted:
				trusted <- node
			case reattestation.Failed:
				failed <- struct{}{}
			}
		},
	})
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.Run(cctx)
	for seen := map[string]bool{}; len(seen) < len(nodes.nodes); {
		seen[<-trusted] = true
	}
	start := time.Now()
	if err := nodes.nodes[1].Issuer.Measure(measurements.PCRNodeImage, eventlog.IPL, []byte("a component loaded after the node joined")); err != nil {
		return nil, err
	}
	select {
	case <-failed:
	case <-time.After(5 * reattestation.DefaultInterval):
		return nil, errors.New("the node was not quarantined within five intervals")
	}
	took := time.Since(start)
	n, err := client.CoreV1().Nodes().Get(ctx, nodes.names[1], metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if _, q := n.Labels[meshpeers.QuarantineLabel]; !q {
		return nil, errors.New("the failed node was not quarantined")
	}
	lease, err := client.CoordinationV1().Leases(reattestation.RecordNamespace).Get(ctx, nodes.names[1], metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the failed node's record: %w", err)
	}
	if r, ok := reattestation.RecordOf(lease, n.Name, n.UID); !ok || r.State != string(reattestation.Failed) {
		return nil, fmt.Errorf("the failed node's record says %+v", r)
	}
	return []Result{{"reattest-latency", took.Seconds(), "s"}}, nil
}
