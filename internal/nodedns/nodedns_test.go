package nodedns

import (
	"bufio"
	"bytes"
	"slices"
	"strings"
	"testing"
)

// parseResolvConf reads what a resolver reads of a resolv.conf: its nameserver lines; any other directive is an
// error.
func parseResolvConf(t *testing.T, raw []byte) []string {
	t.Helper()
	var servers []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != "nameserver" {
			t.Fatalf("unexpected resolv.conf line %q", line)
		}
		servers = append(servers, f[1])
	}
	return servers
}

// checkRendered checks that the rendered resolv.conf and CoreDNS upstream name exactly the servers, nothing else.
func checkRendered(t *testing.T, servers []string) {
	t.Helper()
	fwd, err := ForwardDirective(servers)
	if err != nil {
		t.Fatalf("valid list does not render: %v", err)
	}
	if len(servers) == 0 {
		if fwd != "" {
			t.Fatalf("no servers, but an upstream %q", fwd)
		}
		return
	}
	if got := strings.Fields(fwd); len(got) < 3 || got[0] != "forward" || got[1] != "." || !slices.Equal(got[2:], servers) || strings.ContainsAny(fwd, "\n\r{}#\"") {
		t.Fatalf("upstream %q does not say exactly %v", fwd, servers)
	}
	rc, err := ResolvConf(servers)
	if err != nil {
		t.Fatal(err)
	}
	if got := parseResolvConf(t, rc); !slices.Equal(got, servers) {
		t.Fatalf("resolv.conf names %v, want %v", got, servers)
	}
}

func TestValidate(t *testing.T) {
	for _, good := range [][]string{nil, {"10.0.0.53"}, {"10.0.0.53", "fd00::53", "192.168.1.1"}, {"8.8.8.8"}} {
		if err := Validate(good); err != nil {
			t.Errorf("%v: %v", good, err)
		}
		checkRendered(t, good)
	}
	for name, bad := range map[string][]string{
		"name":              {"dns.example"},
		"port":              {"10.0.0.53:53"},
		"leading zeros":     {"010.0.0.53"},
		"upper-case IPv6":   {"FD00::53"},
		"long IPv6":         {"fd00:0:0:0:0:0:0:53"},
		"zone":              {"fe80::1%eth0"},
		"link-local":        {"fe80::1"},
		"link-local v4":     {"169.254.0.1"},
		"loopback":          {"127.0.0.1"},
		"v6 loopback":       {"::1"},
		"unspecified":       {"0.0.0.0"},
		"multicast":         {"224.0.0.1"},
		"empty":             {""},
		"twice":             {"10.0.0.53", "10.0.0.53"},
		"four":              {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"},
		"newline":           {"10.0.0.53\nnameserver 6.6.6.6"},
		"Corefile":          {"10.0.0.53\n}\n.:53 {\n forward . 6.6.6.6"},
		"space":             {"10.0.0.53 6.6.6.6"},
		"trailing space":    {"10.0.0.53 "},
		"v4-mapped":         {"::ffff:10.0.0.53"},
		"options directive": {"options ndots:1"},
	} {
		if err := Validate(bad); err == nil {
			t.Errorf("%s: accepted %q", name, bad)
		}
		if _, err := ResolvConf(bad); err == nil {
			t.Errorf("%s: resolv.conf rendered", name)
		}
		if _, err := ForwardDirective(bad); err == nil {
			t.Errorf("%s: upstream rendered", name)
		}
	}
	if _, err := ResolvConf(nil); err == nil {
		t.Error("a resolv.conf without servers was rendered")
	}
}

func TestParse(t *testing.T) {
	raw, err := Marshal([]string{"10.0.0.53", "fd00::53"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(raw)
	if err != nil || !slices.Equal(got, []string{"10.0.0.53", "fd00::53"}) {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	if got, err := Parse(nil); err != nil || got != nil {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{`["10.0.0.53"] []`, `{"dns":["10.0.0.53"]}`, `["dns.example"]`, `[53]`, `["10.0.0.53\nnameserver 6.6.6.6"]`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// FuzzParse: a server list from the join configuration or a state disk either parses into servers that render
// into a resolv.conf and a CoreDNS upstream naming exactly them, or is refused.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`["10.0.0.53","fd00::53"]`))
	f.Add([]byte(`["10.0.0.53\nnameserver 6.6.6.6"]`))
	f.Add([]byte(`["10.0.0.53\n}\n.:53 {\n forward . 6.6.6.6"]`))
	f.Add([]byte(`["::ffff:1.2.3.4"]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		servers, err := Parse(raw)
		if err != nil {
			return
		}
		checkRendered(t, servers)
	})
}
