package joinservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/swtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// A joining node gets its state disk's key, derived from the master secret by the key service, which
// answers the join service only because it proves membership of the cluster (PCR 15 holds the cluster ID).
func TestJoinHandsOutTheDiskKey(t *testing.T) {
	ctx := context.Background()
	// The control-plane node: runs the key service and the join service, and is a member of the cluster.
	cp, d, clusterID := memberControlPlane(t)
	// The joining node: fresh.
	node := simulatorNode(t)
	roots := []*x509.Certificate{cp.CA.Certificate(), node.CA.Certificate()}
	dir, config := joinConfig(t, clusterPolicy(node), roots, clusterID, nil) // both nodes booted the same way
	state, _ := config.Current()

	members, _ := vtpm.NewValidator(roots, MemberPolicy(state), nil)
	ksAddr, _ := startKeyService(t, keyservice.New(d, slog.New(slog.DiscardHandler)), cp.Issuer, members)
	disks := &KeyServiceDiskKeys{Endpoints: fixedAddrs(ksAddr), Issuer: cp.Issuer, Config: config, Roles: roles{"node-0": true}}
	jsAddr := startJoinService(t, Options{Config: config, Disks: disks}, cp.Issuer)

	join := func(uuid string) (*joinpb.JoinResponse, error) {
		return joiner{addr: jsAddr, issuer: node.Issuer, roots: roots, policy: clusterPolicy(node)}.join(t, &joinpb.JoinRequest{DiskUuid: uuid, KubeletCsr: kubeletCSR(t, "node-0")})
	}
	uuid := "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	resp, err := join(uuid)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	want, _ := d.DiskKey(uuid)
	if !bytes.Equal(resp.GetDiskKey(), want) {
		t.Fatal("the disk key is not the one derived for this disk")
	}
	// A rejoin (after a reboot) gets the same key again.
	again, err := join(uuid)
	if err != nil || !bytes.Equal(again.GetDiskKey(), want) {
		t.Fatalf("rejoin: %v", err)
	}
	for _, bad := range []string{"../cluster-id", "0B6C3A2E-6A64-4A6F-9D4E-3F1F3E6E2F11", "disk"} {
		if _, err := join(bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("disk UUID %q: %v, want InvalidArgument", bad, err)
		}
	}

	// A key service that is not a member of this cluster is not trusted with the request.
	other := *state
	other.ClusterID = bytes.Repeat([]byte{9}, 32)
	if _, err := (&KeyServiceDiskKeys{Endpoints: fixedAddrs(ksAddr), Issuer: cp.Issuer, Config: &Config{dir: dir, current: &other, sum: config.sum}, Roles: roles{"node-0": true}}).DiskKey(ctx, uuid, "node-0"); err == nil {
		t.Fatal("disk key taken from a key service of another cluster")
	}
	// Nor is a key service on a node that the provider does not name a control-plane node.
	if _, err := (&KeyServiceDiskKeys{Endpoints: fixedAddrs(ksAddr), Issuer: cp.Issuer, Config: config, Roles: roles{}}).DiskKey(ctx, uuid, "node-0"); err == nil || !strings.Contains(err.Error(), "no control-plane node") {
		t.Fatalf("disk key taken from a key service that is not on a control-plane node: %v", err)
	}
}

// fixedAddrs lists the key services at addrs.
func fixedAddrs(addrs ...string) func(context.Context) ([]string, error) {
	return func(context.Context) ([]string, error) { return addrs, nil }
}

// namedNode is a fresh node on its own swtpm whose attestation key certificate names it name, booted like
// every node of tpmtest (the reference simulator runs once per process, and node A uses it).
func namedNode(t *testing.T, name string) (attestation.Issuer, *x509.Certificate) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	ekCA, err := swtpm.NewCA(filepath.Join(dir, "ek-ca"))
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "tpm")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := swtpm.Manufacture(ctx, state, ekCA); err != nil {
		t.Fatal(err)
	}
	tpm, err := swtpm.Start(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	conn, err := tpm.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ca, err := tpmtest.NewAKCA(ekCA.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	log := eventlog.NewBuilder()
	for _, m := range tpmtest.BootMeasurements {
		if err := tpmtest.Measure(conn, log, m.PCR, m.Type, []byte(m.Data)); err != nil {
			t.Fatal(err)
		}
	}
	akCert, err := akca.Enroll(ctx, conn, name, vtpm.ECC, ca)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := vtpm.NewIssuer(conn, vtpm.ECC, akCert, func() ([]byte, error) { return log.Bytes(), nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { issuer.Close() })
	return issuer, ca.Certificate()
}

// The host gives node B a copy of node A's state disk. B is a genuine node of the cluster's image and attests
// successfully, but the disk is bound to A, which got its key first: B is refused the key, and both the join
// service and the key service log why. A keeps getting its key, also from another key service than the one
// that bound the disk (which refuses B as well), and B gets the key of its own disk.
func TestJoinRefusesTheDiskOfAnotherNode(t *testing.T) {
	cp, d, clusterID := memberControlPlane(t)
	nodeA := simulatorNode(t) // its AK certificate names it node-0
	issuerB, rootB := namedNode(t, "node-b")
	roots := []*x509.Certificate{cp.CA.Certificate(), nodeA.CA.Certificate(), rootB}
	_, config := joinConfig(t, clusterPolicy(nodeA), roots, clusterID, nil) // all nodes booted the same image
	state, _ := config.Current()
	members, _ := vtpm.NewValidator(roots, MemberPolicy(state), nil)

	// The key services of the control plane, with their shared record of disk bindings, as in the cluster;
	// the join service asks the first that answers.
	var audit syncBuffer
	api := kubeapitest.New(t, keyservice.DiskBindingsNamespace)
	startBindingKeyService := func() (string, func()) {
		ks := keyservice.New(d, slog.New(slog.NewJSONHandler(&audit, nil)))
		ks.BindDisks(keyservice.NewAPIDiskBindings(api.Client(t)))
		return startKeyService(t, ks, cp.Issuer, members)
	}
	ksAddr, stopKeyService := startBindingKeyService()
	var ksAddrs atomic.Value
	ksAddrs.Store([]string{ksAddr})
	disks := &KeyServiceDiskKeys{
		Endpoints: func(context.Context) ([]string, error) { return ksAddrs.Load().([]string), nil },
		Issuer:    cp.Issuer, Config: config, Roles: roles{"node-0": true},
	}
	var logs syncBuffer
	jsAddr := startJoinService(t, Options{Config: config, Disks: disks, Log: slog.New(slog.NewJSONHandler(&logs, nil))}, cp.Issuer)

	join := func(issuer attestation.Issuer, name, uuid string) (*joinpb.JoinResponse, error) {
		return joiner{addr: jsAddr, issuer: issuer, roots: roots, policy: clusterPolicy(nodeA)}.join(t, &joinpb.JoinRequest{DiskUuid: uuid, KubeletCsr: kubeletCSR(t, name)})
	}
	diskA := "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	diskB := "5d0e7c51-2b1e-4f3a-8c7d-9a0b1c2d3e4f"
	keyA, _ := d.DiskKey(diskA)

	respA, err := join(nodeA.Issuer, "node-0", diskA)
	if err != nil || !bytes.Equal(respA.GetDiskKey(), keyA) {
		t.Fatalf("node A's first join: %v", err)
	}
	// The attack: node B presents a copy of node A's disk.
	respB, err := join(issuerB, "node-b", diskA)
	if status.Code(err) != codes.PermissionDenied || len(respB.GetDiskKey()) != 0 {
		t.Fatalf("node B asked for node A's disk key: %v (%d key bytes), want PermissionDenied and no key", err, len(respB.GetDiskKey()))
	}
	if !strings.Contains(logs.String(), `"msg":"join refused: the node presented the state disk of another node`) || !strings.Contains(logs.String(), `"node":"node-b","disk":"`+diskA+`"`) {
		t.Fatalf("the join service does not log the refusal:\n%s", logs.String())
	}
	if !strings.Contains(audit.String(), `"msg":"disk key refused: the disk belongs to another node`) || !strings.Contains(audit.String(), `"boundTo":"node-0"`) {
		t.Fatalf("the key service does not audit the refusal:\n%s", audit.String())
	}

	// The key service that bound the disk is down; the join service reaches another one, which did not make
	// the binding, and which refuses the disk to node B all the same.
	stopKeyService()
	other, _ := startBindingKeyService()
	ksAddrs.Store([]string{ksAddr, other})
	if _, err := join(issuerB, "node-b", diskA); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node B at another key service: %v, want PermissionDenied", err)
	}
	// Node A rejoins with its own disk, node B joins with its own.
	if resp, err := join(nodeA.Issuer, "node-0", diskA); err != nil || !bytes.Equal(resp.GetDiskKey(), keyA) {
		t.Fatalf("node A's rejoin: %v", err)
	}
	keyB, _ := d.DiskKey(diskB)
	if resp, err := join(issuerB, "node-b", diskB); err != nil || !bytes.Equal(resp.GetDiskKey(), keyB) {
		t.Fatalf("node B with its own disk: %v", err)
	}
	// Now node A cannot take node B's disk either.
	if _, err := join(nodeA.Issuer, "node-0", diskB); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node A asked for node B's disk key: %v, want PermissionDenied", err)
	}
}

// The Join API's disk key length is what the key service derives for a disk.
func TestContractDiskKeyLength(t *testing.T) {
	if joinpb.DiskKeyLength != kms.DiskKeySize {
		t.Fatalf("joinpb.DiskKeyLength = %d, kms.DiskKeySize = %d", joinpb.DiskKeyLength, kms.DiskKeySize)
	}
}
