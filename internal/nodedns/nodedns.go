// Package nodedns is the DNS servers a cluster's nodes use, from the cluster configuration: validated strictly
// (IP addresses only, written as Go writes them), and rendered into the node's resolv.conf and the upstream
// ("forward") of the cluster's CoreDNS. The list reaches the first node inside the attested init request and
// every other node through the join service (in the join configuration, under its MAC); the host never supplies
// it. Without a list the nodes have no resolver at all: neither the nodes nor CoreDNS ever ask anyone outside
// the cluster, and never the host's resolver.
package nodedns

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Limits of a server list.
const (
	// MaxServers is what a resolv.conf honours (glibc's MAXNS).
	MaxServers = 3
	// MaxFileSize bounds the marshalled list.
	MaxFileSize = 4 << 10
	// maxAddrLen is the longest written IPv6 address, with room to spare.
	maxAddrLen = 64
)

// Validate checks a server list: at most MaxServers distinct IP addresses, each written as netip.Addr writes it
// (so that what is rendered is exactly what was validated: no name, no port, no zone, nothing more), and each an
// address a node can send a query to (not unspecified, multicast, loopback or link-local: the node runs no
// resolver, and a link-local server would need a zone).
func Validate(servers []string) error {
	if len(servers) > MaxServers {
		return fmt.Errorf("%d DNS servers, at most %d are allowed (a resolv.conf honours no more)", len(servers), MaxServers)
	}
	seen := map[string]bool{}
	var errs []error
	for i, s := range servers {
		if err := ValidateServer(s); err != nil {
			errs = append(errs, fmt.Errorf("DNS server %d: %w", i, err))
			continue
		}
		if seen[s] {
			errs = append(errs, fmt.Errorf("DNS server %d: %s is listed twice", i, s))
		}
		seen[s] = true
	}
	return errors.Join(errs...)
}

// ValidateServer checks one server address (see Validate).
func ValidateServer(s string) error {
	if len(s) == 0 || len(s) > maxAddrLen {
		return fmt.Errorf("want an IP address, got %d bytes", len(s))
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address (a node has no resolver to look a name up with)", s)
	}
	if a.Zone() != "" {
		return fmt.Errorf("%q: an address with a zone is not allowed", s)
	}
	if a.Is4In6() {
		return fmt.Errorf("%q: write the IPv4 address as %s", s, a.Unmap())
	}
	if a.String() != s {
		return fmt.Errorf("%q: write it as %q", s, a.String())
	}
	switch {
	case a.IsUnspecified(), a.IsMulticast():
		return fmt.Errorf("%s is not an address a node can query", s)
	case a.IsLoopback():
		return fmt.Errorf("%s is the node itself, which runs no resolver", s)
	case a.IsLinkLocalUnicast():
		return fmt.Errorf("%s is link-local: a node's resolver could not tell which interface to use", s)
	}
	return nil
}

// Addrs converts a valid server list.
func Addrs(servers []string) ([]netip.Addr, error) {
	if err := Validate(servers); err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(servers))
	for _, s := range servers {
		out = append(out, netip.MustParseAddr(s))
	}
	return out, nil
}

// Strings is the written form of addresses.
func Strings(addrs []netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// Marshal encodes a valid server list as JSON, the form in the join configuration and on a node's state disk.
func Marshal(servers []string) ([]byte, error) {
	if err := Validate(servers); err != nil {
		return nil, err
	}
	if servers == nil {
		servers = []string{}
	}
	return json.Marshal(servers)
}

// Parse decodes a server list strictly (a JSON list of strings, no trailing data, at most MaxFileSize bytes)
// and validates it. Empty input is an empty list.
func Parse(raw []byte) ([]string, error) {
	if len(raw) > MaxFileSize {
		return nil, fmt.Errorf("DNS servers: %d bytes, at most %d", len(raw), MaxFileSize)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var servers []string
	if err := dec.Decode(&servers); err != nil {
		return nil, fmt.Errorf("DNS servers: %w", err)
	}
	if dec.More() {
		return nil, errors.New("DNS servers: trailing data after the list")
	}
	if err := Validate(servers); err != nil {
		return nil, fmt.Errorf("DNS servers: %w", err)
	}
	if len(servers) == 0 {
		return nil, nil
	}
	return servers, nil
}

// ResolvConf renders a node's resolv.conf for a valid, non-empty server list: one nameserver line each, and
// nothing else (no search domain: the node's own names are not looked up by DNS).
func ResolvConf(servers []string) ([]byte, error) {
	if err := Validate(servers); err != nil {
		return nil, err
	}
	if len(servers) == 0 {
		return nil, errors.New("no DNS servers: a node without them has no resolver, and gets no resolv.conf entries")
	}
	var b bytes.Buffer
	b.WriteString("# Written by the bootstrapper from the cluster configuration (nodes.dns).\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.Bytes(), nil
}

// ForwardDirective is CoreDNS's upstream for a valid server list: "forward . <servers>", or "" for none (then
// CoreDNS answers cluster names only, and has no upstream to loop through).
func ForwardDirective(servers []string) (string, error) {
	if err := Validate(servers); err != nil {
		return "", err
	}
	if len(servers) == 0 {
		return "", nil
	}
	return "forward . " + strings.Join(servers, " "), nil
}
