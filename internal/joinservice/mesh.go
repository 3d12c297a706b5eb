package joinservice

import (
	"context"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// APIMesh is the cluster's record of its WireGuard mesh on the Node objects, written with the join service's
// service account (which may create Nodes and patch them, nothing else about them).
type APIMesh struct {
	API *kubeapi.Client
}

// Register implements Mesh.
func (m APIMesh) Register(ctx context.Context, name string, key wgmesh.Key) error {
	return meshpeers.Register(ctx, m.API, name, key)
}

// List implements Mesh. Nodes with a malformed key are left out: they are no peers.
func (m APIMesh) List(ctx context.Context) ([]meshpeers.Peer, error) {
	peers, _, err := meshpeers.List(ctx, m.API)
	return peers, err
}
