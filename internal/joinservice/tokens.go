package joinservice

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Service account files Kubernetes mounts into every pod.
const (
	ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	tokenFile         = "token"
	caFile            = "ca.crt"
)

// APITokens creates bootstrap tokens as Secrets through the Kubernetes API, with the pod's service account.
// The account needs only the right to create Secrets in kube-system.
type APITokens struct {
	server  string // https://host:port
	saDir   string
	client  *http.Client
	nowFunc func() time.Time
}

// NewAPITokens returns a token creator that talks to the API server at server (https://host:port) and
// authenticates with the service account in saDir.
func NewAPITokens(server, saDir string) (*APITokens, error) {
	if !strings.HasPrefix(server, "https://") {
		return nil, fmt.Errorf("API server %q: want https://host:port", server)
	}
	ca, err := os.ReadFile(saDir + "/" + caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the cluster CA of the service account: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s/%s holds no PEM certificate", saDir, caFile)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return &APITokens{server: server, saDir: saDir, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, nowFunc: time.Now}, nil
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
	body, err := json.Marshal(map[string]any{
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
	})
	if err != nil {
		return "", err
	}
	saToken, err := os.ReadFile(t.saDir + "/" + tokenFile) // read per request: Kubernetes rotates it
	if err != nil {
		return "", fmt.Errorf("reading the service account token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.server+"/api/v1/namespaces/kube-system/secrets", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(saToken)))
	resp, err := t.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("creating a bootstrap token: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var status struct{ Message string }
		if json.Unmarshal(msg, &status) == nil && status.Message != "" {
			msg = []byte(status.Message)
		}
		return "", fmt.Errorf("creating a bootstrap token: the API server answered %s: %s", resp.Status, msg)
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
