package joinservice

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// The join service gets the mesh's preshared root key from the key service, over mutual aTLS, and it is the
// one the first control-plane node derives from the master secret; it asks once.
func TestMeshRootFromTheKeyService(t *testing.T) {
	ctx := context.Background()
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
	roots := []*x509.Certificate{cp.CA.Certificate()}
	dir := t.TempDir()
	writeConfig(t, dir, clusterPolicy(cp), roots, clusterID)
	config, err := NewConfig(dir, nil, testMACKey)
	if err != nil {
		t.Fatal(err)
	}
	state, _ := config.Current()
	members, _ := vtpm.NewValidator(roots, MemberPolicy(state), nil)
	srv, err := keyservice.NewGRPCServer(keyservice.New(d, slog.New(slog.DiscardHandler)), cp.Issuer, []attestation.Validator{members})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)

	k := &KeyServiceMeshRoot{Addr: ln.Addr().String(), Issuer: cp.Issuer, Config: config}
	got, err := k.PresharedRoot(ctx)
	if err != nil {
		t.Fatalf("PresharedRoot: %v", err)
	}
	want, err := MeshRootFromMaster(d)
	if err != nil || got != want || got == (wgmesh.Key{}) {
		t.Fatalf("the key service's root %s differs from the master secret's %s (%v)", got, want, err)
	}
	srv.Stop()
	if again, err := k.PresharedRoot(ctx); err != nil || again != got {
		t.Fatalf("the second PresharedRoot asked the key service again: %s, %v", again, err)
	}
}
