package apiproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// apiServer is a TLS server that answers every request with its name, as an API server answers /healthz; its
// certificate names 127.0.0.1 and the proxy's address, as the API servers' certificates do.
func apiServer(t *testing.T, name string, listen string) (*httptest.Server, netip.AddrPort) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) }))
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener = ln
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, netip.MustParseAddrPort(srv.Listener.Addr().String())
}

// plainDial stands in for the mesh in tests that run on loopback only.
func plainDial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr.String())
}

// serve starts p on a loopback port and returns its address.
func serve(t *testing.T, p *Proxy) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go p.Serve(ln)
	return ln.Addr().String()
}

// get asks https://addr/healthz with TLS to the end, trusting only the certificate of trusted.
func get(addr string, trusted *httptest.Server) (string, error) {
	pool := x509.NewCertPool()
	pool.AddCert(trusted.Certificate())
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, DisableKeepAlives: true}}
	resp, err := c.Get("https://" + addr + "/healthz")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return addr
}

// A control-plane node's endpoint goes to its own API server first, TLS end to end (the client checks the API
// server's certificate through the proxy); once that is down, to another control-plane node's.
func TestLocalFirstThenFailover(t *testing.T) {
	local, localAddr := apiServer(t, "local", "")
	_, remoteAddr := apiServer(t, "remote", "")
	// Both servers share httptest's certificate: trusting it trusts either.
	down := closedPort(t)
	p := &Proxy{Local: localAddr, Remote: func(context.Context) ([]netip.AddrPort, error) {
		return []netip.AddrPort{down, remoteAddr}, nil
	}, DialRemote: plainDial}
	p.Check(context.Background())
	addr := serve(t, p)
	if got, err := get(addr, local); err != nil || got != "local" {
		t.Fatalf("through the endpoint: %q, %v; want the node's own API server", got, err)
	}
	local.Close()
	for i := range 3 {
		if got, err := get(addr, local); err != nil || got != "remote" {
			t.Fatalf("request %d with the own API server down: %q, %v; want the other control-plane node's", i, got, err)
		}
	}
}

// A worker's endpoint spreads connections over the remote API servers that answered the last check, and tries
// one that did not only after them.
func TestOrderHealthyFirst(t *testing.T) {
	_, a := apiServer(t, "a", "")
	_, b := apiServer(t, "b", "")
	down := closedPort(t)
	p := &Proxy{Remote: func(context.Context) ([]netip.AddrPort, error) {
		return []netip.AddrPort{down, a, b}, nil
	}, DialRemote: plainDial}
	if got := p.Order(); len(got) != 0 {
		t.Fatalf("order before any check: %v", got)
	}
	p.Check(context.Background())
	first := map[netip.AddrPort]int{}
	for range 4 {
		o := p.Order()
		if len(o) != 3 || o[2] != down {
			t.Fatalf("order %v: the backend that did not answer must come last", o)
		}
		first[o[0]]++
	}
	if first[a] != 2 || first[b] != 2 {
		t.Fatalf("first choices %v: want the healthy backends in turn", first)
	}
}

// With no API server answering, the client's connection is closed: it learns nothing and retries.
func TestNoBackend(t *testing.T) {
	trusted, _ := apiServer(t, "unused", "")
	p := &Proxy{Remote: func(context.Context) ([]netip.AddrPort, error) {
		return []netip.AddrPort{closedPort(t)}, nil
	}, DialRemote: plainDial}
	p.Check(context.Background())
	if got, err := get(serve(t, p), trusted); err == nil {
		t.Fatalf("a request with no API server answering got %q", got)
	}
}

// If the provider cannot be asked, the proxy keeps the backends it last knew.
func TestKeepsListWhenProviderFails(t *testing.T) {
	trusted, a := apiServer(t, "a", "")
	fail := false
	p := &Proxy{Remote: func(context.Context) ([]netip.AddrPort, error) {
		if fail {
			return nil, errors.New("metadata service down")
		}
		return []netip.AddrPort{a}, nil
	}, DialRemote: plainDial}
	p.Check(context.Background())
	fail = true
	p.Check(context.Background())
	if got, err := get(serve(t, p), trusted); err != nil || got != "a" {
		t.Fatalf("after the provider failed: %q, %v", got, err)
	}
}

// The mesh dialer connects through the interface it is bound to, and not at all without it.
func TestMeshDialerBinds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("binding a socket to an interface needs CAP_NET_RAW (root)")
	}
	_, addr := apiServer(t, "lo", "")
	c, err := MeshDialer("lo")(context.Background(), addr)
	if err != nil {
		t.Fatalf("bound to lo, to a loopback server: %v", err)
	}
	c.Close()
	if _, err := MeshDialer("cst-nosuch0")(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "WireGuard interface cst-nosuch0") {
		t.Fatalf("bound to an interface that does not exist: %v; want a refusal", err)
	}
}

const netnsEnv = "APIPROXY_TEST_NETNS"

// TestRemovedNodeReachesNoAPIServerAroundTheTunnel performs the attack of a node the cluster removed (its
// WireGuard interface has no peer left) with the help of the host: the host names an address of its own as a
// control-plane node's, and relays connections from there to an API server (which accepts connections from
// the host's address, where the operator's CLI runs). A proxy that dials whatever the routing tables reach
// (the control arm below, as a load balancer on the host or a naive proxy would) hands the removed node the
// API; the node's endpoint, which reaches remote API servers only through its WireGuard interface, does not.
//
// It runs in a network namespace of its own (the test binary again, under unshare -n): a TUN interface without
// peers stands in for the removed node's tunnel, a veth pair for the link to the host's relay.
func TestRemovedNodeReachesNoAPIServerAroundTheTunnel(t *testing.T) {
	if os.Getenv(netnsEnv) == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root: a network namespace of its own")
		}
		for _, tool := range []string{"unshare", "ip"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("needs %s", tool)
			}
		}
		cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run=^TestRemovedNodeReachesNoAPIServerAroundTheTunnel$", "-test.v")
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
		}
		t.Logf("in a network namespace of its own:\n%s", out)
		return
	}
	for _, c := range [][]string{
		{"link", "set", "lo", "up"},
		{"tuntap", "add", "dev", "wgx0", "mode", "tun"}, {"link", "set", "wgx0", "up"},
		{"link", "add", "link0", "type", "veth", "peer", "name", "host0"},
		{"addr", "add", "10.250.9.2/24", "dev", "link0"}, {"link", "set", "link0", "up"},
		{"addr", "add", "10.250.9.1/24", "dev", "host0"}, {"link", "set", "host0", "up"},
	} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	// The host's relay in front of an API server, at the address the host names as a control-plane node's.
	relay, relayAddr := apiServer(t, "ok", "10.250.9.1:0")
	hostSays := func(context.Context) ([]netip.AddrPort, error) { return []netip.AddrPort{relayAddr}, nil }

	naive := &Proxy{Remote: hostSays, DialRemote: plainDial}
	naive.Check(context.Background())
	if got, err := get(serve(t, naive), relay); err != nil || got != "ok" {
		t.Fatalf("control: a proxy that dials by the routing tables does not reach the host's relay (%q, %v): the test could not tell", got, err)
	}

	endpoint := &Proxy{Remote: hostSays, DialRemote: MeshDialer("wgx0")}
	endpoint.Check(context.Background())
	if got, err := get(serve(t, endpoint), relay); err == nil {
		t.Fatalf("the removed node's endpoint reached an API server through the host: %q", got)
	} else {
		fmt.Println("the removed node's endpoint reaches no API server:", err)
	}
}
