package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/provider"
)

// The controller credential is generated once per workspace, from crypto/rand, kept readable by its owner
// only and reused by a retried apply; a damaged or exposed file is refused, never replaced, and the error does
// not show its content.
func TestControllerCredentialIsGeneratedOnceAndKeptPrivate(t *testing.T) {
	ws := t.TempDir()
	cred, err := loadOrCreateControllerCredential(ws)
	if err != nil {
		t.Fatal(err)
	}
	if len(cred) != provider.FleetCredentialSize || bytes.Equal(cred, make([]byte, len(cred))) {
		t.Fatalf("controller credential of %d bytes: %x", len(cred), cred)
	}
	path := filepath.Join(ws, ControllerCredentialFile)
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want mode 0600", path, info.Mode().Perm(), err)
	}
	if again, err := loadOrCreateControllerCredential(ws); err != nil || !bytes.Equal(again, cred) {
		t.Fatalf("a retried apply got another controller credential (%v): the provider would refuse it", err)
	}
	if other, _ := loadOrCreateControllerCredential(t.TempDir()); bytes.Equal(other, cred) {
		t.Fatal("two workspaces got the same credential")
	}
	os.Chmod(path, 0o644)
	if _, err := loadOrCreateControllerCredential(ws); err == nil {
		t.Fatal("a credential file that others can read was used")
	}
	damaged := hex.EncodeToString(cred)[:40]
	os.WriteFile(path, []byte(damaged), 0o600)
	os.Chmod(path, 0o600)
	if _, err := loadOrCreateControllerCredential(ws); err == nil || strings.Contains(err.Error(), damaged) {
		t.Fatalf("a damaged credential file: %v", err)
	}
	if raw, _ := os.ReadFile(path); string(raw) != damaged {
		t.Fatal("a damaged credential file was replaced")
	}
}

// After init, apply keeps the controller credential in the cluster, in the Secret the upgrade controller
// reads: against a real API server, the Secret holds exactly the provider's name, endpoint and the
// credential, is immutable, and a later apply with another credential replaces it.
func TestStoreFleetAccess(t *testing.T) {
	srv := kubeapitest.Start(t)
	ws := t.TempDir()
	admin, err := srv.WriteKubeconfig(t.TempDir(), "admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(admin)
	if err := os.WriteFile(filepath.Join(ws, AdminKubeconfigFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cred, err := loadOrCreateControllerCredential(ws)
	if err != nil {
		t.Fatal(err)
	}
	access := provider.FleetAccess{Provider: "mini", Endpoint: "http://10.217.0.1:8080", Credential: cred}
	read := func() (provider.FleetAccess, bool) {
		var secret struct {
			Immutable bool              `json:"immutable"`
			Data      map[string][]byte `json:"data"`
		}
		if err := srv.Client(t).Do(ctx, http.MethodGet, "/api/v1/namespaces/kube-system/secrets/"+provider.FleetSecretName, "", nil, &secret); err != nil {
			t.Fatal(err)
		}
		if len(secret.Data) != 3 {
			t.Fatalf("the Secret holds %d keys", len(secret.Data))
		}
		got, err := provider.FleetAccessFromSecret(secret.Data)
		if err != nil {
			t.Fatal(err)
		}
		return got, secret.Immutable
	}
	for range 2 { // a retried apply finds it in place
		if err := storeFleetAccess(ctx, ws, access); err != nil {
			t.Fatal(err)
		}
		if got, immutable := read(); got.Provider != "mini" || got.Endpoint != access.Endpoint || !bytes.Equal(got.Credential, cred) || !immutable {
			t.Fatalf("the Secret: %s %s, immutable %v, the credential matches: %v", got.Provider, got.Endpoint, immutable, bytes.Equal(got.Credential, cred))
		}
	}
	access.Credential = bytes.Repeat([]byte{7}, provider.FleetCredentialSize)
	if err := storeFleetAccess(ctx, ws, access); err != nil {
		t.Fatal(err)
	}
	if got, _ := read(); !bytes.Equal(got.Credential, access.Credential) {
		t.Fatal("a new credential did not replace the old one")
	}
	access.Credential = cred[:8]
	if err := storeFleetAccess(ctx, ws, access); err == nil || strings.Contains(err.Error(), hex.EncodeToString(cred[:8])) {
		t.Fatalf("a short credential: %v", err)
	}
}
