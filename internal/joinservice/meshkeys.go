package joinservice

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// MeshRootKeyID is the identifier, among the key service's data keys, of the mesh's root key for WireGuard
// preshared keys (HKDF label constellation/v1/data-key/mesh-psk). Every pair of nodes derives its preshared
// key from it and the pair's public keys ([wgmesh.PairKey]).
//
// Every node gets the root, over aTLS in its join answer, and computes the preshared keys of its pairs
// itself; the join service would otherwise have to hand every node the key of each pair again whenever a
// node joins. The price: a node that is attested and then compromised learns the preshared keys of every
// pair, not just its own. The preshared keys protect recorded traffic against a future quantum computer
// that breaks Curve25519; such an adversary then also needs the memory of one confidential node.
const MeshRootKeyID = "mesh-psk"

// MeshRootFromMaster derives the mesh's preshared root key from the master secret, as the key service
// derives it for MeshRootKeyID: the first control-plane node, which has the master secret, uses it directly.
func MeshRootFromMaster(d *kms.Deriver) (wgmesh.Key, error) {
	raw, err := d.Derive(kms.PurposeDataKey, MeshRootKeyID, len(wgmesh.Key{}))
	if err != nil {
		return wgmesh.Key{}, fmt.Errorf("deriving the WireGuard preshared root key: %w", err)
	}
	return wgmesh.Key(raw), nil
}

// KeyServiceMeshRoot gets the mesh's preshared root key from the cluster's key service, over the connection
// Keys keeps for disk keys (mutual aTLS, the key service trusted by the join configuration), once: the root
// never changes for a cluster.
type KeyServiceMeshRoot struct {
	Keys *KeyServiceDiskKeys

	mu   sync.Mutex
	root wgmesh.Key
}

// PresharedRoot returns the root key. Concurrent first calls may each ask the key service; they get the same key.
func (k *KeyServiceMeshRoot) PresharedRoot(ctx context.Context) (wgmesh.Key, error) {
	k.mu.Lock()
	root := k.root
	k.mu.Unlock()
	if root != (wgmesh.Key{}) {
		return root, nil
	}
	if k.Keys == nil {
		return wgmesh.Key{}, errors.New("no key service configured")
	}
	var raw []byte
	err := k.Keys.do(ctx, func(ctx context.Context, c *keyservice.Client) error {
		var err error
		raw, err = c.GetDataKey(ctx, keyservice.DataKeyID(kms.PurposeDataKey, MeshRootKeyID), uint32(len(wgmesh.Key{})))
		return err
	})
	if err != nil {
		return wgmesh.Key{}, fmt.Errorf("getting the WireGuard preshared root key: %w", err)
	}
	if len(raw) != len(wgmesh.Key{}) || wgmesh.Key(raw) == (wgmesh.Key{}) {
		return wgmesh.Key{}, fmt.Errorf("the key service sent a WireGuard preshared root key of %d bytes or zero", len(raw))
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.root = wgmesh.Key(raw)
	return k.root, nil
}
