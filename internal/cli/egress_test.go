package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/config"
)

// What status prints of the configuration names the mirrors with credentials and the DNS servers, never a
// credential.
func TestStatusShowsNoCredentials(t *testing.T) {
	const password, token = "S3cret-pa55w0rd", "t0ken-secret-value"
	c := &config.Config{
		Version:  config.Version,
		Provider: config.Provider{QEMU: &config.QEMU{ControlPlanes: 1, Image: "node-image.raw", ImageDigest: "sha256:" + strings.Repeat("cd", 32)}},
		Attestation: config.Attestation{Variant: "qemu-vtpm", Measurements: measurements.M{
			0: {Expected: measurements.Digest{9}}, 4: {Expected: measurements.Digest{1}}, 11: {Expected: measurements.Digest{2}}, 12: {}, 13: {},
		}},
	}
	raw, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, `registryMirrors:
- registry: docker.io
  endpoints: ["https://10.0.0.5:5443"]
  credentials: {username: robot, password: `+password+`}
- registry: ghcr.io
  endpoints: ["https://10.0.0.6"]
  credentials: {token: `+token+`}
nodes:
  dns: [10.0.0.53]
`...)
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, config.FileName), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(filepath.Join(ws, config.FileName)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printRegistryMirrors(&out, ws)
	for _, want := range []string{"node DNS servers: 10.0.0.53", "registry mirror: docker.io -> https://10.0.0.5:5443", "registry mirrors with credentials: docker.io, ghcr.io"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), password) || strings.Contains(out.String(), token) {
		t.Fatalf("status shows a credential:\n%s", out.String())
	}
}
