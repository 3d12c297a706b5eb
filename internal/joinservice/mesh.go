package joinservice

import (
	"context"
	"errors"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// ClusterMesh is the Mesh of a join service on a control-plane node: a node it admits becomes a peer of this
// node's WireGuard agent at once (over meshpeers.LocalSocket), so that the new node reaches this control plane
// through the tunnel before its kubelet has registered; the mesh as a whole is read from the Node objects
// with the join service's service account (which may list Nodes).
type ClusterMesh struct {
	Local *meshpeers.AdmitClient
	API   *kubeapi.Client
	// Root gives the mesh's root key for preshared keys.
	Root *KeyServiceMeshRoot
}

// PresharedRoot implements Mesh.
func (m ClusterMesh) PresharedRoot(ctx context.Context) (wgmesh.Key, error) {
	if m.Root == nil {
		return wgmesh.Key{}, errors.New("no source of the WireGuard preshared root key")
	}
	return m.Root.PresharedRoot(ctx)
}

// Admit implements Mesh.
func (m ClusterMesh) Admit(ctx context.Context, name string, key wgmesh.Key) error {
	return m.Local.Admit(ctx, name, key)
}

// List implements Mesh. Nodes with a malformed key are left out: they are no peers.
func (m ClusterMesh) List(ctx context.Context) ([]meshpeers.Peer, error) {
	peers, _, err := meshpeers.List(ctx, m.API)
	return peers, err
}
