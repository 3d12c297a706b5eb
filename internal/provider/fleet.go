package provider

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// FleetCredentialSize is the size of the controller credential: random bytes that the CLI generates when it
// creates the cluster. The provider knows only their SHA-256 and changes the cluster's nodes ([Fleet]) only for
// a caller who presents the credential itself; the cluster keeps it in the Secret [FleetSecretName].
const FleetCredentialSize = 32

// The Secret in which the cluster keeps what its upgrade controller needs to reach the provider's [Fleet]: the
// provider's name, its endpoint and the controller credential.
const (
	FleetSecretNamespace = "kube-system"
	FleetSecretName      = "constellation-provider-credential"
	// Keys of the Secret's data.
	FleetSecretProvider   = "provider"
	FleetSecretEndpoint   = "endpoint"
	FleetSecretCredential = "credential" // the raw FleetCredentialSize bytes
)

// FleetAccess is how the cluster's upgrade controller reaches its provider's [Fleet] (package providers opens
// it).
type FleetAccess struct {
	Provider, Endpoint string
	Credential         []byte
}

// Secret returns the Kubernetes Secret that keeps a in the cluster (kube-system/constellation-provider-credential),
// for the API server (a POST to /api/v1/namespaces/kube-system/secrets) or `kubectl apply`.
func (a FleetAccess) Secret() (map[string]any, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Secret",
		"metadata":   kubeapi.Meta("provider-credential", FleetSecretName),
		"type":       "Opaque",
		"immutable":  true,
		// encoding/json writes []byte in base64, as Kubernetes wants a Secret's data.
		"data": map[string][]byte{
			FleetSecretProvider:   []byte(a.Provider),
			FleetSecretEndpoint:   []byte(a.Endpoint),
			FleetSecretCredential: a.Credential,
		},
	}, nil
}

// FleetAccessFromSecret reads a FleetAccess from the data of the Secret [FleetAccess.Secret] wrote (as a
// Kubernetes client or the files of a mounted Secret give it).
func FleetAccessFromSecret(data map[string][]byte) (FleetAccess, error) {
	a := FleetAccess{Provider: string(data[FleetSecretProvider]), Endpoint: string(data[FleetSecretEndpoint]), Credential: data[FleetSecretCredential]}
	if err := a.check(); err != nil {
		return FleetAccess{}, fmt.Errorf("secret %s/%s: %w", FleetSecretNamespace, FleetSecretName, err)
	}
	return a, nil
}

func (a FleetAccess) check() error {
	switch {
	case a.Provider == "":
		return errors.New("no provider name")
	case a.Endpoint == "":
		return errors.New("no provider endpoint")
	case len(a.Credential) != FleetCredentialSize:
		// Never print the credential, not even a damaged one.
		return fmt.Errorf("the controller credential has %d bytes, want %d", len(a.Credential), FleetCredentialSize)
	}
	return nil
}

// nodeName is what a provider may call a node: a DNS label, as Kubernetes wants a node's name.
var nodeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// CheckNodeName tells whether name can be a node's name (a lowercase DNS label of at most 63 characters).
func CheckNodeName(name string) error {
	if !nodeName.MatchString(name) {
		return fmt.Errorf("%q is not a node name (a lowercase DNS label of at most 63 characters)", name)
	}
	return nil
}

// imageDigest is a node image's digest as the provider names it.
var imageDigest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// CheckImageDigest tells whether digest names a node image: "sha256:" and 64 lowercase hex digits.
func CheckImageDigest(digest string) error {
	if !imageDigest.MatchString(digest) {
		return fmt.Errorf("%q is not a node image digest (sha256: and 64 lowercase hex digits)", digest)
	}
	return nil
}

// CheckRole tells whether role is a node's role.
func CheckRole(role string) error {
	if role != RoleControlPlane && role != RoleWorker {
		return fmt.Errorf("%q is not a node role (%s or %s)", role, RoleControlPlane, RoleWorker)
	}
	return nil
}
