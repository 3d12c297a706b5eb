package kubeadm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/constellation-dev/constellation/internal/registrymirror"
)

const testPassword = "S3cret-pa55w0rd"

var (
	egressMirrors = []registrymirror.Mirror{
		{Registry: "docker.io", Endpoints: []string{"https://10.0.0.5:5443", "https://[fd00::5]"}},
		{Registry: "ghcr.io", Endpoints: []string{"https://10.0.0.6"}},
		{Registry: "quay.io", Endpoints: []string{"http://10.0.0.7:5000"}},
	}
	egressCreds = []registrymirror.Credentials{
		{Registry: "docker.io", Auth: registrymirror.Auth{Username: "robot", Password: testPassword}},
		{Registry: "ghcr.io", Auth: registrymirror.Auth{Token: "t0ken-secret"}},
	}
)

// runtimeConfig is what the node's containerd reads of its configuration's registry section.
type runtimeConfig struct {
	Plugins map[string]map[string]any `toml:"plugins"`
}

type authTables map[string]struct {
	Auth struct {
		Username      string `toml:"username"`
		Password      string `toml:"password"`
		IdentityToken string `toml:"identitytoken"`
	} `toml:"auth"`
}

// registryOf returns config_path and the per-address credentials of a containerd configuration.
func registryOf(t *testing.T, raw []byte) (string, authTables) {
	t.Helper()
	var c runtimeConfig
	if err := toml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("containerd configuration does not parse: %v", err)
	}
	reg, _ := c.Plugins["io.containerd.cri.v1.images"]["registry"].(map[string]any)
	path, _ := reg["config_path"].(string)
	var configs authTables
	if cfgs, ok := reg["configs"]; ok {
		enc, err := toml.Marshal(cfgs)
		if err != nil {
			t.Fatal(err)
		}
		if err := toml.Unmarshal(enc, &configs); err != nil {
			t.Fatal(err)
		}
	}
	return path, configs
}

func checkAuth(t *testing.T, configs authTables) {
	t.Helper()
	want := map[string][2]string{
		"10.0.0.5:5443": {"robot", testPassword},
		"[fd00::5]":     {"robot", testPassword},
		"10.0.0.6":      {"", "t0ken-secret"},
	}
	if len(configs) != len(want) {
		t.Fatalf("%d addresses with credentials, want %d", len(configs), len(want))
	}
	for host, w := range want {
		a := configs[host].Auth
		if w[0] != "" && (a.Username != w[0] || a.Password != w[1] || a.IdentityToken != "") {
			t.Errorf("%s: not the configured user name and password", host)
		}
		if w[0] == "" && (a.IdentityToken != w[1] || a.Username != "" || a.Password != "") {
			t.Errorf("%s: not the configured token", host)
		}
	}
}

// The mirrors' credentials reach containerd's configuration as its CRI image service's registry.configs.<address>
// .auth, for every endpoint address of the mirror, next to config_path; a real containerd reads them so. The log
// names the registries, never a credential, and containerd's configuration is written readable by root only.
func TestRegistryCredentials(t *testing.T) {
	var log bytes.Buffer
	d := &Driver{Options: opts, hostsDir: filepath.Join(t.TempDir(), "certs.d"), Log: func(f string, a ...any) { fmt.Fprintf(&log, f+"\n", a...) }}
	if err := d.ConfigureRegistryMirrors(egressMirrors, egressCreds); err != nil {
		t.Fatal(err)
	}
	cfg, err := d.containerdConfig()
	if err != nil {
		t.Fatal(err)
	}
	path, configs := registryOf(t, cfg)
	if path != RegistryHostsDir {
		t.Fatalf("config_path %q", path)
	}
	checkAuth(t, configs)
	if strings.Contains(log.String(), testPassword) || strings.Contains(log.String(), "t0ken-secret") || !strings.Contains(log.String(), "with credentials: docker.io, ghcr.io") {
		t.Fatalf("log: %s", log.String())
	}
	// Without credentials, the configuration is the one without (and nothing is kept from before).
	if err := d.ConfigureRegistryMirrors(egressMirrors, nil); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := d.containerdConfig(); !bytes.Equal(cfg, must(ContainerdConfigFile(opts))) {
		t.Fatalf("configuration without credentials differs:\n%s", cfg)
	}
	// Credentials the list does not allow (an http mirror) are refused, and nothing is written.
	bad := []registrymirror.Credentials{{Registry: "quay.io", Auth: registrymirror.Auth{Username: "u", Password: testPassword}}}
	if err := d.ConfigureRegistryMirrors(egressMirrors, bad); err == nil || strings.Contains(err.Error(), testPassword) {
		t.Fatalf("credentials for an http mirror: %v", err)
	}

	// containerd's configuration file: root only, also where a readable one was before.
	file := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSecretFile(file, cfg); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("containerd configuration mode: %v, %v", fi.Mode(), err)
	}

	// The real containerd of the node image reads the credentials as rendered.
	containerd, _ := filepath.Abs("../../../_out/components/bin/containerd")
	if _, err := os.Stat(containerd); err != nil {
		t.Skip("containerd not built (make components); skipping the check with containerd")
	}
	if err := d.ConfigureRegistryMirrors(egressMirrors, egressCreds); err != nil {
		t.Fatal(err)
	}
	cfg, _ = d.containerdConfig()
	if err := writeSecretFile(file, cfg); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(containerd, "--config", file, "config", "dump").Output()
	if err != nil {
		t.Fatalf("containerd config dump: %v", err)
	}
	path, configs = registryOf(t, out)
	if path != RegistryHostsDir {
		t.Fatalf("containerd reads config_path %q", path)
	}
	checkAuth(t, configs)
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// The DNS servers become the node's resolv.conf and CoreDNS's upstream (with loop detection); without them the
// node's resolv.conf is left as the image has it (empty) and CoreDNS has no upstream.
func TestDNS(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := &Driver{resolvConfPath: rc}
	if err := d.ConfigureDNS(nil); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(rc); len(raw) != 0 {
		t.Fatalf("resolv.conf without servers: %q", raw)
	}
	if c, err := CorefileFor(d.dns); err != nil || c != Corefile {
		t.Fatalf("Corefile without servers: %v\n%s", err, c)
	}
	servers := []string{"10.0.0.53", "fd00::53"}
	if err := d.ConfigureDNS(servers); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(rc)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "nameserver" {
			got = append(got, f[1])
		} else if line != "" && !strings.HasPrefix(line, "#") {
			t.Fatalf("unexpected resolv.conf line %q", line)
		}
	}
	if !slices.Equal(got, servers) {
		t.Fatalf("resolv.conf names %v", got)
	}
	c, err := CorefileFor(d.dns)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c, "    forward . 10.0.0.53 fd00::53\n    loop\n    cache 30\n") || strings.Count(c, "forward") != 1 || strings.Count(c, "{") != strings.Count(c, "}") {
		t.Fatalf("Corefile:\n%s", c)
	}
	// A server list that would add lines to the resolv.conf or directives to the Corefile is refused, and
	// changes nothing.
	for _, bad := range [][]string{{"10.0.0.53\nnameserver 6.6.6.6"}, {"10.0.0.53 6.6.6.6"}, {"10.0.0.53\n}\n.:53 {\n forward . 6.6.6.6"}, {"dns.example"}} {
		if err := d.ConfigureDNS(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
		if _, err := CorefileFor(bad); err == nil {
			t.Errorf("Corefile for %q", bad)
		}
	}
	if after, _ := os.ReadFile(rc); !bytes.Equal(after, raw) {
		t.Fatalf("a refused list changed resolv.conf:\n%s", after)
	}
}
