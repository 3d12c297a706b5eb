package config

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/registrymirror"
)

const (
	testPassword = "S3cret-pa55w0rd"
	testToken    = "t0ken-secret-value"
)

// egressConfig is a QEMU configuration with registry credentials and DNS servers, as an operator writes it.
var egressConfig = func() string {
	raw, err := validQEMU().Marshal()
	if err != nil {
		panic(err)
	}
	return string(raw) + `registryMirrors:
- registry: docker.io
  endpoints: ["https://10.0.0.5:5443", "https://10.0.0.6"]
  credentials:
    username: robot
    password: ` + testPassword + `
- registry: ghcr.io
  endpoints: ["https://10.0.0.7"]
  credentials:
    token: ` + testToken + `
- registry: quay.io
  endpoints: ["http://10.0.0.8:5000"]
nodes:
  dns:
  - 10.0.0.53
  - fd00::53
`
}()

// Registry credentials and DNS servers are read from the configuration as written, for a provider whose nodes have
// egress.
func TestEgressConfiguration(t *testing.T) {
	c, err := Parse([]byte(egressConfig))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.DNSServers(); !slices.Equal(got, []string{"10.0.0.53", "fd00::53"}) {
		t.Fatalf("DNS servers %v", got)
	}
	cs := c.MirrorCredentials()
	want := []registrymirror.Credentials{
		{Registry: "docker.io", Auth: registrymirror.Auth{Username: "robot", Password: testPassword}},
		{Registry: "ghcr.io", Auth: registrymirror.Auth{Token: testToken}},
	}
	if !slices.Equal(cs, want) {
		t.Fatalf("credentials differ: %v", cs)
	}
	if ms := c.Mirrors(); len(ms) != 3 || ms[2].Registry != "quay.io" {
		t.Fatalf("mirrors %v", ms)
	}
	// The CLI never writes credentials into a file, and what it prints of the configuration shows none.
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), testPassword) || strings.Contains(string(out), testToken) {
		t.Fatalf("Marshal shows a credential:\n%s", out)
	}
	if err := c.Write(filepath.Join(t.TempDir(), FileName), false); err == nil {
		t.Fatal("a configuration with credentials was written")
	}
	// Without credentials, the configuration round-trips.
	c.RegistryMirrors[0].Credentials, c.RegistryMirrors[1].Credentials = nil, nil
	path := filepath.Join(t.TempDir(), FileName)
	if err := c.Write(path, false); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil || !slices.Equal(back.DNSServers(), c.DNSServers()) {
		t.Fatalf("round trip: %v, %v", back, err)
	}
}

// Credentials and DNS servers that would add TOML to containerd's configuration, lines to a resolv.conf or
// directives to CoreDNS's Corefile are refused, as are credentials sent in plaintext and both settings on the
// mini provider, whose nodes have no egress. No refusal shows a credential.
func TestEgressProblems(t *testing.T) {
	for name, tc := range map[string]struct {
		edit func(string) string
		mini bool
		want string
	}{
		"newline in password": {edit: func(s string) string {
			return strings.Replace(s, "password: "+testPassword, `password: "`+testPassword+`'\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = '/tmp'"`, 1)
		}, want: "password has a character that is not allowed"},
		"quote in token": {edit: func(s string) string {
			return strings.Replace(s, "token: "+testToken, `token: "`+testToken+`'"`, 1)
		}, want: "token has a character"},
		"colon in user name": {edit: func(s string) string { return strings.Replace(s, "username: robot", "username: ro:bot", 1) }, want: "user name has a character"},
		"password and token": {edit: func(s string) string {
			return strings.Replace(s, "username: robot", "username: robot\n    token: x", 1)
		}, want: "not both"},
		"unknown credential": {edit: func(s string) string {
			return strings.Replace(s, "username: robot", "username: robot\n    skipVerify: true", 1)
		}, want: "unknown field"},
		"credentials over http": {edit: func(s string) string { return strings.Replace(s, `"https://10.0.0.7"`, `"http://10.0.0.7"`, 1) }, want: "not https"},
		"DNS name":              {edit: func(s string) string { return strings.Replace(s, "- 10.0.0.53", "- dns.example", 1) }, want: "not an IP address"},
		"DNS with port":         {edit: func(s string) string { return strings.Replace(s, "- 10.0.0.53", "- 10.0.0.53:53", 1) }, want: "nodes.dns"},
		"DNS injection": {edit: func(s string) string {
			return strings.Replace(s, "- 10.0.0.53", `- "10.0.0.53\n}\n.:53 {\n forward . 6.6.6.6"`, 1)
		}, want: "nodes.dns"},
		"DNS resolv.conf injection": {edit: func(s string) string {
			return strings.Replace(s, "- 10.0.0.53", `- "10.0.0.53\nnameserver 6.6.6.6"`, 1)
		}, want: "nodes.dns"},
		"DNS loopback":      {edit: func(s string) string { return strings.Replace(s, "- 10.0.0.53", "- 127.0.0.53", 1) }, want: "runs no resolver"},
		"DNS leading zeros": {edit: func(s string) string { return strings.Replace(s, "- 10.0.0.53", "- 010.0.0.53", 1) }, want: "nodes.dns"},
		"DNS twice":         {edit: func(s string) string { return strings.Replace(s, "- fd00::53", "- 10.0.0.53", 1) }, want: "listed twice"},
		"four DNS servers": {edit: func(s string) string {
			return strings.Replace(s, "- fd00::53", "- fd00::53\n  - 10.0.0.54\n  - 10.0.0.55", 1)
		}, want: "at most 3"},
		"unknown nodes field":   {edit: func(s string) string { return strings.Replace(s, "nodes:\n", "nodes:\n  search: [example.com]\n", 1) }, want: "unknown field"},
		"mini with credentials": {mini: true, want: "registryMirrors[0].credentials: the mini provider's nodes have no egress"},
		"mini with DNS":         {mini: true, want: "nodes.dns: the mini provider's nodes have no egress"},
	} {
		t.Run(name, func(t *testing.T) {
			raw := egressConfig
			if tc.mini {
				mini, _ := valid().Marshal()
				raw = string(mini) + raw[strings.Index(raw, "registryMirrors:"):]
				if name == "mini with DNS" {
					raw = string(mini) + raw[strings.Index(raw, "nodes:"):]
				}
			}
			if tc.edit != nil {
				edited := tc.edit(raw)
				if edited == raw {
					t.Fatalf("the edit did not apply")
				}
				raw = edited
			}
			_, err := Parse([]byte(raw))
			if err == nil {
				t.Fatalf("accepted:\n%s", raw)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error lacks %q: %v", tc.want, err)
			}
			if strings.Contains(err.Error(), testPassword) || strings.Contains(err.Error(), testToken) {
				t.Errorf("the error shows a credential: %v", err)
			}
		})
	}
}
