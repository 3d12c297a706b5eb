// Package providers opens the provider a node runs on, by name: the one place on the node side that knows
// the providers' packages.
package providers

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/provider/qemu/guest"
)

// Names are the providers a node can run on.
var Names = []string{metadata.ProviderName, guest.ProviderName}

// Node opens the provider name, reachable at endpoint (for mini and qemu: its metadata service's URL).
func Node(name, endpoint string) (provider.Node, error) {
	switch name {
	case metadata.ProviderName, guest.ProviderName:
		if endpoint == "" {
			return nil, fmt.Errorf("provider %s: no endpoint (the metadata service's URL)", name)
		}
		if name == guest.ProviderName {
			return guest.NewClient(endpoint), nil
		}
		return metadata.NewClient(endpoint), nil
	default:
		return nil, fmt.Errorf("unknown provider %q; known: %v", name, Names)
	}
}

// Fleet opens the fleet of provider name, reachable at endpoint (as for [Node]), for the cluster's upgrade
// controller, which presents credential (the controller credential of the Secret
// provider.FleetSecretName; see provider.FleetAccessFromSecret).
func Fleet(name, endpoint string, credential []byte) (provider.Fleet, error) {
	switch name {
	case metadata.ProviderName:
		if endpoint == "" {
			return nil, fmt.Errorf("provider %s: no endpoint (the metadata service's URL)", name)
		}
		fleet, err := metadata.NewFleetClient(endpoint, credential)
		if err != nil {
			return nil, fmt.Errorf("provider %s: %w", name, err)
		}
		return fleet, nil
	case guest.ProviderName:
		return nil, fmt.Errorf("provider %s cannot create or delete nodes on request yet; replace its machines with 'constellation apply'", name)
	default:
		return nil, fmt.Errorf("unknown provider %q; known: %v", name, Names)
	}
}

// Machine is what a node's first process learns from its platform at boot: the provider seam, the TPM (a unix
// socket or a character device) and the state disk ("" for none).
type Machine struct {
	Provider  provider.Node
	TPM       string
	StateDisk string
}

// Boot prepares the platform of the node's first process on provider name. On mini the provider's sandbox
// hands over its metadata service, TPM socket and state disk in the environment (CONSTELLATION_METADATA,
// CONSTELLATION_TPM, CONSTELLATION_STATE_DISK); on qemu the virtual machine configures its network from its
// MAC address and uses its own TPM (package guest).
func Boot(ctx context.Context, name string, log *slog.Logger) (*Machine, error) {
	switch name {
	case metadata.ProviderName:
		prov, err := Node(name, os.Getenv("CONSTELLATION_METADATA"))
		if err != nil {
			return nil, err
		}
		tpm := os.Getenv("CONSTELLATION_TPM")
		if tpm == "" {
			return nil, fmt.Errorf("provider %s: CONSTELLATION_TPM is not set (the TPM socket the provider hands the node)", name)
		}
		return &Machine{Provider: prov, TPM: tpm, StateDisk: os.Getenv("CONSTELLATION_STATE_DISK")}, nil
	case guest.ProviderName:
		client, tpm, disk, err := guest.Prepare(ctx, log)
		if err != nil {
			return nil, fmt.Errorf("provider %s: %w", name, err)
		}
		return &Machine{Provider: client, TPM: tpm, StateDisk: disk}, nil
	default:
		return nil, fmt.Errorf("unknown provider %q; known: %v", name, Names)
	}
}
