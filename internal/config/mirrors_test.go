package config

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// The registry mirrors are part of the configuration: written and read back as they are, and validated with the
// rest, so that a name or endpoint that would add TOML of its own to the nodes' containerd configuration is never
// accepted.
func TestRegistryMirrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	c := valid()
	c.Provider.Mini.RegistryPort = 5002
	c.RegistryMirrors = WithoutCredentials([]registrymirror.Mirror{
		{Registry: "localhost:5002", Endpoints: []string{"http://10.217.0.1:5000"}},
		{Registry: "docker.io", Endpoints: []string{"http://10.217.0.1:5000"}},
	})
	if err := c.Write(path, false); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.RegistryMirrors) != 2 || got.RegistryMirrors[0].Registry != "localhost:5002" || got.Provider.Mini.RegistryPort != 5002 {
		t.Fatalf("round trip: %+v", got.RegistryMirrors)
	}
	raw, _ := c.Marshal()
	for name, edit := range map[string]func(string) string{
		"newline in a registry": func(s string) string {
			return strings.Replace(s, "registry: docker.io", `registry: "docker.io\"\nskip_verify = true\n#"`, 1)
		},
		"endpoint with options": func(s string) string {
			return strings.Replace(s, "- http://10.217.0.1:5000\n  registry: docker.io", "- \"http://10.217.0.1:5000\\\"]\\n[host.\\\"http://6.6.6.6\\\"]\"\n  registry: docker.io", 1)
		},
		"duplicate registry": func(s string) string { return strings.Replace(s, "registry: docker.io", "registry: localhost:5002", 1) },
		"unknown field": func(s string) string {
			return strings.Replace(s, "registry: docker.io", "registry: docker.io\n  skipVerify: true", 1)
		},
		"registry port": func(s string) string { return strings.Replace(s, "registryPort: 5002", "registryPort: 70000", 1) },
	} {
		edited := edit(string(raw))
		if edited == string(raw) {
			t.Fatalf("%s: the edit did not apply to\n%s", name, raw)
		}
		if _, err := Parse([]byte(edited)); err == nil {
			t.Errorf("%s: accepted\n%s", name, edited)
		}
	}
}
