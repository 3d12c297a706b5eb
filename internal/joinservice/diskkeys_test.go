package joinservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// A joining node gets its state disk's key, derived from the master secret by the key service, which
// answers the join service only because it proves membership of the cluster (PCR 15 holds the cluster ID).
func TestJoinHandsOutTheDiskKey(t *testing.T) {
	ctx := context.Background()
	// The control-plane node: runs the key service and the join service, and is a member of the cluster.
	cp, err := tpmtest.NewSWTPMNode(ctx, t.TempDir(), vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	ms, _ := kms.GenerateMasterSecret()
	d, _ := kms.NewDeriver(ms)
	clusterID, _ := d.ClusterID()
	ev := measuredboot.ClusterIDEvent(clusterID)
	if err := cp.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	// The joining node: fresh.
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	roots := []*x509.Certificate{cp.CA.Certificate(), node.CA.Certificate()}
	dir := t.TempDir()
	writeConfig(t, dir, clusterPolicy(node), roots, clusterID) // both nodes booted the same way
	config, err := NewConfig(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	state, _ := config.Current()

	serve := func(srv *grpc.Server) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(srv.Stop)
		return ln.Addr().String()
	}
	members, _ := vtpm.NewValidator(roots, MemberPolicy(state), nil)
	ksSrv, err := keyservice.NewGRPCServer(keyservice.New(d, slog.New(slog.DiscardHandler)), cp.Issuer, []attestation.Validator{members})
	if err != nil {
		t.Fatal(err)
	}
	ksAddr := serve(ksSrv)
	disks := &KeyServiceDiskKeys{Addr: ksAddr, Issuer: cp.Issuer, Config: config}
	jsSrv, err := NewGRPCServer(New(Options{Config: config, Tokens: &countingTokens{}, Roles: roles{}, Disks: disks, PKIDir: filepath.Dir(writeCA(t)), Endpoint: "10.0.0.1:6443", Log: slog.New(slog.DiscardHandler)}), cp.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	jsAddr := serve(jsSrv)

	join := func(uuid string) (*initpb.JoinResponse, error) {
		v, _ := vtpm.NewValidator(roots, clusterPolicy(node), nil)
		creds, _ := atls.NewCredentials(node.Issuer, []attestation.Validator{v})
		conn, err := grpc.NewClient(jsAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return initpb.NewJoinClient(conn).Join(ctx, &initpb.JoinRequest{DiskUuid: uuid, KubeletCsr: kubeletCSR(t, "node-0")})
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
	if _, err := (&KeyServiceDiskKeys{Addr: ksAddr, Issuer: cp.Issuer, Config: &Config{dir: dir, current: &other, sum: config.sum}}).DiskKey(ctx, uuid); err == nil {
		t.Fatal("disk key taken from a key service of another cluster")
	}
}
