package wgmesh_test

import (
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
// fail); without a peer the request fails at once instead of leaving in plain text; and a node that stops
// using the tunnel (a removed or misbehaving node) is not answered by the other.
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

	// A loses its peer: its request fails and nothing crosses in plain text.
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
