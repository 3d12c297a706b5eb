package kubeapi

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ClientsetFromServiceAccount returns a client-go clientset of server that authenticates with the service
// account in saDir (its token is read again when it is rotated), for services that watch the API.
func ClientsetFromServiceAccount(server, saDir, userAgent string) (*kubernetes.Clientset, error) {
	ca := filepath.Join(saDir, CAFile)
	if _, err := os.Stat(ca); err != nil {
		return nil, fmt.Errorf("reading the cluster CA of the service account: %w", err)
	}
	cfg := &rest.Config{
		Host:            server,
		BearerTokenFile: filepath.Join(saDir, TokenFile),
		TLSClientConfig: rest.TLSClientConfig{CAFile: ca},
		UserAgent:       userAgent,
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("a client of the API server %s: %w", server, err)
	}
	return c, nil
}
