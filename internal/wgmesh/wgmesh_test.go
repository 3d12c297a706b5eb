package wgmesh_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/wgmesh"
	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
)

func TestMain(m *testing.M) {
	wgmeshtest.MaybeRunHelper()
	os.Exit(m.Run())
}

func TestKeys(t *testing.T) {
	priv, pub, err := wgmesh.GenerateKey()
	if err != nil || priv == (wgmesh.Key{}) || pub == (wgmesh.Key{}) || priv == pub {
		t.Fatalf("GenerateKey = %v, %v, %v", priv, pub, err)
	}
	back, err := wgmesh.ParseKey(pub.String())
	if err != nil || back != pub {
		t.Fatalf("ParseKey(String()) = %v, %v", back, err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("A", 40)} {
		if _, err := wgmesh.ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

// Two nodes in network namespaces of their own, linked by a veth pair: HTTP between their tunnel addresses
// goes through WireGuard, and a capture on the link finds no plaintext; the same request between their link
// addresses does show the marker (so the capture can fail); a node whose peer was removed no longer reaches
// it.
func TestTrafficBetweenNodesIsEncrypted(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	p, err := wgmeshtest.NewPair()
	if err == wgmeshtest.ErrUnsupported {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tunnel := "http://" + wgmeshtest.TunnelB + ":8080/"
	var body string
	found, frames, err := p.Capture(func() error {
		var err error
		body, err = p.Get(tunnel)
		return err
	})
	if err != nil {
		t.Fatalf("request through the tunnel: %v: %s", err, body)
	}
	if frames == 0 {
		t.Fatal("the capture saw no frames")
	}
	if found {
		t.Fatal("the marker crossed the link in plain text although it went through the tunnel")
	}
	if !strings.Contains(body, wgmeshtest.Marker) {
		t.Fatalf("the answer through the tunnel lacks the marker: %.100q", body)
	}
	checkPresharedKeys(t, p)
	found, _, err = p.Capture(func() error {
		_, err := p.Get("http://" + wgmeshtest.LinkB + ":8080/")
		return err
	})
	if err != nil || !found {
		t.Fatalf("without the tunnel the capture must see the marker (found %v, %v): else it cannot tell", found, err)
	}

	// Node A stops peering with B: B's tunnel address is no longer reachable from A.
	if err := p.A.Send("remove-peers"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.A.Expect("REMOVED"); err != nil {
		t.Fatal(err)
	}
	if out, err := p.Get(tunnel); err == nil {
		t.Fatalf("a removed peer is still reachable: %.100s", out)
	}
}

// In strict mode the nodes' own addresses are reachable only through the tunnel: a request to the other
// node's link address is encrypted on the link; the plain-text port does show the marker (so the capture can
// fail); an outsider on the node network, and the provider, reach nothing but what they may (checkOutsider);
// without a peer the request fails at once instead of leaving in plain text; and a node that stops using the
// tunnel (a removed or misbehaving node) is not answered by the other.
func TestStrictMode(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables not installed")
	}
	p, err := wgmeshtest.NewStrictPair()
	if err == wgmeshtest.ErrUnsupported {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	checkBackend(t, p)
	b := "http://" + wgmeshtest.LinkB + ":" + strconv.Itoa(wgmeshtest.HTTPPort) + "/"
	var body string
	found, frames, err := p.Capture(func() error {
		var err error
		body, err = p.Get(b)
		return err
	})
	if err != nil || !strings.Contains(body, wgmeshtest.Marker) {
		t.Fatalf("request to the other node's address: %v: %.100s", err, body)
	}
	if frames == 0 || found {
		t.Fatalf("the marker crossed the link in plain text (frames %d, found %v) although the node address is routed through the tunnel", frames, found)
	}
	found, _, err = p.Capture(func() error {
		_, err := p.Get("http://" + wgmeshtest.LinkB + ":" + strconv.Itoa(wgmeshtest.PlaintextPort) + "/")
		return err
	})
	if err != nil || !found {
		t.Fatalf("the plain-text port must cross in plain text and the capture must see it (found %v, %v)", found, err)
	}
	checkOutsider(t, p)

	// A loses its peer: its request fails and nothing crosses in plain text.
	checkPresharedKeys(t, p)
	if err := p.A.Send("remove-peers"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.A.Expect("REMOVED"); err != nil {
		t.Fatal(err)
	}
	found, _, err = p.Capture(func() error {
		out, err := p.Get(b)
		if err == nil {
			return fmt.Errorf("a node without a tunnel to B reached it: %.100s", out)
		}
		return nil
	})
	if err != nil || found {
		t.Fatalf("without a peer: %v (marker on the link: %v)", err, found)
	}
	// A stops forcing its traffic through the tunnel and sends in plain text: B drops it.
	if err := p.A.Send("remove-routing"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.A.Expect("REMOVED"); err != nil {
		t.Fatal(err)
	}
	if out, err := p.Get(b); err == nil {
		t.Fatalf("B answered a plain-text request from the link: %.100s", out)
	}
}

// checkOutsider attacks node B from C, on the node network but no peer: from the join service's port as source
// port (which a filter by source port lets through, and whose replies a routing rule by port sends outside
// the tunnel) to a port B serves only through the tunnel and to B's pod; and from the provider's address to
// the same; and from a process on the peer A that binds the join service's port as its source port. Every
// attempt fails and the marker never crosses B's link in plain text. What they may do still
// works: C reaches B's join port, B its own join connection to C and the provider's service, the provider
// B's operator port, and A the pod through the tunnel, encrypted.
func checkOutsider(t *testing.T, p *wgmeshtest.Pair) {
	t.Helper()
	url := func(host string, port int) string { return "http://" + host + ":" + strconv.Itoa(port) + "/" }
	from := func(addr string, port int) []string {
		args := []string{"--interface", addr}
		if port != 0 {
			args = append(args, "--local-port", strconv.Itoa(port))
		}
		return args
	}
	provider := from(wgmeshtest.Provider, 0)
	for _, a := range []struct {
		name string
		ns   string
		url  string
		args []string
	}{
		{"the outsider from the join port to a tunnel-only port of B", p.NamespaceC, url(wgmeshtest.LinkB, wgmeshtest.HTTPPort), from(wgmeshtest.LinkC, wgmeshtest.PlaintextPort)},
		{"the outsider from the join port to B's pod", p.NamespaceC, url(wgmeshtest.PodB, wgmeshtest.HTTPPort), from(wgmeshtest.LinkC3, wgmeshtest.PlaintextPort)},
		{"the provider to a tunnel-only port of B", p.NamespaceC, url(wgmeshtest.LinkB, wgmeshtest.HTTPPort), provider},
		{"the provider from the join port to a tunnel-only port of B", p.NamespaceC, url(wgmeshtest.LinkB, wgmeshtest.HTTPPort), from(wgmeshtest.Provider, wgmeshtest.PlaintextPort)},
		{"the provider to B's pod", p.NamespaceC, url(wgmeshtest.PodB, wgmeshtest.HTTPPort), provider},
		// Not the join service but another process on a node that binds its port as source port: only
		// the join service's own connections leave outside the tunnel.
		{"a process on A from the join port to a tunnel-only port of B", p.NamespaceA, url(wgmeshtest.LinkB, wgmeshtest.HTTPPort), from(wgmeshtest.LinkA2, wgmeshtest.PlaintextPort)},
	} {
		var out string
		found, frames, err := wgmeshtest.CaptureIn(p.NamespaceB, p.LinkDevB, func() error {
			var err error
			out, err = wgmeshtest.GetIn(a.ns, a.url, a.args...)
			return err
		})
		if err == nil || found {
			t.Errorf("%s got through (answer %.60q, marker on B's link %v)", a.name, out, found)
		}
		// The request was sent and never answered (curl's exit status 28: timed out), not refused before it
		// left (say, a source port in use).
		var exit *exec.ExitError
		if err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 28) {
			t.Errorf("%s failed otherwise than by going unanswered: %v: %s", a.name, err, out)
		}
		if frames == 0 {
			t.Errorf("%s: the capture on B's link saw no frames", a.name)
		}
	}

	for _, c := range []struct {
		name string
		ns   string
		url  string
		args []string
	}{
		{"the outsider to B's join port", p.NamespaceC, url(wgmeshtest.LinkB, wgmeshtest.PlaintextPort), nil},
		{"B's own join connection to the outsider", p.NamespaceB, url(wgmeshtest.LinkC2, wgmeshtest.PlaintextPort), nil},
		{"B to the provider's service", p.NamespaceB, url(wgmeshtest.Provider, wgmeshtest.MetadataPort), nil},
		{"the provider to B's operator port", p.NamespaceC, url(wgmeshtest.LinkB, wgmeshtest.OperatorPort), provider},
		{"A to B's pod through the tunnel", p.NamespaceA, url(wgmeshtest.PodB, wgmeshtest.HTTPPort), nil},
	} {
		if out, err := wgmeshtest.GetIn(c.ns, c.url, c.args...); err != nil || !strings.Contains(out, wgmeshtest.Marker) {
			t.Errorf("%s failed: %v: %.100s", c.name, err, out)
		}
	}
	found, _, err := p.Capture(func() error {
		_, err := p.Get(url(wgmeshtest.PodB, wgmeshtest.HTTPPort))
		return err
	})
	if err != nil || found {
		t.Errorf("A to B's pod: %v (marker on the link: %v)", err, found)
	}
}

// checkBackend checks that each node's interface is what its mesh says runs it: a link of type "wireguard"
// for the kernel's WireGuard, a TUN device for the userspace implementation.
func checkBackend(t *testing.T, p *wgmeshtest.Pair) {
	t.Helper()
	for ns, h := range map[string]*wgmeshtest.Helper{p.NamespaceA: p.A, p.NamespaceB: p.B} {
		backend := strings.TrimSpace(strings.TrimPrefix(h.Ready, "READY"))
		out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "wg0").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link show wg0 in %s: %v: %s", ns, err, out)
		}
		want := map[string]string{string(wgmesh.BackendKernel): "wireguard", string(wgmesh.BackendUserspace): "tun"}[backend]
		if want == "" || !strings.Contains(string(out), "\n    "+want+" ") {
			t.Fatalf("node in %s says its backend is %q, but its interface is:\n%s", ns, backend, out)
		}
		t.Logf("node in %s: %s WireGuard", ns, backend)
	}
}

// checkPresharedKeys asks both nodes' devices for their peers: every peer has a preshared key.
func checkPresharedKeys(t *testing.T, p *wgmeshtest.Pair) {
	t.Helper()
	for name, h := range map[string]*wgmeshtest.Helper{"A": p.A, "B": p.B} {
		if err := h.Send("status"); err != nil {
			t.Fatal(err)
		}
		line, err := h.Expect("PEERS ")
		if err != nil {
			t.Fatal(err)
		}
		var peers, withPSK int
		fmt.Sscanf(line, "PEERS %d PSK %d", &peers, &withPSK)
		if peers == 0 || withPSK != peers {
			t.Fatalf("node %s: %d peers, %d with a preshared key: every peer needs one", name, peers, withPSK)
		}
	}
}

// A node that has the other's Curve25519 keys, as a future quantum computer would compute them from the
// public keys it recorded, but not the pair's preshared key gets no tunnel: the handshake fails and nothing
// crosses. (Here the two nodes derive their preshared keys from different roots.)
func TestTunnelNeedsThePresharedKey(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	p, err := wgmeshtest.NewPairWithRoots(wgmesh.Key{1}, wgmesh.Key{2})
	if err == wgmeshtest.ErrUnsupported {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	found, frames, err := p.Capture(func() error {
		out, err := p.Get("http://" + wgmeshtest.TunnelB + ":8080/")
		if err == nil {
			return fmt.Errorf("a tunnel came up without the pair's preshared key: %.100s", out)
		}
		return nil
	})
	if err != nil || found {
		t.Fatalf("%v (marker on the link: %v)", err, found)
	}
	if frames == 0 {
		t.Fatal("the capture saw no frames: A never tried a handshake")
	}
}

// A node that joins the mesh is added to the peers of every other node: the sessions those nodes have with
// their other peers stay as they are. (Replacing every peer dropped every session of every node whenever a
// node joined or left; the node at the other end, unaware, kept sending into the dropped session until
// WireGuard gave up on it, some 15 s later.)
func TestSetPeersKeepsTheSessionsOfUnchangedPeers(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	p, err := wgmeshtest.NewPair()
	if err == wgmeshtest.ErrUnsupported {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tunnel := "http://" + wgmeshtest.TunnelB + ":8080/"
	if body, err := p.Get(tunnel); err != nil {
		t.Fatalf("request through the tunnel: %v: %.100s", err, body)
	}
	handshake := func() string {
		t.Helper()
		if err := p.A.Send("handshake"); err != nil {
			t.Fatal(err)
		}
		line, err := p.A.Expect("HANDSHAKE ")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(strings.TrimPrefix(line, "HANDSHAKE "))
	}
	before := handshake()
	if before == "0" {
		t.Fatal("no session with B after a request through the tunnel")
	}
	if err := p.A.Send("add-peer"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.A.Expect("ADDED"); err != nil {
		t.Fatal(err)
	}
	if after := handshake(); after != before {
		t.Fatalf("adding a peer replaced the session with B (its handshake was at %s, now %s)", before, after)
	}
	if body, err := p.Get(tunnel); err != nil {
		t.Fatalf("request through the tunnel after a peer was added: %v: %.100s", err, body)
	}
}
