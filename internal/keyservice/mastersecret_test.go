package keyservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// memberKeyService runs a key service on node, made a member of the cluster of a fresh master secret, for
// callers whose AKs roots certified (with the key service's own root); allowed decides by name which callers
// are control-plane nodes. It returns the key service's node, the secret and the address.
func memberKeyService(t *testing.T, node *tpmtest.Node, api *kubeapitest.Server, roots []*x509.Certificate, allowed func(string) bool, log *slog.Logger) (*tpmtest.Node, *Secret, string) {
	t.Helper()
	secret := testSecret(t)
	secret.Measurements = bootPolicy(node)
	ev := measurements.ClusterIDEvent(secret.ClusterID)
	if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	addr := runKeyService(t, node, append(roots, node.CA.Certificate()), secret, api, allowed, log)
	return node, secret, addr
}

// simulatorNode is a node on the reference simulator, which runs once per process: one per test.
func simulatorNode(t *testing.T) *tpmtest.Node {
	t.Helper()
	n, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// swtpmNode is a node on its own swtpm, booted as the reference simulator's nodes are.
func swtpmNode(t *testing.T) *tpmtest.Node {
	t.Helper()
	n, err := tpmtest.NewSWTPMNode(context.Background(), t.TempDir(), vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// memberValidator trusts a key service on the node of ks that is a member of the cluster of secret.
func memberValidator(t *testing.T, ks *tpmtest.Node, secret *Secret) attestation.Validator {
	t.Helper()
	v, err := vtpm.NewValidator([]*x509.Certificate{ks.CA.Certificate()}, measurements.MemberPolicy(secret.Measurements, secret.ClusterID), nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A key service hands the master secret only to a control-plane node of the cluster: a node whose evidence
// matches the cluster's measurements, that has measured the cluster ID (it was admitted by the join service),
// and that the provider names a control-plane node in its attestation key certificate. A worker (a genuine
// member, but not a control-plane node), a fresh node and a node that booted another image are refused, and
// the secret appears in no log.
func TestMasterSecretOnlyToControlPlaneMembers(t *testing.T) {
	ctx := context.Background()
	caller := swtpmNode(t) // its AK certificate names it node-0
	api := kubeapitest.New(t, DiskBindingsNamespace)
	var controlPlane sync.Map
	var logged syncBuffer
	ks, secret, addr := memberKeyService(t, simulatorNode(t), api, []*x509.Certificate{caller.CA.Certificate()}, func(name string) bool {
		_, ok := controlPlane.Load(name)
		return ok
	}, slog.New(slog.NewJSONHandler(&logged, nil)))
	get := func() (*Secret, error) {
		c, err := NewClient(addr, caller.Issuer, []attestation.Validator{memberValidator(t, ks, secret)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.GetMasterSecret(ctx)
	}
	controlPlane.Store("node-0", true)
	// A fresh node (not admitted: PCR 15 holds no cluster ID) gets nothing, control plane or not.
	if got, err := get(); err == nil || got != nil {
		t.Fatalf("a fresh node got the master secret: %v", err)
	}
	ev := measurements.ClusterIDEvent(secret.ClusterID)
	if err := caller.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	// The attack: a worker, a genuine member of the cluster, asks for the master secret.
	controlPlane.Delete("node-0")
	if got, err := get(); status.Code(err) != codes.PermissionDenied || got != nil {
		t.Fatalf("a worker asked for the master secret: %v, want PermissionDenied", err)
	}
	if !strings.Contains(logged.String(), `"msg":"master secret refused: caller not allowed"`) {
		t.Fatalf("the refusal is not audited:\n%s", logged.String())
	}
	// A control-plane node gets it, with the cluster ID and the policy.
	controlPlane.Store("node-0", true)
	got, err := get()
	if err != nil {
		t.Fatalf("a control-plane member asked for the master secret: %v", err)
	}
	if !bytes.Equal(got.MasterSecret.Key, secret.MasterSecret.Key) || !bytes.Equal(got.MasterSecret.Salt, secret.MasterSecret.Salt) ||
		!bytes.Equal(got.ClusterID, secret.ClusterID) || len(got.Measurements) != len(secret.Measurements) {
		t.Fatal("the control-plane node got another secret than the key service holds")
	}
	if !strings.Contains(logged.String(), `"msg":"master secret handed to a control-plane node"`) {
		t.Fatalf("the handover is not audited:\n%s", logged.String())
	}

	// The attack: a control-plane node that booted another image (PCR 4) and measured the cluster ID. The
	// control: a genuine node, the same but for the image, gets the secret from the same key service.
	modified, genuine := swtpmNode(t), swtpmNode(t)
	if err := tpmtest.Measure(modified.TPM, modified.Log, measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:2222")); err != nil {
		t.Fatal(err)
	}
	ks2, secret2, addr2 := memberKeyService(t, swtpmNode(t), api, []*x509.Certificate{modified.CA.Certificate(), genuine.CA.Certificate()}, func(string) bool { return true }, slog.New(slog.NewJSONHandler(&logged, nil)))
	ev2 := measurements.ClusterIDEvent(secret2.ClusterID)
	for _, n := range []*tpmtest.Node{modified, genuine} {
		if err := n.Issuer.Measure(ev2.PCR, ev2.Type, ev2.Data); err != nil {
			t.Fatal(err)
		}
	}
	ask := func(n *tpmtest.Node) (*Secret, error) {
		c, err := NewClient(addr2, n.Issuer, []attestation.Validator{memberValidator(t, ks2, secret2)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.GetMasterSecret(ctx)
	}
	if _, err := ask(genuine); err != nil {
		t.Fatalf("a genuine control-plane member: %v", err)
	}
	if got, err := ask(modified); status.Code(err) != codes.Unavailable || got != nil {
		t.Fatalf("a node of another image asked for the master secret: %v, want the handshake refused", err)
	}
	for _, enc := range []string{hex.EncodeToString(secret.MasterSecret.Key), base64.StdEncoding.EncodeToString(secret.MasterSecret.Key)} {
		if strings.Contains(logged.String(), enc) {
			t.Fatal("the log holds the master secret")
		}
	}
}

// A caller of a key service talks only to a key service on an attested control-plane node of its cluster,
// whichever address it was given: it reaches the next one when one is down, of another cluster, or not on a
// control-plane node.
func TestPoolReachesAnAttestedControlPlaneKeyService(t *testing.T) {
	ctx := context.Background()
	caller := swtpmNode(t)
	api := kubeapitest.New(t, DiskBindingsNamespace)
	roots := []*x509.Certificate{caller.CA.Certificate()}
	anyone := func(string) bool { return true }
	ks, secret, addr := memberKeyService(t, simulatorNode(t), api, roots, anyone, slog.New(slog.DiscardHandler))
	_, _, otherCluster := memberKeyService(t, swtpmNode(t), api, roots, anyone, slog.New(slog.DiscardHandler))
	ev := measurements.ClusterIDEvent(secret.ClusterID)
	if err := caller.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down.Close()
	isControlPlane := true
	pool := &Pool{
		Endpoints: func(context.Context) ([]string, error) {
			return []string{down.Addr().String(), otherCluster, addr}, nil
		},
		Issuer:    caller.Issuer,
		Validator: ControlPlaneOnly(memberValidator(t, ks, secret), func(_ context.Context, name string) (bool, error) { return isControlPlane && name == "node-0", nil }),
	}
	defer pool.Close()
	var key []byte
	if err := pool.Do(ctx, func(ctx context.Context, c *Client) error {
		var err error
		key, err = c.GetDataKey(ctx, DataKeyID(kms.PurposeVolumeKey, "v1"), 32)
		return err
	}); err != nil {
		t.Fatalf("the pool reached no key service: %v", err)
	}
	d, _ := kms.NewDeriver(secret.MasterSecret)
	if want, _ := d.Derive(kms.PurposeVolumeKey, "v1", 32); !bytes.Equal(key, want) {
		t.Fatal("the key came from another key service than the cluster's")
	}
	// The attack: the only key service that answers runs on a node the provider does not name a control-plane
	// node (a genuine member, such as a worker).
	isControlPlane = false
	fresh := &Pool{Endpoints: pool.Endpoints, Issuer: caller.Issuer, Validator: pool.Validator}
	defer fresh.Close()
	err = fresh.Do(ctx, func(ctx context.Context, c *Client) error {
		_, err := c.GetDataKey(ctx, DataKeyID(kms.PurposeVolumeKey, "v1"), 32)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "no control-plane node") {
		t.Fatalf("a key service on a node that is no control-plane node was trusted: %v", err)
	}
}

// The attack: the host gives node B a copy of node A's state disk, and B's key is asked for at another key
// service than the one that bound the disk to A. Every key service refuses it: they share the record.
func TestEveryKeyServiceRefusesAnotherNodesDisk(t *testing.T) {
	ctx := context.Background()
	caller := swtpmNode(t)
	api := kubeapitest.New(t, DiskBindingsNamespace)
	roots := []*x509.Certificate{caller.CA.Certificate()}
	anyone := func(string) bool { return true }
	// Two key services of one cluster (the second gets the first's secret, as a joined control-plane node).
	ks1, secret, addr1 := memberKeyService(t, simulatorNode(t), api, roots, anyone, slog.New(slog.DiscardHandler))
	ks2 := swtpmNode(t)
	ev := measurements.ClusterIDEvent(secret.ClusterID)
	for _, n := range []*tpmtest.Node{ks2, caller} {
		if err := n.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
			t.Fatal(err)
		}
	}
	second := *secret
	second.Node, second.DiskUUID = "", ""
	var audit syncBuffer
	addr2 := runKeyService(t, ks2, append(roots, ks2.CA.Certificate()), &second, api, anyone, slog.New(slog.NewJSONHandler(&audit, nil)))
	getAt := func(addr string, ks *tpmtest.Node, uuid, node string) ([]byte, error) {
		c, err := NewClient(addr, caller.Issuer, []attestation.Validator{memberValidator(t, ks, secret)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.GetDiskKey(ctx, uuid, node, kms.DiskKeySize)
	}
	const diskA = "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	if _, err := getAt(addr1, ks1, diskA, "node-a"); err != nil {
		t.Fatalf("node A's disk at the first key service: %v", err)
	}
	if key, err := getAt(addr2, ks2, diskA, "node-b"); status.Code(err) != codes.PermissionDenied || key != nil {
		t.Fatalf("node B asked the second key service for node A's disk: %v, want PermissionDenied", err)
	}
	if !strings.Contains(audit.String(), `"boundTo":"node-a"`) {
		t.Fatalf("the second key service does not audit whose disk it is:\n%s", audit.String())
	}
	if _, err := getAt(addr1, ks1, diskA, "node-b"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node B asked the first key service for node A's disk: %v, want PermissionDenied", err)
	}
	if _, err := getAt(addr2, ks2, diskA, "node-a"); err != nil {
		t.Fatalf("node A's disk at the second key service: %v", err)
	}
}
