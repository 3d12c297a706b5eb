package kubeadm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// containerd reads its registry configuration from RegistryHostsDir, where each mirrored registry has a
// hosts.toml that names only the mirror: the mirror as server too, so that containerd never falls back to the
// registry itself.
func TestRegistryMirrors(t *testing.T) {
	cfg, err := ContainerdConfigFile(Options{PauseImage: "registry.k8s.io/pause:3.10.2"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "[plugins.\"io.containerd.cri.v1.images\".registry]\n  # One <registry>/hosts.toml per mirrored registry (ConfigureRegistryMirrors); no other registry is reachable.\n  config_path = \"/etc/containerd/certs.d\"\n") {
		t.Fatalf("containerd configuration without config_path:\n%s", cfg)
	}
	d := &Driver{hostsDir: filepath.Join(t.TempDir(), "certs.d")}
	if err := d.ConfigureRegistryMirrors([]registrymirror.Mirror{{Registry: "docker.io", Endpoints: []string{"http://10.217.0.1:5000"}}}, nil); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(d.hostsDir, "docker.io", "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"server = \"http://10.217.0.1:5000\"\n", "[host.\"http://10.217.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("hosts.toml lacks %q:\n%s", want, raw)
		}
	}
	if strings.Contains(string(raw), "docker.io\"") || strings.Contains(string(raw), "registry-1") {
		t.Errorf("hosts.toml names the upstream registry:\n%s", raw)
	}
}
