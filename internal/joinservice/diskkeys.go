package joinservice

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
)

// DiskKeys returns the key of a node's state disk.
type DiskKeys interface {
	// DiskKey returns the key of the disk for node, the attested name of the node that presents it. A disk
	// belongs to the first node that got its key; for any other node DiskKey fails with an error that wraps
	// [ErrDiskOfAnotherNode].
	DiskKey(ctx context.Context, diskUUID, node string) ([]byte, error)
}

// ErrDiskOfAnotherNode says that a node presented a state disk that is bound to another node.
var ErrDiskOfAnotherNode = errors.New("the state disk belongs to another node")

// diskUUID is the canonical, lower-case form of a disk UUID, the only form accepted as a key identifier.
var diskUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// CheckDiskUUID checks that a disk UUID has the canonical form.
func CheckDiskUUID(uuid string) error {
	if !diskUUID.MatchString(uuid) {
		return fmt.Errorf("disk UUID %.60q is not a lower-case RFC 4122 UUID", uuid)
	}
	return nil
}

// KeyServiceDiskKeys gets disk keys from whichever key service of the cluster answers (one runs on every
// control-plane node), over mutual aTLS: this service attests itself with issuer, and the key service must
// prove it is a member of this cluster (the cluster's measurements and its cluster ID in PCR 15) on a node
// that Roles names a control-plane node. It keeps one connection per key service for all joins while the
// configuration stays the same: one handshake, not one per join, which the key service would limit per source.
type KeyServiceDiskKeys struct {
	// Endpoints lists the key services' addresses, tried in order (see keyservice.ControlPlaneAddrs).
	Endpoints func(ctx context.Context) ([]string, error)
	Issuer    attestation.Issuer
	Config    *Config
	// Roles tells control-plane nodes: a key service anywhere else is not trusted.
	Roles Roles

	mu    sync.Mutex
	pool  *keyservice.Pool
	state *State // the configuration pool trusts the key services by
}

// poolFor returns the key services that are trusted by s.
func (k *KeyServiceDiskKeys) poolFor(s *State) (*keyservice.Pool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.pool != nil && k.state == s {
		return k.pool, nil
	}
	if k.Endpoints == nil || k.Roles == nil {
		return nil, errors.New("no key service configured")
	}
	v, err := s.MemberValidator()
	if err != nil {
		return nil, err
	}
	if k.pool != nil {
		k.pool.Close()
	}
	k.pool = &keyservice.Pool{Endpoints: k.Endpoints, Issuer: k.Issuer, Validator: keyservice.ControlPlaneOnly(v, k.Roles.IsControlPlane)}
	k.state = s
	return k.pool, nil
}

// do calls fn with a key service of the cluster, trusted by the current configuration.
func (k *KeyServiceDiskKeys) do(ctx context.Context, fn func(ctx context.Context, c *keyservice.Client) error) error {
	s, err := k.Config.Effective(ctx)
	if err != nil {
		return err
	}
	p, err := k.poolFor(s)
	if err != nil {
		return err
	}
	return p.Do(ctx, fn)
}

// DiskKey asks a key service for the key of a disk on behalf of node. The key services share the record of
// which node each disk belongs to and refuse the key to any other node.
func (k *KeyServiceDiskKeys) DiskKey(ctx context.Context, uuid, node string) ([]byte, error) {
	if err := CheckDiskUUID(uuid); err != nil {
		return nil, err
	}
	if node == "" {
		return nil, errors.New("a disk key is handed out only for a named node")
	}
	var key []byte
	err := k.do(ctx, func(ctx context.Context, c *keyservice.Client) error {
		var err error
		key, err = c.GetDiskKey(ctx, uuid, node, joinpb.DiskKeyLength)
		return err
	})
	if status.Code(err) == codes.PermissionDenied {
		return nil, fmt.Errorf("%w: %w", ErrDiskOfAnotherNode, err)
	}
	return key, err
}

// MemberPolicy is the policy of a node that belongs to the cluster: its measurements (the first set in force),
// and the cluster ID measured into PCR 15.
func MemberPolicy(s *State) measurements.M {
	return measurements.MemberPolicy(s.Policy, s.ClusterID)
}
