// Package providers opens the provider a node runs on, by name: the one place on the node side that knows
// the providers' packages.
package providers

import (
	"fmt"

	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
)

// Names are the providers a node can run on.
var Names = []string{metadata.ProviderName}

// Node opens the provider name, reachable at endpoint (for mini: its metadata service's URL).
func Node(name, endpoint string) (provider.Node, error) {
	switch name {
	case metadata.ProviderName:
		if endpoint == "" {
			return nil, fmt.Errorf("provider %s: no endpoint (the metadata service's URL)", name)
		}
		return metadata.NewClient(endpoint), nil
	default:
		return nil, fmt.Errorf("unknown provider %q; known: %v", name, Names)
	}
}
