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

// KeyServiceDiskKeys gets disk keys from the cluster's key service over mutual aTLS: this service attests
// itself with issuer, and the key service must prove it is a member of this cluster (the cluster's
// measurements and its cluster ID in PCR 15). It keeps one connection for all joins while the configuration
// stays the same: one handshake, not one per join, which the key service would limit per source.
type KeyServiceDiskKeys struct {
	Addr   string
	Issuer attestation.Issuer
	Config *Config

	mu     sync.Mutex
	client *keyservice.Client
	state  *State // the configuration client trusts the key service by
	addr   string // the address client connects to
}

// clientFor returns the connection to the key service that trusts it by s.
func (k *KeyServiceDiskKeys) clientFor(s *State) (*keyservice.Client, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.client != nil && k.state == s && k.addr == k.Addr {
		return k.client, nil
	}
	v, err := s.MemberValidator()
	if err != nil {
		return nil, err
	}
	c, err := keyservice.NewClient(k.Addr, k.Issuer, []attestation.Validator{v})
	if err != nil {
		return nil, err
	}
	if k.client != nil {
		k.client.Close()
	}
	k.client, k.state, k.addr = c, s, k.Addr
	return c, nil
}

// DiskKey asks the key service for the key of a disk on behalf of node. The key service keeps the record of
// which node each disk belongs to and refuses the key to any other node.
func (k *KeyServiceDiskKeys) DiskKey(ctx context.Context, uuid, node string) ([]byte, error) {
	if err := CheckDiskUUID(uuid); err != nil {
		return nil, err
	}
	if node == "" {
		return nil, errors.New("a disk key is handed out only for a named node")
	}
	if k.Addr == "" {
		return nil, errors.New("no key service configured")
	}
	s, err := k.Config.Current()
	if err != nil {
		return nil, err
	}
	c, err := k.clientFor(s)
	if err != nil {
		return nil, err
	}
	key, err := c.GetDiskKey(ctx, uuid, node, joinpb.DiskKeyLength)
	if status.Code(err) == codes.PermissionDenied {
		return nil, fmt.Errorf("%w: %w", ErrDiskOfAnotherNode, err)
	}
	return key, err
}

// MemberPolicy is the policy of a node that belongs to the cluster: its measurements, and the cluster ID
// measured into PCR 15.
func MemberPolicy(s *State) measurements.M {
	return measurements.MemberPolicy(s.Policy, s.ClusterID)
}
