package joinservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
)

// The readiness endpoint, served as the join service serves it (HTTP on loopback): not ready before the
// service serves with its loaded configuration; ready then; not ready while the configuration is edited (its
// MAC breaks, nobody is admitted) or while no key service tells the measurement policy in force; ready again
// once both are back.
func TestReadiness(t *testing.T) {
	var ready Readiness
	srv := httptest.NewServer(&ready)
	defer srv.Close()
	get := func(t *testing.T, method, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	expect := func(t *testing.T, wantCode int, wantBody string) {
		t.Helper()
		if code, body := get(t, http.MethodGet, ReadyPath); code != wantCode || !strings.Contains(body, wantBody) {
			t.Fatalf("GET %s = %d %q, want %d and %q", ReadyPath, code, body, wantCode, wantBody)
		}
	}

	expect(t, http.StatusServiceUnavailable, "join configuration is not loaded")

	node := simulatorNode(t)
	dir, config := joinConfig(t, clusterPolicy(node), []*x509.Certificate{node.CA.Certificate()}, bytes.Repeat([]byte{1}, 32), nil)
	var policyUnknown atomic.Bool
	config.FollowPolicy(func(context.Context) (*policyupdate.Update, error) {
		if policyUnknown.Load() {
			return nil, errors.New("no key service answered")
		}
		return nil, nil
	})
	ready.Serving(config)
	expect(t, http.StatusOK, "ready")

	// An administrator edits the ConfigMap without the master secret: no node is admitted, so not ready.
	idPath := filepath.Join(dir, ClusterIDFile)
	genuine, err := os.ReadFile(idPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(idPath, bytes.Repeat([]byte("2"), 64), 0o644); err != nil {
		t.Fatal(err)
	}
	expect(t, http.StatusServiceUnavailable, "MAC does not verify")
	if err := os.WriteFile(idPath, genuine, 0o644); err != nil {
		t.Fatal(err)
	}
	expect(t, http.StatusOK, "ready")

	policyUnknown.Store(true)
	expect(t, http.StatusServiceUnavailable, "no key service answered")
	policyUnknown.Store(false)
	expect(t, http.StatusOK, "ready")

	if code, _ := get(t, http.MethodPost, ReadyPath); code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s = %d, want 405", ReadyPath, code)
	}
	if code, _ := get(t, http.MethodGet, "/"); code != http.StatusNotFound {
		t.Errorf("GET / = %d, want 404", code)
	}
}
