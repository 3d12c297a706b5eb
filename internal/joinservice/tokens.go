package joinservice

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// APITokens creates bootstrap tokens as Secrets through the Kubernetes API, with the pod's service account.
// The account needs only the right to create Secrets in kube-system.
type APITokens struct {
	api     *kubeapi.Client
	nowFunc func() time.Time
}

// NewAPITokens returns a token creator that uses api.
func NewAPITokens(api *kubeapi.Client) *APITokens {
	return &APITokens{api: api, nowFunc: time.Now}
}

// tokenAlphabet is the character set of bootstrap token IDs and secrets.
const tokenAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// randomToken returns n characters drawn uniformly from tokenAlphabet.
func randomToken(n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, 2*n)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		for _, b := range buf {
			// 252 is the largest multiple of 36 below 256: rejecting larger bytes keeps the draw uniform.
			if b < 252 && len(out) < n {
				out = append(out, tokenAlphabet[b%36])
			}
		}
	}
	return string(out), nil
}

// CreateToken creates a bootstrap token valid for ttl, usable for joining (authentication and signing).
func (t *APITokens) CreateToken(ctx context.Context, ttl time.Duration) (string, error) {
	id, err := randomToken(6)
	if err != nil {
		return "", err
	}
	secret, err := randomToken(16)
	if err != nil {
		return "", err
	}
	secretObj := map[string]any{
		"apiVersion": "v1",
		"kind":       "Secret",
		"metadata":   map[string]any{"name": "bootstrap-token-" + id, "namespace": "kube-system"},
		"type":       "bootstrap.kubernetes.io/token",
		"stringData": map[string]string{
			"token-id":                       id,
			"token-secret":                   secret,
			"expiration":                     t.nowFunc().Add(ttl).UTC().Format(time.RFC3339),
			"usage-bootstrap-authentication": "true",
			"usage-bootstrap-signing":        "true",
			"auth-extra-groups":              "system:bootstrappers:kubeadm:default-node-token",
			"description":                    "constellation join",
		},
	}
	if err := t.api.Do(ctx, http.MethodPost, "/api/v1/namespaces/kube-system/secrets", "", secretObj, nil); err != nil {
		return "", fmt.Errorf("creating a bootstrap token: %w", err)
	}
	return id + "." + secret, nil
}

// errNoServer is returned by InClusterServer outside a pod.
var errNoServer = errors.New("KUBERNETES_SERVICE_HOST is not set: not running in a pod; pass the API server address")

// InClusterServer returns the API server address Kubernetes gives every pod.
func InClusterServer() (string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", errNoServer
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return "https://" + host + ":" + port, nil
}
