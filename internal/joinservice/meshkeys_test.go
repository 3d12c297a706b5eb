package joinservice

import (
	"context"
	"crypto/x509"
	"log/slog"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// The join service gets the mesh's preshared root key from the key service, over mutual aTLS, and it is the
// one the first control-plane node derives from the master secret; it asks once.
func TestMeshRootFromTheKeyService(t *testing.T) {
	ctx := context.Background()
	cp, d, clusterID := memberControlPlane(t)
	roots := []*x509.Certificate{cp.CA.Certificate()}
	_, config := joinConfig(t, clusterPolicy(cp), roots, clusterID, nil)
	state, _ := config.Current()
	members, _ := vtpm.NewValidator(roots, MemberPolicy(state), nil)
	ksAddr, stopKeyService := startKeyService(t, keyservice.New(d, slog.New(slog.DiscardHandler)), cp.Issuer, members)

	k := &KeyServiceMeshRoot{Keys: &KeyServiceDiskKeys{Endpoints: fixedAddrs(ksAddr), Issuer: cp.Issuer, Config: config, Roles: roles{"node-0": true}}}
	got, err := k.PresharedRoot(ctx)
	if err != nil {
		t.Fatalf("PresharedRoot: %v", err)
	}
	want, err := MeshRootFromMaster(d)
	if err != nil || got != want || got == (wgmesh.Key{}) {
		t.Fatalf("the key service's root %s differs from the master secret's %s (%v)", got, want, err)
	}
	stopKeyService()
	if again, err := k.PresharedRoot(ctx); err != nil || again != got {
		t.Fatalf("the second PresharedRoot asked the key service again: %s, %v", again, err)
	}
}
