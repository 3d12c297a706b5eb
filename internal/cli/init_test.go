package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms"
)

// With an external KMS, init sends the master secret file as it is (wrapped) and the KMS credentials; it never
// unwraps the secret itself. Any mismatch between the secret file and the configuration is refused before
// anything is sent or written.
func TestInitRequestKeepsTheSecretWrapped(t *testing.T) {
	srv, dir, config := kmsWorkspace(t)
	writeKMSConfig(t, config, srv.Endpoint, "client", createKEK(t, config))
	if _, errOut, code := run("kms", "init", "--workspace", dir, "--kms-config", config); code != 0 {
		t.Fatalf("kms init: %s", errOut)
	}
	secretPath := filepath.Join(dir, kms.MasterSecretFileName)
	file, err := kms.ReadSecretFile(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := kms.LoadKMIPConfig(config)
	if err != nil {
		t.Fatal(err)
	}

	req, err := initRequest(secretPath, file, conf)
	if err != nil {
		t.Fatal(err)
	}
	onDisk, _ := os.ReadFile(secretPath)
	back, err := kms.ParseSecretFile(req.GetWrappedMasterSecret())
	if err != nil || !back.IsWrapped() || back.Wrapped.KeyID != file.Wrapped.KeyID || len(req.GetMasterSecret()) != 0 || len(req.GetSalt()) != 0 {
		t.Fatalf("request does not carry exactly the wrapped secret: %v", err)
	}
	k := req.GetKmip()
	if k.GetEndpoint() != srv.Endpoint || string(k.GetServerCa()) != string(srv.ServerCA) || string(k.GetClientCert()) != string(srv.ClientCert) || string(k.GetClientKey()) != string(srv.ClientKey) {
		t.Fatal("request does not carry the KMS credentials of the configuration")
	}

	if _, err := initRequest(secretPath, file, nil); err == nil || !strings.Contains(err.Error(), "no kms.kmip section") {
		t.Fatalf("wrapped secret without KMS configuration: %v", err)
	}
	ms, _ := kms.GenerateMasterSecret()
	if _, err := initRequest(secretPath, &kms.SecretFile{Plain: ms}, conf); err == nil || !strings.Contains(err.Error(), "plain master secret") {
		t.Fatalf("plain secret with a KMS configured: %v", err)
	}
	broken := *conf
	broken.ClientKey = filepath.Join(dir, "missing-key.pem")
	if _, err := initRequest(secretPath, file, &broken); err == nil || !strings.Contains(err.Error(), "client key") {
		t.Fatalf("unreadable client key: %v", err)
	}

	// No secret file and a KMS configured: refused before a plain secret is generated.
	empty := t.TempDir()
	if _, err := initCluster(context.Background(), empty, "127.0.0.1", "", nil, conf, nil); err == nil || !strings.Contains(err.Error(), "kms init") {
		t.Fatalf("init without a secret file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(empty, kms.MasterSecretFileName)); !os.IsNotExist(err) {
		t.Fatal("init wrote a plain master secret although the configuration names a KMS")
	}
	if after, _ := os.ReadFile(secretPath); string(after) != string(onDisk) {
		t.Fatal("the secret file changed")
	}
}
