package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// A new mini configuration mirrors localhost:<port> and the public registries to the provider's mirror, and not
// registry.k8s.io (the nodes' Kubernetes images come from the node image); --registry-port moves the loopback
// name.
func TestConfigGenerateMirrors(t *testing.T) {
	imageDir := t.TempDir()
	write(t, filepath.Join(imageDir, "measurements.json"), []byte(`{"4":{"expected":"0700000000000000000000000000000000000000000000000000000000000000"},"8":{"expected":"0800000000000000000000000000000000000000000000000000000000000000"}}`))
	rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: "sha256:0700000000000000000000000000000000000000000000000000000000000000", Cmdline: nodeimage.DefaultCmdline})
	write(t, filepath.Join(imageDir, "node-image.json"), rawManifest)
	ws := t.TempDir()
	if out, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws, "--registry-port", "5002"}, signImage(t, imageDir)...)...); code != 0 {
		t.Fatalf("config generate: %d %s %s", code, out, errOut)
	}
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range c.RegistryMirrors {
		names = append(names, m.Registry)
		if len(m.Endpoints) != 1 || m.Endpoints[0] != "http://10.217.0.1:5000" {
			t.Errorf("%s: endpoints %v", m.Registry, m.Endpoints)
		}
	}
	if got := strings.Join(names, " "); got != "localhost:5002 docker.io ghcr.io quay.io" || c.Provider.Mini.RegistryPort != 5002 {
		t.Fatalf("mirrored: %s, port %d", got, c.Provider.Mini.RegistryPort)
	}
	lines := mirrorLines(c.Mirrors(), registryHostPort(c))
	for _, want := range []string{
		"registry mirror: localhost:5002 -> http://10.217.0.1:5000 (pushed from the host as localhost:5002/<repository>)",
		"registry mirror: docker.io -> http://10.217.0.1:5000 (pushed from the host as localhost:5002/docker.io/<repository>)",
	} {
		if !strings.Contains(lines, want) {
			t.Errorf("status lacks %q:\n%s", want, lines)
		}
	}
	if mini.RegistryEndpoint() != "http://10.217.0.1:5000" {
		t.Fatal(mini.RegistryEndpoint())
	}
}
