package joinservice

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

const (
	egressPassword = "S3cret-pa55w0rd"
	egressToken    = "t0ken-secret-value"
)

var (
	egressMirrors = []registrymirror.Mirror{
		{Registry: "docker.io", Endpoints: []string{"https://10.0.0.5:5443"}},
		{Registry: "ghcr.io", Endpoints: []string{"https://10.0.0.6"}},
		{Registry: "quay.io", Endpoints: []string{"http://10.0.0.7:5000"}},
	}
	egressCreds = []registrymirror.Credentials{
		{Registry: "docker.io", Auth: registrymirror.Auth{Username: "robot", Password: egressPassword}},
		{Registry: "ghcr.io", Auth: registrymirror.Auth{Token: egressToken}},
	}
	egressDNS = []string{"10.0.0.53", "fd00::53"}
)

// writeCredentialsSecret writes the Secret's files as Kubernetes mounts them, from the manifest the first
// control-plane node applies.
func writeCredentialsSecret(t *testing.T, dir string, manifest []byte) {
	t.Helper()
	var list struct {
		Items []struct {
			Kind       string            `json:"kind"`
			Metadata   map[string]any    `json:"metadata"`
			StringData map[string]string `json:"stringData"`
		} `json:"items"`
	}
	if err := json.Unmarshal(manifest, &list); err != nil || len(list.Items) != 1 || list.Items[0].Kind != "Secret" || list.Items[0].Metadata["name"] != CredentialsSecretName {
		t.Fatalf("credentials manifest: %v", err)
	}
	for name, content := range list.Items[0].StringData {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
	}
}

// A joining node gets the registry mirrors' credentials from the join service's Secret and the DNS servers from
// the join configuration, in the attested answer only: the credentials are in no file of the join configuration
// (a ConfigMap) and in no log line of the join service; the DNS servers are under the configuration's MAC.
func TestJoinHandsOutCredentialsAndDNS(t *testing.T) {
	cp := swtpmNode(t)
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	policy := &validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: clusterPolicy(node), AKRoots: roots}
	data, err := ConfigDataWithDNS(policy, bytes.Repeat([]byte{1}, 32), testMACKey, egressMirrors, egressDNS)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range data {
		if strings.Contains(content, egressPassword) || strings.Contains(content, egressToken) {
			t.Fatalf("the join configuration's %s holds a credential", name)
		}
	}
	// Without DNS servers the configuration is what it was before DNS servers existed (the same MAC).
	plain, err := ConfigData(policy, bytes.Repeat([]byte{1}, 32), testMACKey, egressMirrors)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := plain[DNSServersFile]; ok {
		t.Fatal("a configuration without DNS servers has their file")
	}
	dir, credsDir := t.TempDir(), t.TempDir()
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	manifest, err := CredentialsManifest(testMACKey, egressMirrors, egressCreds)
	if err != nil {
		t.Fatal(err)
	}
	writeCredentialsSecret(t, credsDir, manifest)
	// The manifests of the service mount the Secret; nothing else of them holds the credentials.
	svc, err := Manifests(data, "mini", "10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(svc, []byte(`"secretName": "`+CredentialsSecretName+`"`)) || bytes.Contains(svc, []byte(egressPassword)) {
		t.Fatalf("join service manifests: mount of the credentials missing, or a credential in them")
	}
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	config, err := NewConfig(dir, log, testMACKey)
	if err != nil {
		t.Fatal(err)
	}
	addr := startJoinService(t, Options{Config: config, CredentialsDir: credsDir, Log: log}, cp.Issuer)
	join := func() (*joinpb.JoinResponse, error) {
		return joiner{addr: addr, issuer: node.Issuer, roots: []*x509.Certificate{cp.CA.Certificate()}, policy: clusterPolicy(cp)}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
	}
	resp, err := join()
	if err != nil {
		t.Fatal(err)
	}
	ms, err := registrymirror.FromWire(resp.GetRegistryMirrors())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := registrymirror.CredentialsFromWire(ms, resp.GetRegistryCredentials())
	if err != nil || !slices.Equal(cs, egressCreds) {
		t.Fatalf("the joining node got other credentials: %v, %v", cs, err)
	}
	if !slices.Equal(resp.GetDnsServers(), egressDNS) {
		t.Fatalf("the joining node got DNS servers %v", resp.GetDnsServers())
	}

	// Whoever edits the Secret without the master secret gets no node admitted, and the refusal is logged
	// without the credentials.
	credsPath := filepath.Join(credsDir, CredentialsFile)
	original, _ := os.ReadFile(credsPath)
	for name, edited := range map[string][]byte{
		"another password":         bytes.Replace(original, []byte(egressPassword), []byte("other-password"), 1),
		"credentials for quay.io":  bytes.Replace(original, []byte(`]`), []byte(`,{"registry":"quay.io","username":"u","password":"p"}]`), 1),
		"credentials removed":      []byte(`[]`),
		"TOML in the password":     bytes.Replace(original, []byte(egressPassword), []byte(egressPassword+`'\n[plugins.x]`), 1),
		"a field the node ignores": bytes.Replace(original, []byte(`"registry":"docker.io"`), []byte(`"registry":"docker.io","skipVerify":true`), 1),
	} {
		t.Run(name, func(t *testing.T) {
			defer os.WriteFile(credsPath, original, 0o400)
			os.Chmod(credsPath, 0o600)
			if err := os.WriteFile(credsPath, edited, 0o400); err != nil {
				t.Fatal(err)
			}
			if resp, err := join(); err == nil {
				t.Fatalf("a node joined with the edited credentials (%d)", len(resp.GetRegistryCredentials()))
			}
		})
	}
	os.Chmod(credsPath, 0o600)
	os.WriteFile(credsPath, original, 0o400)
	// Credentials that the mirror list of an authentic configuration does not allow (an http mirror), even with
	// a valid MAC, are refused too.
	bad := []byte(`[{"registry":"quay.io","username":"u","password":"` + egressPassword + `"}]`)
	os.Chmod(credsPath, 0o600)
	os.WriteFile(credsPath, bad, 0o400)
	os.Chmod(filepath.Join(credsDir, CredentialsMACFile), 0o600)
	os.WriteFile(filepath.Join(credsDir, CredentialsMACFile), []byte(hex.EncodeToString(CredentialsMAC(testMACKey, bad))), 0o400)
	if _, err := join(); err == nil {
		t.Fatal("a node joined with credentials for an http mirror")
	}
	if strings.Contains(logs.String(), egressPassword) || strings.Contains(logs.String(), egressToken) {
		t.Fatalf("the join service logged a credential:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "registry mirrors' credentials are not usable") {
		t.Fatalf("the refusals were not logged:\n%s", logs.String())
	}
	// Without the Secret (a cluster without credentials) nodes join without credentials.
	addr = startJoinService(t, Options{Config: config, CredentialsDir: t.TempDir()}, cp.Issuer)
	if resp, err := join(); err != nil || len(resp.GetRegistryCredentials()) != 0 {
		t.Fatalf("without the Secret: %v", err)
	}
}

// The DNS servers are under the join configuration's MAC: whoever edits the ConfigMap without the master secret
// to point the nodes at a resolver of their own, to add DNS servers to a configuration that had none, or to remove
// them, gets no node admitted.
func TestEditedDNSServersAreRefused(t *testing.T) {
	cp := swtpmNode(t)
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	policy := &validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: clusterPolicy(node), AKRoots: roots}
	for _, withDNS := range []bool{true, false} {
		var dns []string
		if withDNS {
			dns = egressDNS
		}
		data, err := ConfigDataWithDNS(policy, bytes.Repeat([]byte{1}, 32), testMACKey, egressMirrors, dns)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for name, content := range data {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		config, err := NewConfig(dir, nil, testMACKey)
		if err != nil {
			t.Fatal(err)
		}
		addr := startJoinService(t, Options{Config: config}, cp.Issuer)
		join := func() (*joinpb.JoinResponse, error) {
			return joiner{addr: addr, issuer: node.Issuer, roots: []*x509.Certificate{cp.CA.Certificate()}, policy: clusterPolicy(cp)}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
		}
		if resp, err := join(); err != nil || !slices.Equal(resp.GetDnsServers(), dns) {
			t.Fatalf("with DNS %v: %v", dns, err)
		}
		path := filepath.Join(dir, DNSServersFile)
		edits := map[string]func(){
			"a resolver of the host's": func() { os.WriteFile(path, []byte(`["6.6.6.6"]`), 0o644) },
		}
		if withDNS {
			edits["DNS servers removed"] = func() { os.Remove(path) }
			edits["one server more"] = func() { os.WriteFile(path, []byte(`["10.0.0.53","fd00::53","6.6.6.6"]`), 0o644) }
		}
		for name, edit := range edits {
			t.Run(name, func(t *testing.T) {
				original, _ := os.ReadFile(path)
				defer func() {
					if withDNS {
						os.WriteFile(path, original, 0o644)
					} else {
						os.Remove(path)
					}
				}()
				edit()
				if resp, err := join(); err == nil {
					t.Fatalf("a node joined with the edited DNS servers %v", resp.GetDnsServers())
				}
			})
		}
	}
}
