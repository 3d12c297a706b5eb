package joinservice

import (
	"bytes"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// Every joining node gets the cluster's registry mirrors from the join configuration. Whoever can edit that
// ConfigMap without the master secret (the host cannot reach it but through the cluster; an administrator can)
// and rewrites the mirrors, to send the nodes' pulls to a server of its own, to add an upstream fallback or a
// field the node does not know, or to drop the list, gets no node admitted: the MAC does not verify. The same
// change made with the master secret takes effect.
func TestEditedRegistryMirrorsAreRefused(t *testing.T) {
	cp := swtpmNode(t)
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	mirrors := []registrymirror.Mirror{
		{Registry: "localhost:5001", Endpoints: []string{"http://10.217.0.1:5000"}},
		{Registry: "docker.io", Endpoints: []string{"http://10.217.0.1:5000"}},
	}
	if _, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: clusterPolicy(node), AKRoots: roots}, bytes.Repeat([]byte{1}, 32), testMACKey,
		[]registrymirror.Mirror{{Registry: "docker.io\nskip_verify = true", Endpoints: []string{"http://10.217.0.1:5000"}}}); err == nil {
		t.Fatal("a join configuration was made with an invalid registry mirror")
	}
	data, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: clusterPolicy(node), AKRoots: roots}, bytes.Repeat([]byte{1}, 32), testMACKey, mirrors)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var logs syncBuffer
	config, err := NewConfig(dir, slog.New(slog.NewJSONHandler(&logs, nil)), testMACKey)
	if err != nil {
		t.Fatal(err)
	}
	addr := startJoinService(t, Options{Config: config}, cp.Issuer)
	join := func() (*joinpb.JoinResponse, error) {
		return joiner{addr: addr, issuer: node.Issuer, roots: []*x509.Certificate{cp.CA.Certificate()}, policy: clusterPolicy(cp)}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
	}
	resp, err := join()
	if err != nil {
		t.Fatal(err)
	}
	got, err := registrymirror.FromWire(resp.GetRegistryMirrors())
	if err != nil || len(got) != 2 || got[1].Registry != "docker.io" || got[1].Endpoints[0] != "http://10.217.0.1:5000" {
		t.Fatalf("the joining node got mirrors %+v, %v", got, err)
	}
	original := []byte(data[RegistryMirrorsFile])
	path := filepath.Join(dir, RegistryMirrorsFile)
	for name, edit := range map[string]func(){
		"the host's own server": func() {
			os.WriteFile(path, bytes.ReplaceAll(original, []byte("10.217.0.1:5000"), []byte("10.217.0.1:6000")), 0o644)
		},
		"an upstream fallback": func() {
			os.WriteFile(path, bytes.Replace(original, []byte(`"http://10.217.0.1:5000"]},{"registry":"docker.io"`), []byte(`"http://10.217.0.1:5000","https://34.226.69.105"]},{"registry":"docker.io"`), 1), 0o644)
		},
		"a field the node does not know": func() {
			os.WriteFile(path, bytes.Replace(original, []byte(`"registry":"docker.io"`), []byte(`"registry":"docker.io","skipVerify":true`), 1), 0o644)
		},
		"another registry mirrored": func() {
			os.WriteFile(path, bytes.Replace(original, []byte(`]`), []byte(`,{"registry":"registry.k8s.io","endpoints":["http://10.217.0.1:5000"]}]`), 1), 0o644)
		},
		"no mirrors": func() { os.Remove(path) },
	} {
		t.Run(name, func(t *testing.T) {
			defer os.WriteFile(path, original, 0o644)
			edit()
			if raw, _ := os.ReadFile(path); bytes.Equal(raw, original) {
				t.Fatal("the edit changed nothing")
			}
			before := strings.Count(logs.String(), "join configuration refused")
			if resp, err := join(); err == nil {
				t.Fatalf("a node joined with the edited mirrors %+v", resp.GetRegistryMirrors())
			}
			if after := strings.Count(logs.String(), "join configuration refused"); after != before+1 {
				t.Fatalf("the edit was logged %d times, want once", after-before)
			}
		})
	}
	// An authentic change (with the master secret) takes effect.
	writeSigned(t, dir, RegistryMirrorsFile, []byte(`[{"registry":"quay.io","endpoints":["http://10.217.0.1:5000"]}]`))
	resp, err = join()
	if err != nil {
		t.Fatalf("after an authentic change of the mirrors: %v", err)
	}
	if m := resp.GetRegistryMirrors(); len(m) != 1 || m[0].GetRegistry() != "quay.io" {
		t.Fatalf("mirrors after the authentic change: %+v", m)
	}
}
