// Package registrymirror describes a cluster's container registry mirrors: for which registries the nodes'
// containerd pulls images from which mirror endpoints instead, and nowhere else. The list comes from the
// cluster configuration (the operator's), reaches the first node inside the attested init request and every
// other node inside the join service's answer; the host never supplies it. Every name and endpoint is
// validated strictly before it is rendered into containerd's hosts.toml, so that nothing in the list can add
// TOML of its own (an option such as skip_verify, another host, an upstream fallback).
//
// A mirror is trusted for availability only: containerd verifies every blob and every manifest it fetches by
// digest against that digest. What a tag means is what the mirror answers; who needs integrity for a tag pulls
// by digest (image@sha256:...).
package registrymirror

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/constellation-dev/constellation/internal/atomicfile"
)

// Mirror sends the image pulls of one registry to mirror endpoints, tried in order. containerd never falls back
// to the registry itself.
type Mirror struct {
	// Registry is the registry's host name as image references name it, with an optional port:
	// "docker.io", "ghcr.io", "localhost:5001".
	Registry string `json:"registry"`
	// Endpoints are the mirror's base URLs, "http://10.217.0.1:5000": http or https, an IP address (the nodes
	// have no resolver to look a name up with) and an optional port, no path.
	Endpoints []string `json:"endpoints"`
}

// Limits of a mirror list.
const (
	MaxMirrors   = 32
	MaxEndpoints = 8
	// MaxFileSize bounds the marshalled list (in the join configuration, on a state disk).
	MaxFileSize = 64 << 10
)

// reserved registries are never mirrored: this product's own images come from the node image only.
var reserved = map[string]string{
	"constellation.local": "the registry of this product's own service images, which come from the node image only",
}

// Validate checks a mirror list: at most MaxMirrors mirrors, each registry once, each valid
// ([ValidateRegistry]), with 1 to MaxEndpoints distinct valid endpoints ([ValidateEndpoint]).
func Validate(ms []Mirror) error {
	if len(ms) > MaxMirrors {
		return fmt.Errorf("%d registry mirrors, at most %d are allowed", len(ms), MaxMirrors)
	}
	seen := map[string]bool{}
	var errs []error
	for i, m := range ms {
		if err := ValidateRegistry(m.Registry); err != nil {
			errs = append(errs, fmt.Errorf("mirror %d: registry: %w", i, err))
			continue
		}
		if seen[m.Registry] {
			errs = append(errs, fmt.Errorf("mirror %d: registry %s is listed twice", i, m.Registry))
		}
		seen[m.Registry] = true
		if len(m.Endpoints) == 0 || len(m.Endpoints) > MaxEndpoints {
			errs = append(errs, fmt.Errorf("mirror %d (%s): %d endpoints, want 1 to %d", i, m.Registry, len(m.Endpoints), MaxEndpoints))
			continue
		}
		eps := map[string]bool{}
		for j, e := range m.Endpoints {
			if err := ValidateEndpoint(e); err != nil {
				errs = append(errs, fmt.Errorf("mirror %d (%s): endpoint %d: %w", i, m.Registry, j, err))
				continue
			}
			if eps[e] {
				errs = append(errs, fmt.Errorf("mirror %d (%s): endpoint %s is listed twice", i, m.Registry, e))
			}
			eps[e] = true
		}
	}
	return errors.Join(errs...)
}

// ValidateRegistry checks a registry name: a lower-case host name of letters, digits and hyphens in dot-separated
// labels (or an IPv4 address), with an optional port 1-65535. It is a directory name on the node and a TOML
// string, so nothing else is allowed.
func ValidateRegistry(s string) error {
	if why, ok := reserved[s]; ok {
		return fmt.Errorf("%q is %s; it cannot be mirrored", s, why)
	}
	host, port, hasPort := strings.Cut(s, ":")
	if hasPort {
		if err := validatePort(port); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	if err := validateHostname(host); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	return nil
}

func validateHostname(h string) error {
	if h == "" || len(h) > 253 {
		return errors.New("want a host name of 1 to 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("want dot-separated labels of 1 to 63 characters")
		}
		for i, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			case r == '-' && i > 0 && i < len(label)-1:
			default:
				return fmt.Errorf("label %q: want lower-case letters, digits and inner hyphens only", label)
			}
		}
	}
	return nil
}

func validatePort(p string) error {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != p {
		return fmt.Errorf("port %q: want a number 1 to 65535", p)
	}
	return nil
}

// ValidateEndpoint checks a mirror endpoint: "http://" or "https://", an IP address (IPv6 in brackets), an optional
// port, and nothing else (no user, path, query or fragment). The nodes have no resolver, so a host name could not
// be looked up, and must not be.
func ValidateEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: want an http:// or https:// URL", s)
	}
	if u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery || u.RawPath != "" {
		return fmt.Errorf("%q: want scheme, address and port only (no user, path, query or fragment)", s)
	}
	host, port := u.Hostname(), u.Port()
	addr, err := netip.ParseAddr(host)
	if err != nil || addr.Zone() != "" {
		return fmt.Errorf("%q: the host must be an IP address: the nodes have no resolver to look up a name", s)
	}
	if addr.IsUnspecified() || addr.IsMulticast() {
		return fmt.Errorf("%q: %s is not an address a node can connect to", s, addr)
	}
	if port != "" {
		if err := validatePort(port); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	// Only the canonical spelling: what is rendered is exactly what was validated.
	canonical := u.Scheme + "://" + addr.String()
	if addr.Is6() {
		canonical = u.Scheme + "://[" + addr.String() + "]"
	}
	if port != "" {
		canonical = u.Scheme + "://" + net.JoinHostPort(addr.String(), port)
	}
	if s != canonical {
		return fmt.Errorf("%q: write it as %q", s, canonical)
	}
	return nil
}

// Marshal encodes a valid mirror list as JSON, the form in the join configuration and on a node's state disk.
func Marshal(ms []Mirror) ([]byte, error) {
	if err := Validate(ms); err != nil {
		return nil, err
	}
	if ms == nil {
		ms = []Mirror{}
	}
	return json.Marshal(ms)
}

// Parse decodes a mirror list strictly (unknown fields, trailing data and more than MaxFileSize bytes are
// errors) and validates it. Empty input is an empty list.
func Parse(raw []byte) ([]Mirror, error) {
	if len(raw) > MaxFileSize {
		return nil, fmt.Errorf("registry mirrors: %d bytes, at most %d", len(raw), MaxFileSize)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var ms []Mirror
	if err := dec.Decode(&ms); err != nil {
		return nil, fmt.Errorf("registry mirrors: %w", err)
	}
	if dec.More() {
		return nil, errors.New("registry mirrors: trailing data after the list")
	}
	if err := Validate(ms); err != nil {
		return nil, fmt.Errorf("registry mirrors: %w", err)
	}
	return ms, nil
}

// HostsTOML renders containerd's hosts.toml for a valid mirror: the first endpoint as the server (containerd's
// last resort, which would otherwise be the registry itself) and every endpoint as a host for pull and resolve,
// in order. containerd thus never contacts the registry.
func HostsTOML(m Mirror) ([]byte, error) {
	if err := Validate([]Mirror{m}); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by the bootstrapper from the cluster configuration: %s is pulled from its mirror only.\n", m.Registry)
	fmt.Fprintf(&b, "server = %s\n", tomlString(m.Endpoints[0]))
	for _, e := range m.Endpoints {
		fmt.Fprintf(&b, "\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", tomlString(e))
	}
	return b.Bytes(), nil
}

// tomlString quotes a validated value as a TOML basic string. Validation admits no character that needs an
// escape; one that slipped through would be a bug, and panics rather than render.
func tomlString(s string) string {
	for _, r := range s {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			panic(fmt.Sprintf("registrymirror: unvalidated value %q reached the TOML renderer", s))
		}
	}
	return `"` + s + `"`
}

// WriteHostsDir makes dir (containerd's config_path) hold exactly one <registry>/hosts.toml per mirror: the
// directories of registries no longer mirrored are removed. The list is validated first; nothing is written
// if it is invalid.
func WriteHostsDir(dir string, ms []Mirror) error {
	if err := Validate(ms); err != nil {
		return err
	}
	files := map[string][]byte{}
	for _, m := range ms {
		raw, err := HostsTOML(m)
		if err != nil {
			return err
		}
		files[m.Registry] = raw
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if _, keep := files[e.Name()]; !keep {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("removing the mirror configuration of %s: %w", e.Name(), err)
			}
		}
	}
	for registry, raw := range files {
		sub := filepath.Join(dir, registry)
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		if err := atomicfile.Write(filepath.Join(sub, "hosts.toml"), raw, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Wire is a mirror as a wire contract carries it (initpb.RegistryMirror, joinpb.RegistryMirror).
type Wire interface {
	GetRegistry() string
	GetEndpoints() []string
}

// FromWire converts registry mirrors from a wire message and validates them: a list that is not valid is an
// error, never rendered.
func FromWire[W Wire](list []W) ([]Mirror, error) {
	var ms []Mirror
	for _, m := range list {
		ms = append(ms, Mirror{Registry: m.GetRegistry(), Endpoints: append([]string(nil), m.GetEndpoints()...)})
	}
	if err := Validate(ms); err != nil {
		return nil, err
	}
	return ms, nil
}
