package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kms/kmip/kmiptest"
)

// kmsWorkspace starts a real KMIP server and writes a KMS configuration for it.
func kmsWorkspace(t *testing.T) (srv *kmiptest.Server, dir, config string) {
	t.Helper()
	srv = kmiptest.StartForTest(t)
	dir = t.TempDir()
	write(t, filepath.Join(dir, "kms-ca.pem"), srv.ServerCA)
	write(t, filepath.Join(dir, "client.pem"), srv.ClientCert)
	write(t, filepath.Join(dir, "client-key.pem"), srv.ClientKey)
	write(t, filepath.Join(dir, "untrusted.pem"), srv.UntrustedClientCert)
	write(t, filepath.Join(dir, "untrusted-key.pem"), srv.UntrustedClientKey)
	config = filepath.Join(dir, "kms.yaml")
	writeKMSConfig(t, config, srv.Endpoint, "client", "")
	return srv, dir, config
}

func writeKMSConfig(t *testing.T, path, endpoint, client, keyID string) {
	t.Helper()
	write(t, path, []byte("kmip:\n  endpoint: "+endpoint+"\n  serverCA: kms-ca.pem\n  clientCert: "+client+".pem\n  clientKey: "+client+"-key.pem\n  keyID: \""+keyID+"\"\n"))
}

var keyIDPattern = regexp.MustCompile(`Created key-encryption key (\S+) on`)

func createKEK(t *testing.T, config string) string {
	t.Helper()
	out, errOut, code := run("kms", "create-kek", "--kms-config", config)
	m := keyIDPattern.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("create-kek: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	return m[1]
}

func TestKMSCommands(t *testing.T) {
	srv, dir, config := kmsWorkspace(t)
	secretFile := filepath.Join(dir, kms.MasterSecretFileName)

	// init needs a KEK ID in the configuration.
	if _, errOut, code := run("kms", "init", "--workspace", dir, "--kms-config", config); code != 2 || !strings.Contains(errOut, "no kmip.keyID") {
		t.Fatalf("init without a key ID: code %d, stderr %q", code, errOut)
	}
	kek1 := createKEK(t, config)
	writeKMSConfig(t, config, srv.Endpoint, "client", kek1)

	out, errOut, code := run("kms", "init", "--workspace", dir, "--kms-config", config)
	if code != 0 || !strings.Contains(out, "wrapped by key-encryption key "+kek1) {
		t.Fatalf("init: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	f, err := kms.ReadSecretFile(secretFile)
	if err != nil || !f.IsWrapped() || f.Wrapped.KeyID != kek1 {
		t.Fatalf("secret file after init: %v %+v", err, f)
	}
	if _, errOut, code := run("kms", "init", "--workspace", dir, "--kms-config", config); code != 2 || !strings.Contains(errOut, "refusing to overwrite") {
		t.Fatalf("second init: code %d, stderr %q", code, errOut)
	}

	kek2 := createKEK(t, config)
	out, errOut, code = run("kms", "rotate", "--workspace", dir, "--kms-config", config, "--new-key-id", kek2, "--revoke-old")
	if code != 0 || !strings.Contains(out, "re-wrapped with key-encryption key "+kek2) || !strings.Contains(out, "Revoked the old key-encryption key "+kek1) {
		t.Fatalf("rotate: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	rotated, err := kms.ReadSecretFile(secretFile)
	if err != nil || rotated.Wrapped.KeyID != kek2 || string(rotated.Salt) != string(f.Salt) {
		t.Fatalf("secret file after rotate: %v", err)
	}

	// A client certificate the KMS does not trust: a clear error, nothing changes.
	before, _ := os.ReadFile(secretFile)
	bad := filepath.Join(dir, "bad.yaml")
	writeKMSConfig(t, bad, srv.Endpoint, "untrusted", kek2)
	kek3 := createKEK(t, config)
	_, errOut, code = run("kms", "rotate", "--workspace", dir, "--kms-config", bad, "--new-key-id", kek3)
	if code != 1 || !strings.Contains(errOut, "TLS handshake with KMS") || !strings.Contains(errOut, "unchanged") {
		t.Fatalf("rotate with an untrusted client certificate: code %d, stderr %q", code, errOut)
	}
	// An unknown KEK: a clear error, nothing changes.
	_, errOut, code = run("kms", "rotate", "--workspace", dir, "--kms-config", config, "--new-key-id", "no-such-key")
	if code != 1 || !strings.Contains(errOut, "Could not locate object: no-such-key") {
		t.Fatalf("rotate to an unknown KEK: code %d, stderr %q", code, errOut)
	}
	if after, _ := os.ReadFile(secretFile); string(after) != string(before) {
		t.Fatal("a failed rotation changed the master secret file")
	}

	// The KMS is down: init fails after its retries and writes nothing.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	_, errOut, code = run("kms", "init", "--workspace", other, "--kms-config", config)
	if code != 1 || !strings.Contains(errOut, "unreachable") || !strings.Contains(errOut, "nothing was written") {
		t.Fatalf("init with the KMS down: code %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(other, kms.MasterSecretFileName)); !os.IsNotExist(err) {
		t.Fatalf("init with the KMS down wrote a file: %v", err)
	}
}

func TestKMSInitPlain(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := run("kms", "init", "--workspace", dir)
	if code != 0 || !strings.Contains(out, "in plain form") {
		t.Fatalf("init: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	f, err := kms.ReadSecretFile(filepath.Join(dir, kms.MasterSecretFileName))
	if err != nil || f.IsWrapped() {
		t.Fatalf("plain secret file: %v", err)
	}
	if strings.Contains(out+errOut, string(f.Plain.Key)) {
		t.Fatal("the secret was printed")
	}
	for name, args := range map[string][]string{
		"missing config":   {"kms", "init", "--workspace", t.TempDir(), "--kms-config", filepath.Join(dir, "nope.yaml")},
		"rotate plain":     {"kms", "rotate", "--workspace", dir, "--kms-config", filepath.Join(dir, "nope.yaml"), "--new-key-id", "x"},
		"rotate no key ID": {"kms", "rotate", "--workspace", dir, "--kms-config", "x"},
	} {
		if _, errOut, code := run(args...); code != 2 {
			t.Errorf("%s: code %d, stderr %q", name, code, errOut)
		}
	}
}
