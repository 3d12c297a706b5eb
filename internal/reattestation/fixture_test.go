package reattestation

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/verifyservice/verifypb"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// The tests' fixture: a real API server (Node and RBAC authorizers, NodeRestriction, the quarantine's
// admission policy), nodes on their own swtpm, each a member of the cluster (the cluster ID in PCR 15) with a
// real verification service on its own loopback address that binds the node's mesh key, and the controller.

// testNode is a node of the fixture.
type testNode struct {
	name string
	tpm  *tpmtest.Node
	ip   string
	// key is the WireGuard key the node's mesh uses (what its verification service binds).
	mu  sync.Mutex
	key wgmesh.Key
}

func (n *testNode) meshKey() (wgmesh.Key, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.key, nil
}

func (n *testNode) setMeshKey(k wgmesh.Key) {
	n.mu.Lock()
	n.key = k
	n.mu.Unlock()
}

type cluster struct {
	srv       *kubeapitest.Server
	admin     kubernetes.Interface
	adminAPI  *kubeapi.Client
	nodes     map[string]*testNode
	port      int
	roots     []*x509.Certificate
	base      measurements.M // the boot measurements every node has
	clusterID []byte

	mu     sync.Mutex
	policy attestation.Validator
}

// newCluster starts the API server and the nodes names; those in controlPlane are control-plane nodes.
func newCluster(t *testing.T, names []string, controlPlane ...string) *cluster {
	t.Helper()
	srv := kubeapitest.Start(t)
	cfg, err := srv.RESTConfig("admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	adminAPI, err := kubeapi.FromKubeconfig(srv.Kubeconfig(t, "admin", "system:masters"))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := Manifests(); err != nil {
		t.Fatal(err)
	} else if err := kubeapitest.Create(t.Context(), adminAPI, raw); err != nil {
		t.Fatal(err)
	}
	// The records' namespace, as the join service's manifests create it.
	if _, err := admin.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: RecordNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	clusterID, err := d.ClusterID()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{srv: srv, admin: admin, adminAPI: adminAPI, nodes: map[string]*testNode{}, clusterID: clusterID}
	isCP := map[string]bool{}
	for _, n := range controlPlane {
		isCP[n] = true
	}
	for i, name := range names {
		tn, err := tpmtest.NewNamedSWTPMNode(context.Background(), t.TempDir(), vtpm.ECC, nil, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tn.Close() })
		if c.base == nil {
			c.base = maps.Clone(tn.Policy)
			delete(c.base, measurements.PCRClusterID)
		}
		ev := measurements.ClusterIDEvent(clusterID)
		if err := tn.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
			t.Fatal(err)
		}
		c.roots = append(c.roots, tn.CA.Certificate())
		node := &testNode{name: name, tpm: tn, ip: fmt.Sprintf("127.0.0.%d", 20+i), key: newKey(t)}
		c.serve(t, node)
		c.nodes[name] = node
		c.register(t, node, isCP[name])
	}
	c.setPolicy(t, c.base)
	return c
}

// serve runs the node's verification service on its address, at the port all nodes share.
func (c *cluster) serve(t *testing.T, n *testNode) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(n.ip, strconv.Itoa(c.port)))
	if err != nil {
		t.Fatal(err)
	}
	if c.port == 0 {
		c.port = ln.Addr().(*net.TCPAddr).Port
	}
	g := grpc.NewServer()
	vs := verifyservice.NewGRPCServer(n.tpm.Issuer, nil, nil)
	vs.BindMeshKey(n.meshKey)
	verifypb.RegisterVerifyServer(g, vs)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
}

// register creates the node's Node object as its kubelet would, with its mesh key recorded and its address.
func (c *cluster) register(t *testing.T, n *testNode, controlPlane bool) {
	t.Helper()
	ctx := t.Context()
	labels := map[string]string{}
	if controlPlane {
		labels[controlPlaneLabel] = ""
	}
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: labels, Annotations: map[string]string{meshpeers.KeyAnnotation: n.key.String()}}}
	created, err := c.admin.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip}}
	if _, err := c.admin.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// setPolicy makes base (with the cluster ID) the cluster's current member policy.
func (c *cluster) setPolicy(t *testing.T, base measurements.M) {
	t.Helper()
	v, err := vtpm.NewValidator(c.roots, measurements.MemberPolicy(base, c.clusterID), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.policy = v
	c.mu.Unlock()
}

func (c *cluster) currentPolicy() (attestation.Validator, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policy, nil
}

// check is one check of a node, as OnCheck reports it.
type check struct {
	node   string
	state  State
	reason string
}

// controller is a running controller of the cluster and the checks it reports.
type controller struct {
	*Controller
	checks chan check
}

// start runs a controller with o (Client, Policy, Port and OnCheck filled in) until the test ends.
func (c *cluster) start(t *testing.T, o Options) *controller {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctl, done := c.run(t, ctx, o)
	t.Cleanup(func() { cancel(); <-done })
	return ctl
}

// run runs a controller with o until ctx ends; done is closed once it has stopped.
func (c *cluster) run(t *testing.T, ctx context.Context, o Options) (ctl *controller, done <-chan struct{}) {
	t.Helper()
	checks := make(chan check, 1024)
	o.Client, o.Policy, o.Port = c.admin, c.currentPolicy, c.port
	o.OnCheck = func(node string, state State, reason string) { checks <- check{node, state, reason} }
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctrl, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := ctrl.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	return &controller{Controller: ctrl, checks: checks}, stopped
}

// waitCheck waits for a check of node that satisfies ok, and returns it.
func (ctl *controller) waitCheck(t *testing.T, node string, ok func(check) bool) check {
	t.Helper()
	for {
		select {
		case ch := <-ctl.checks:
			if ch.node == node && ok(ch) {
				return ch
			}
		case <-t.Context().Done():
			t.Fatalf("no check of %s as expected", node)
		}
	}
}

// waitState waits until node has state.
func (ctl *controller) waitState(t *testing.T, node string, state State) check {
	t.Helper()
	return ctl.waitCheck(t, node, func(c check) bool { return c.state == state })
}

// nodeObject reads the Node object.
func (c *cluster) nodeObject(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := c.admin.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// record reads the controller's record of node name (ok false: none of its current Node object).
func (c *cluster) record(t *testing.T, name string) (Record, bool) {
	t.Helper()
	n := c.nodeObject(t, name)
	l, err := c.admin.CoordinationV1().Leases(RecordNamespace).Get(t.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Record{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return RecordOf(l, name, n.UID)
}

// kubelet is the API client of node name's kubelet.
func (c *cluster) kubelet(t *testing.T, name string) *kubeapi.Client {
	t.Helper()
	k, err := kubeapi.FromKubeconfig(c.srv.Kubeconfig(t, "system:node:"+name, "system:nodes"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func hasTaint(n *corev1.Node, key string, effect corev1.TaintEffect) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key && t.Effect == effect {
			return true
		}
	}
	return false
}

func newKey(t *testing.T) wgmesh.Key {
	t.Helper()
	_, pub, err := wgmesh.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}
