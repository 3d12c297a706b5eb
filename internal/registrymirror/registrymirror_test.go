package registrymirror

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// hostsFile is what containerd reads of a hosts.toml (its hostFileConfig keys we render).
type hostsFile struct {
	Server string `toml:"server"`
	Host   map[string]struct {
		Capabilities []string `toml:"capabilities"`
	} `toml:"host"`
}

// checkRendered parses a rendered hosts.toml strictly, as TOML, and checks that it says exactly what the mirror
// says: the first endpoint as server, every endpoint as a host for pull and resolve, and nothing else.
func checkRendered(t *testing.T, m Mirror, raw []byte) {
	t.Helper()
	dec := toml.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var f hostsFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("rendered hosts.toml of %+v does not parse strictly: %v\n%s", m, err, raw)
	}
	if f.Server != m.Endpoints[0] {
		t.Fatalf("server %q, want %q\n%s", f.Server, m.Endpoints[0], raw)
	}
	if len(f.Host) != len(m.Endpoints) {
		t.Fatalf("%d hosts, want %d\n%s", len(f.Host), len(m.Endpoints), raw)
	}
	for _, e := range m.Endpoints {
		h, ok := f.Host[e]
		if !ok || !slices.Equal(h.Capabilities, []string{"pull", "resolve"}) {
			t.Fatalf("host %q: %+v\n%s", e, h, raw)
		}
	}
	// The registry name becomes a directory name on the node.
	if filepath.Base(m.Registry) != m.Registry || m.Registry == "." || m.Registry == ".." || strings.ContainsAny(m.Registry, "/\\\x00") {
		t.Fatalf("registry %q is not a plain directory name", m.Registry)
	}
}

func TestValidate(t *testing.T) {
	good := []Mirror{
		{Registry: "localhost:5001", Endpoints: []string{"http://10.217.0.1:5000"}},
		{Registry: "docker.io", Endpoints: []string{"http://10.217.0.1:5000", "https://10.0.0.2"}},
		{Registry: "ghcr.io", Endpoints: []string{"http://[fd00::1]:5000"}},
		{Registry: "10.1.2.3:443", Endpoints: []string{"https://10.217.0.1:5443"}},
	}
	if err := Validate(good); err != nil {
		t.Fatal(err)
	}
	for _, m := range good {
		raw, err := HostsTOML(m)
		if err != nil {
			t.Fatal(err)
		}
		checkRendered(t, m, raw)
	}
	ep := []string{"http://10.217.0.1:5000"}
	bad := map[string][]Mirror{
		"duplicate registry":     {{Registry: "docker.io", Endpoints: ep}, {Registry: "docker.io", Endpoints: ep}},
		"duplicate endpoint":     {{Registry: "docker.io", Endpoints: []string{ep[0], ep[0]}}},
		"no endpoint":            {{Registry: "docker.io"}},
		"empty registry":         {{Registry: "", Endpoints: ep}},
		"upper case":             {{Registry: "Docker.io", Endpoints: ep}},
		"path in registry":       {{Registry: "docker.io/library", Endpoints: ep}},
		"dot-dot registry":       {{Registry: "..", Endpoints: ep}},
		"default directory":      {{Registry: "_default", Endpoints: ep}},
		"own images":             {{Registry: "constellation.local", Endpoints: ep}},
		"newline in registry":    {{Registry: "docker.io\n[host.\"http://6.6.6.6\"]", Endpoints: ep}},
		"quote in registry":      {{Registry: `docker.io"`, Endpoints: ep}},
		"bad port":               {{Registry: "localhost:05001", Endpoints: ep}},
		"port zero":              {{Registry: "localhost:0", Endpoints: ep}},
		"hyphen at label start":  {{Registry: "-x.io", Endpoints: ep}},
		"host name endpoint":     {{Registry: "docker.io", Endpoints: []string{"http://mirror.example:5000"}}},
		"ftp endpoint":           {{Registry: "docker.io", Endpoints: []string{"ftp://10.0.0.1"}}},
		"path endpoint":          {{Registry: "docker.io", Endpoints: []string{"http://10.0.0.1:5000/v2"}}},
		"slash endpoint":         {{Registry: "docker.io", Endpoints: []string{"http://10.0.0.1:5000/"}}},
		"query endpoint":         {{Registry: "docker.io", Endpoints: []string{"http://10.0.0.1:5000?skip_verify=true"}}},
		"user endpoint":          {{Registry: "docker.io", Endpoints: []string{"http://a:b@10.0.0.1:5000"}}},
		"quote endpoint":         {{Registry: "docker.io", Endpoints: []string{"http://10.0.0.1:5000\"\nskip_verify = true\n"}}},
		"newline endpoint":       {{Registry: "docker.io", Endpoints: []string{"http://10.0.0.1:5000\n[host.\"https://6.6.6.6\"]"}}},
		"unspecified endpoint":   {{Registry: "docker.io", Endpoints: []string{"http://0.0.0.0:5000"}}},
		"non-canonical endpoint": {{Registry: "docker.io", Endpoints: []string{"HTTP://10.0.0.1:5000"}}},
		"leading zeros":          {{Registry: "docker.io", Endpoints: []string{"http://010.0.0.1:5000"}}},
		"zone endpoint":          {{Registry: "docker.io", Endpoints: []string{"http://[fe80::1%25eth0]:5000"}}},
		"too many endpoints":     {{Registry: "docker.io", Endpoints: []string{"http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3", "http://10.0.0.4", "http://10.0.0.5", "http://10.0.0.6", "http://10.0.0.7", "http://10.0.0.8", "http://10.0.0.9"}}},
	}
	for name, ms := range bad {
		if err := Validate(ms); err == nil {
			t.Errorf("%s: accepted %+v", name, ms)
		}
		if len(ms) == 1 {
			if raw, err := HostsTOML(ms[0]); err == nil {
				t.Errorf("%s: rendered\n%s", name, raw)
			}
		}
	}
}

func TestParse(t *testing.T) {
	ms := []Mirror{{Registry: "localhost:5001", Endpoints: []string{"http://10.217.0.1:5000"}}}
	raw, err := Marshal(ms)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(raw)
	if err != nil || len(got) != 1 || got[0].Registry != "localhost:5001" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if got, err := Parse(nil); err != nil || got != nil {
		t.Fatalf("empty: %+v, %v", got, err)
	}
	for _, bad := range []string{
		`[{"registry":"docker.io","endpoints":["http://10.0.0.1"],"skipVerify":true}]`,
		`[{"registry":"docker.io","endpoints":["http://10.0.0.1"]}] []`,
		`{"registry":"docker.io"}`,
		`[{"registry":"docker.io","endpoints":["http://mirror.example"]}]`,
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func TestWriteHostsDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs.d")
	ep := []string{"http://10.217.0.1:5000"}
	if err := WriteHostsDir(dir, []Mirror{{Registry: "docker.io", Endpoints: ep}, {Registry: "localhost:5001", Endpoints: ep}}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "localhost:5001", "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	checkRendered(t, Mirror{Registry: "localhost:5001", Endpoints: ep}, raw)
	// A registry no longer in the list loses its configuration; an invalid list changes nothing.
	if err := WriteHostsDir(dir, []Mirror{{Registry: "localhost:5001", Endpoints: ep}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docker.io")); !os.IsNotExist(err) {
		t.Fatalf("docker.io still configured: %v", err)
	}
	if err := WriteHostsDir(dir, []Mirror{{Registry: "../etc", Endpoints: ep}}); err == nil {
		t.Fatal("an invalid list was written")
	}
	if _, err := os.Stat(filepath.Join(dir, "localhost:5001", "hosts.toml")); err != nil {
		t.Fatalf("an invalid list changed the directory: %v", err)
	}
}

// FuzzHostsTOML: whatever registry name and endpoint the configuration holds, HostsTOML either refuses them or
// renders a hosts.toml that parses to exactly that mirror, nothing more (no injected key, table or host).
func FuzzHostsTOML(f *testing.F) {
	f.Add("docker.io", "http://10.217.0.1:5000", "")
	f.Add("localhost:5001", "http://10.217.0.1:5000", "https://10.0.0.2:443")
	f.Add("docker.io\"\nskip_verify = true\n#", "http://10.217.0.1:5000", "")
	f.Add("docker.io", "http://10.217.0.1:5000\"]\n[host.\"http://6.6.6.6\"]\n#", "")
	f.Add("docker.io", "http://[::1]:5000", "http://10.0.0.1")
	f.Add("a.b-c.d:65535", "https://1.2.3.4", "http://1.2.3.4")
	f.Fuzz(func(t *testing.T, registry, e1, e2 string) {
		m := Mirror{Registry: registry, Endpoints: []string{e1}}
		if e2 != "" {
			m.Endpoints = append(m.Endpoints, e2)
		}
		raw, err := HostsTOML(m)
		if err != nil {
			return
		}
		checkRendered(t, m, raw)
	})
}

// FuzzParse: a mirror list from the join configuration or a state disk either parses into mirrors that all
// render safely, or is refused.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`[{"registry":"localhost:5001","endpoints":["http://10.217.0.1:5000"]},{"registry":"docker.io","endpoints":["http://10.217.0.1:5000"]}]`))
	f.Add([]byte(`[{"registry":"docker.io","endpoints":["http://10.0.0.1"],"skipVerify":true}]`))
	f.Add([]byte(`[{"registry":"docker.io\u000a[x]","endpoints":["http://10.0.0.1"]}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ms, err := Parse(raw)
		if err != nil {
			return
		}
		for _, m := range ms {
			out, err := HostsTOML(m)
			if err != nil {
				t.Fatalf("parsed mirror %+v does not render: %v", m, err)
			}
			checkRendered(t, m, out)
		}
	})
}
