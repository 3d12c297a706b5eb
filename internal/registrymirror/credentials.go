package registrymirror

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
)

// Auth is the secret with which the nodes' containerd authenticates to a mirror's endpoints: a user name and
// password, or a token (containerd's identity token: a refresh token the registry's token service exchanges for
// access tokens). It is a secret: it never appears in a log, an error, a ConfigMap or the CLI's output; its
// String, GoString and LogValue say only which kind of secret it is.
type Auth struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
}

// Credentials are the Auth of one mirrored registry, as they travel in the init request, in the join service's
// answer, in the join service's Secret and on a node's state disk: never in the mirror list itself, which is
// not secret (it is in the join configuration's ConfigMap).
type Credentials struct {
	// Registry is the mirrored registry (Mirror.Registry) whose endpoints get the Auth.
	Registry string `json:"registry"`
	Auth
}

// Limits of credentials.
const (
	MaxUsername = 256
	MaxPassword = 1024
	MaxToken    = 8192
	// MaxCredentialsFileSize bounds a marshalled credentials list.
	MaxCredentialsFileSize = 512 << 10
)

// String never shows the secret.
func (a Auth) String() string {
	switch {
	case a.Token != "":
		return "token (redacted)"
	case a.Username != "" || a.Password != "":
		return "user name and password (redacted)"
	}
	return "none"
}

// GoString never shows the secret (%#v).
func (a Auth) GoString() string { return "registrymirror.Auth{" + a.String() + "}" }

// LogValue never shows the secret (log/slog).
func (a Auth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// MarshalJSON never shows the secret either (a JSON log of a structure that holds credentials): it writes
// {"redacted": "<kind>"}, which no strict decoder of credentials accepts back. The secret itself is encoded by
// [MarshalCredentials] only.
func (a Auth) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"redacted": a.String()})
}

// String names the registry and never shows the secret.
func (c Credentials) String() string { return c.Registry + ": " + c.Auth.String() }

// GoString never shows the secret (%#v).
func (c Credentials) GoString() string { return "registrymirror.Credentials{" + c.String() + "}" }

// LogValue never shows the secret (log/slog).
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalJSON never shows the secret (see [Auth.MarshalJSON]).
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"registry": c.Registry, "redacted": c.Auth.String()})
}

// plainCredentials is the encoded form of credentials, secret included: in the join service's Secret and on a
// node's state disk.
type plainCredentials struct {
	Registry string `json:"registry"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
}

func marshalPlain(cs []Credentials) ([]byte, error) {
	out := make([]plainCredentials, 0, len(cs))
	for _, c := range cs {
		out = append(out, plainCredentials{Registry: c.Registry, Username: c.Username, Password: c.Password, Token: c.Token})
	}
	return json.Marshal(out)
}

// Validate checks an Auth: either a user name and a password, or a token, within their lengths, and only of
// printable ASCII without quotes, backslashes or back quotes (the values become TOML strings in containerd's
// configuration, and a user name a part of an HTTP basic authorization). A user name holds no colon and no
// space. Errors say what is wrong, never the value.
func (a Auth) Validate() error {
	switch {
	case a.Token != "" && (a.Username != "" || a.Password != ""):
		return errors.New("set either a user name and a password, or a token, not both")
	case a.Token != "":
		return checkSecret("token", a.Token, MaxToken, "")
	case a.Username == "" && a.Password == "":
		return errors.New("no user name and password, and no token: remove the credentials or complete them")
	case a.Username == "" || a.Password == "":
		return errors.New("a user name needs a password and a password a user name")
	}
	if err := checkSecret("user name", a.Username, MaxUsername, ": "); err != nil {
		return err
	}
	return checkSecret("password", a.Password, MaxPassword, "")
}

// checkSecret checks one secret value without ever putting it into the error.
func checkSecret(what, s string, maxLen int, forbidden string) error {
	if len(s) == 0 || len(s) > maxLen {
		return fmt.Errorf("the %s has %d bytes, want 1 to %d", what, len(s), maxLen)
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 0x20 || b > 0x7e || b == '"' || b == '\'' || b == '\\' || b == '`' || strings.IndexByte(forbidden, b) >= 0 {
			return fmt.Errorf("the %s has a character that is not allowed at byte %d: want printable ASCII without quotes, backslashes%s", what, i, describeForbidden(forbidden))
		}
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return fmt.Errorf("the %s begins or ends with a space", what)
	}
	return nil
}

func describeForbidden(f string) string {
	if f == "" {
		return " or control characters"
	}
	return ", control characters, colons or spaces"
}

// ValidateCredentials checks credentials against the mirror list they belong to: each names a mirrored
// registry, once, with a valid Auth ([Auth.Validate]); every endpoint of a mirror with credentials is https
// (over http, whoever carries the traffic, the host included, would read the secret); and no endpoint address
// gets two different secrets (containerd keys them by address). Errors never hold a secret.
func ValidateCredentials(ms []Mirror, cs []Credentials) error {
	if len(cs) > MaxMirrors {
		return fmt.Errorf("%d registry credentials, at most %d are allowed", len(cs), MaxMirrors)
	}
	mirrors := map[string]Mirror{}
	for _, m := range ms {
		mirrors[m.Registry] = m
	}
	seen := map[string]bool{}
	byHost := map[string]Auth{}
	var errs []error
	for i, c := range cs {
		if err := ValidateRegistry(c.Registry); err != nil {
			errs = append(errs, fmt.Errorf("credentials %d: registry: %w", i, err))
			continue
		}
		if seen[c.Registry] {
			errs = append(errs, fmt.Errorf("credentials %d: registry %s has credentials twice", i, c.Registry))
			continue
		}
		seen[c.Registry] = true
		if err := c.Auth.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("credentials of %s: %w", c.Registry, err))
			continue
		}
		m, ok := mirrors[c.Registry]
		if !ok {
			errs = append(errs, fmt.Errorf("credentials of %s: the registry is not mirrored; credentials go to a mirror's endpoints only", c.Registry))
			continue
		}
		for _, e := range m.Endpoints {
			host, err := endpointHost(e)
			if err != nil {
				errs = append(errs, fmt.Errorf("credentials of %s: endpoint %s: %w", c.Registry, e, err))
				continue
			}
			if !strings.HasPrefix(e, "https://") {
				errs = append(errs, fmt.Errorf("credentials of %s: endpoint %s is not https: the credentials would cross the network in plaintext; use https endpoints", c.Registry, e))
				continue
			}
			if other, ok := byHost[host]; ok && other != c.Auth {
				errs = append(errs, fmt.Errorf("credentials of %s: endpoint address %s has other credentials from another mirror; containerd keeps one secret per address", c.Registry, host))
			}
			byHost[host] = c.Auth
		}
	}
	return errors.Join(errs...)
}

// endpointHost is the address containerd keys an endpoint's credentials by: the URL's host with its port.
func endpointHost(e string) (string, error) {
	if err := ValidateEndpoint(e); err != nil {
		return "", err
	}
	u, err := url.Parse(e)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}

// MarshalCredentials encodes valid credentials as JSON, the form in the join service's Secret and on a node's
// state disk. The result is a secret.
func MarshalCredentials(ms []Mirror, cs []Credentials) ([]byte, error) {
	if err := ValidateCredentials(ms, cs); err != nil {
		return nil, err
	}
	return marshalPlain(cs)
}

// ParseCredentials decodes credentials strictly (unknown fields, trailing data and more than
// MaxCredentialsFileSize bytes are errors) and validates them against the mirror list ms. Empty input is none.
// Errors never hold a secret: a JSON syntax error names an offset only.
func ParseCredentials(raw []byte, ms []Mirror) ([]Credentials, error) {
	if len(raw) > MaxCredentialsFileSize {
		return nil, fmt.Errorf("registry credentials: %d bytes, at most %d", len(raw), MaxCredentialsFileSize)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var plain []plainCredentials
	if err := dec.Decode(&plain); err != nil {
		// encoding/json's errors may quote the input; say where only.
		return nil, fmt.Errorf("registry credentials: not a valid list (at byte %d)", dec.InputOffset())
	}
	if dec.More() {
		return nil, errors.New("registry credentials: trailing data after the list")
	}
	var cs []Credentials
	for _, p := range plain {
		cs = append(cs, Credentials{Registry: p.Registry, Auth: Auth{Username: p.Username, Password: p.Password, Token: p.Token}})
	}
	if err := ValidateCredentials(ms, cs); err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	if len(cs) == 0 {
		return nil, nil
	}
	return cs, nil
}

// ContainerdAuthTOML renders the CRI image service's registry authentication for containerd's configuration
// (version 3): for each endpoint of each mirror with credentials, a table
// [plugins."io.containerd.cri.v1.images".registry.configs."<address>".auth] with username and password, or
// identitytoken. containerd answers a mirror's authentication challenge (basic, or a bearer token from the
// token service) with them. The credentials are validated against ms first; nothing is rendered otherwise.
// The result is a secret: write it readable by root only.
func ContainerdAuthTOML(ms []Mirror, cs []Credentials) ([]byte, error) {
	if err := Validate(ms); err != nil {
		return nil, err
	}
	if err := ValidateCredentials(ms, cs); err != nil {
		return nil, err
	}
	byHost := map[string]Auth{}
	for _, c := range cs {
		for _, m := range ms {
			if m.Registry != c.Registry {
				continue
			}
			for _, e := range m.Endpoints {
				host, err := endpointHost(e)
				if err != nil {
					return nil, err
				}
				byHost[host] = c.Auth
			}
		}
	}
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	var b bytes.Buffer
	for _, h := range hosts {
		a := byHost[h]
		fmt.Fprintf(&b, "[plugins.\"io.containerd.cri.v1.images\".registry.configs.%s.auth]\n", tomlString(h))
		if a.Token != "" {
			fmt.Fprintf(&b, "  identitytoken = %s\n", tomlSecret(a.Token))
		} else {
			fmt.Fprintf(&b, "  username = %s\n  password = %s\n", tomlSecret(a.Username), tomlSecret(a.Password))
		}
	}
	return b.Bytes(), nil
}

// tomlSecret quotes a validated secret as a TOML literal string (no escapes at all). Validation admits no
// character that could end it; one that slipped through would be a bug, and panics, without the value.
func tomlSecret(s string) string {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < 0x20 || b > 0x7e || b == '\'' || b == '"' || b == '\\' {
			panic("registrymirror: an unvalidated secret reached the TOML renderer")
		}
	}
	return "'" + s + "'"
}

// CredentialsWire is credentials as a wire contract carries them (initpb.RegistryCredentials,
// joinpb.RegistryCredentials).
type CredentialsWire interface {
	GetRegistry() string
	GetUsername() string
	GetPassword() string
	GetToken() string
}

// CredentialsFromWire converts credentials from a wire message and validates them against the mirror list:
// credentials that are not valid are an error, never rendered.
func CredentialsFromWire[W CredentialsWire](ms []Mirror, list []W) ([]Credentials, error) {
	var cs []Credentials
	for _, c := range list {
		cs = append(cs, Credentials{Registry: c.GetRegistry(), Auth: Auth{Username: c.GetUsername(), Password: c.GetPassword(), Token: c.GetToken()}})
	}
	if err := ValidateCredentials(ms, cs); err != nil {
		return nil, err
	}
	return cs, nil
}
