package registrymirror

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// authFile is what containerd reads of the rendered registry authentication (its CRI image service's
// registry.configs.<address>.auth keys we render).
type authFile struct {
	Plugins map[string]struct {
		Registry struct {
			Configs map[string]struct {
				Auth struct {
					Username      string `toml:"username"`
					Password      string `toml:"password"`
					IdentityToken string `toml:"identitytoken"`
				} `toml:"auth"`
			} `toml:"configs"`
		} `toml:"registry"`
	} `toml:"plugins"`
}

// checkAuthRendered parses rendered authentication strictly, as TOML, and checks that it says exactly what the
// credentials say: for every endpoint address of every mirror with credentials, those credentials, and nothing
// else (no other plugin, key or address).
func checkAuthRendered(t *testing.T, ms []Mirror, cs []Credentials, raw []byte) {
	t.Helper()
	dec := toml.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var f authFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("rendered authentication does not parse strictly: %v", err)
	}
	want := map[string]Auth{}
	for _, c := range cs {
		for _, m := range ms {
			if m.Registry == c.Registry {
				for _, e := range m.Endpoints {
					host, err := endpointHost(e)
					if err != nil {
						t.Fatal(err)
					}
					want[host] = c.Auth
				}
			}
		}
	}
	if len(want) == 0 {
		if len(bytes.TrimSpace(raw)) != 0 {
			t.Fatalf("no credentials, but rendered %d bytes", len(raw))
		}
		return
	}
	if len(f.Plugins) != 1 {
		t.Fatalf("%d plugin tables, want the CRI image service's only", len(f.Plugins))
	}
	configs := f.Plugins["io.containerd.cri.v1.images"].Registry.Configs
	if len(configs) != len(want) {
		t.Fatalf("%d addresses with credentials, want %d", len(configs), len(want))
	}
	for host, a := range want {
		got, ok := configs[host]
		if !ok {
			t.Fatalf("no credentials for %s", host)
		}
		if got.Auth.Username != a.Username || got.Auth.Password != a.Password || got.Auth.IdentityToken != a.Token {
			t.Fatalf("credentials of %s differ from the configured ones", host)
		}
	}
}

const (
	secretPassword = "S3cret-pa55w0rd!"
	secretToken    = "tok3n.eyJhbGciOi-secret"
)

var credMirrors = []Mirror{
	{Registry: "docker.io", Endpoints: []string{"https://10.0.0.5:5443", "https://[fd00::5]"}},
	{Registry: "ghcr.io", Endpoints: []string{"https://10.0.0.6"}},
	{Registry: "quay.io", Endpoints: []string{"http://10.0.0.7:5000"}},
}

func TestCredentials(t *testing.T) {
	good := []Credentials{
		{Registry: "docker.io", Auth: Auth{Username: "robot$pull", Password: secretPassword}},
		{Registry: "ghcr.io", Auth: Auth{Token: secretToken}},
	}
	raw, err := ContainerdAuthTOML(credMirrors, good)
	if err != nil {
		t.Fatal(err)
	}
	checkAuthRendered(t, credMirrors, good, raw)
	if raw, err := ContainerdAuthTOML(credMirrors, nil); err != nil || len(raw) != 0 {
		t.Fatalf("no credentials: %q, %v", raw, err)
	}
	// Round trip through the form of the Secret and the state disk.
	enc, err := MarshalCredentials(credMirrors, good)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseCredentials(enc, credMirrors)
	if err != nil || len(back) != 2 || back[0] != good[0] || back[1] != good[1] {
		t.Fatalf("round trip: %v, %v", back, err)
	}

	basic := Auth{Username: "u", Password: secretPassword}
	bad := map[string][]Credentials{
		"unmirrored registry":        {{Registry: "gcr.io", Auth: basic}},
		"http endpoint":              {{Registry: "quay.io", Auth: basic}},
		"twice":                      {{Registry: "docker.io", Auth: basic}, {Registry: "docker.io", Auth: basic}},
		"both kinds":                 {{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword, Token: secretToken}}},
		"none":                       {{Registry: "docker.io"}},
		"user without password":      {{Registry: "docker.io", Auth: Auth{Username: "u"}}},
		"password without user":      {{Registry: "docker.io", Auth: Auth{Password: secretPassword}}},
		"colon in user":              {{Registry: "docker.io", Auth: Auth{Username: "u:x", Password: secretPassword}}},
		"space in user":              {{Registry: "docker.io", Auth: Auth{Username: "u x", Password: secretPassword}}},
		"newline in password":        {{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword + "'\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = '/tmp/x"}}},
		"quote in password":          {{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword + "'"}}},
		"double quote in password":   {{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword + "\""}}},
		"backslash in password":      {{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword + "\\"}}},
		"control in token":           {{Registry: "docker.io", Auth: Auth{Token: secretToken + "\x00"}}},
		"newline in token":           {{Registry: "docker.io", Auth: Auth{Token: secretToken + "\n[plugins.x]"}}},
		"quote in user":              {{Registry: "docker.io", Auth: Auth{Username: "u\"", Password: secretPassword}}},
		"non-ASCII password":         {{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword + "é"}}},
		"leading space":              {{Registry: "docker.io", Auth: Auth{Username: "u", Password: " " + secretPassword}}},
		"password too long":          {{Registry: "docker.io", Auth: Auth{Username: "u", Password: strings.Repeat("x", MaxPassword+1)}}},
		"token too long":             {{Registry: "docker.io", Auth: Auth{Token: strings.Repeat("x", MaxToken+1)}}},
		"registry with TOML":         {{Registry: "docker.io\"]\n[x]", Auth: basic}},
		"two secrets for an address": {{Registry: "docker.io", Auth: basic}, {Registry: "ghcr.io", Auth: Auth{Token: secretToken}}},
	}
	// The last case needs two mirrors on one address.
	shared := append([]Mirror{}, credMirrors...)
	shared[1] = Mirror{Registry: "ghcr.io", Endpoints: []string{"https://10.0.0.5:5443"}}
	for name, cs := range bad {
		ms := credMirrors
		if name == "two secrets for an address" {
			ms = shared
		}
		err := ValidateCredentials(ms, cs)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), secretPassword) || strings.Contains(err.Error(), secretToken) {
			t.Errorf("%s: the error shows the secret: %v", name, err)
		}
		if raw, err := ContainerdAuthTOML(ms, cs); err == nil {
			t.Errorf("%s: rendered %d bytes", name, len(raw))
		}
		if enc, err := marshalPlain(cs); err == nil {
			if _, err := ParseCredentials(enc, ms); err == nil {
				t.Errorf("%s: parsed", name)
			} else if strings.Contains(err.Error(), secretPassword) || strings.Contains(err.Error(), secretToken) {
				t.Errorf("%s: the parse error shows the secret: %v", name, err)
			}
		}
	}
	for _, raw := range []string{
		`[{"registry":"docker.io","username":"u","password":"` + secretPassword + `","skipVerify":true}]`,
		`[{"registry":"docker.io","username":"u","password":"` + secretPassword + `"}] []`,
		`[{"registry":"docker.io","username":"u","password":` + secretPassword + `}]`,
		`[{"registry":"docker.io","username":"u","password":["` + secretPassword + `"]}]`,
	} {
		_, err := ParseCredentials([]byte(raw), credMirrors)
		if err == nil {
			t.Errorf("parsed %d bytes of bad JSON", len(raw))
		} else if strings.Contains(err.Error(), secretPassword) {
			t.Errorf("the parse error shows the secret: %v", err)
		}
	}
}

// Credentials printed, formatted or logged in any usual way never show the secret.
func TestCredentialsAreNeverShown(t *testing.T) {
	cs := []Credentials{
		{Registry: "docker.io", Auth: Auth{Username: "u", Password: secretPassword}},
		{Registry: "ghcr.io", Auth: Auth{Token: secretToken}},
	}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		fmt.Fprintf(&out, verb+"\n", cs)
		fmt.Fprintf(&out, verb+"\n", cs[0])
		fmt.Fprintf(&out, verb+"\n", cs[1].Auth)
		fmt.Fprintf(&out, verb+"\n", struct{ C []Credentials }{cs})
	}
	for _, h := range []slog.Handler{slog.NewJSONHandler(&out, nil), slog.NewTextHandler(&out, nil)} {
		l := slog.New(h)
		l.Info("credentials", "list", cs, "one", cs[0], "auth", cs[1].Auth)
	}
	if s := out.String(); strings.Contains(s, secretPassword) || strings.Contains(s, secretToken) {
		t.Fatalf("a secret was shown:\n%s", s)
	}
	// The redacted JSON form is refused where credentials are read.
	redacted, err := json.Marshal(cs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCredentials(redacted, credMirrors); err == nil {
		t.Fatalf("the redacted form %s parses as credentials", redacted)
	}
	if !strings.Contains(out.String(), "docker.io: user name and password (redacted)") {
		t.Fatalf("the registry is not named:\n%s", out.String())
	}
}

// FuzzContainerdAuthTOML: whatever credentials the configuration holds, ContainerdAuthTOML either refuses them or
// renders TOML that parses to exactly those credentials for exactly the mirror's endpoint addresses, nothing
// more (no injected key, table or plugin setting).
func FuzzContainerdAuthTOML(f *testing.F) {
	f.Add("docker.io", "https://10.0.0.5:5443", "user", "pass", "")
	f.Add("docker.io", "https://[fd00::1]", "", "", "token")
	f.Add("docker.io", "https://10.0.0.5", "u", "p'\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = '/x", "")
	f.Add("docker.io", "https://10.0.0.5", "", "", "t'\nusername = 'root")
	f.Add("docker.io", "http://10.0.0.5", "u", "p", "")
	f.Add("docker.io\".auth]\n[x", "https://10.0.0.5", "u", "p", "")
	f.Fuzz(func(t *testing.T, registry, endpoint, username, password, token string) {
		ms := []Mirror{{Registry: registry, Endpoints: []string{endpoint}}}
		cs := []Credentials{{Registry: registry, Auth: Auth{Username: username, Password: password, Token: token}}}
		raw, err := ContainerdAuthTOML(ms, cs)
		if err != nil {
			return
		}
		checkAuthRendered(t, ms, cs, raw)
	})
}

// FuzzParseCredentials: credentials from the join service's Secret or a state disk either parse into credentials
// that render safely, or are refused, and no refusal shows a secret-looking part of the input.
func FuzzParseCredentials(f *testing.F) {
	f.Add([]byte(`[{"registry":"docker.io","username":"u","password":"p"},{"registry":"ghcr.io","token":"t"}]`))
	f.Add([]byte(`[{"registry":"docker.io","username":"u","password":"p\u000a[x]"}]`))
	f.Add([]byte(`[{"registry":"quay.io","username":"u","password":"p"}]`))
	f.Add([]byte(`[{"registry":"docker.io","username":"u","password":"p","extra":1}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cs, err := ParseCredentials(raw, credMirrors)
		if err != nil {
			return
		}
		out, err := ContainerdAuthTOML(credMirrors, cs)
		if err != nil {
			t.Fatalf("parsed credentials do not render: %v", err)
		}
		checkAuthRendered(t, credMirrors, cs, out)
	})
}
