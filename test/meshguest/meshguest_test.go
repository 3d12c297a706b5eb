//go:build linux

package main

import (
	"os"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/test/guestvm"
)

// TestGuest boots a virtual machine built like a node (see package test/guestvm) with this program as its
// first process, and checks its report: the node's kernel modules are loaded; two mesh nodes in network
// namespaces of their own bring up the mesh on the kernel's WireGuard (links of type "wireguard"); traffic
// between their node addresses flows and a capture on the veth between them sees only WireGuard and no
// plaintext, while the join port's plain text is visible to the same capture; and when the tunnel goes (A
// and B drop each other as peers), A's traffic to B fails at once instead of crossing in plain text.
func TestGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a virtual machine (-short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (QEMU's disks, swtpm)")
	}
	if err := guestvm.Prerequisites(); err != nil {
		t.Skip(err)
	}
	r, err := guestvm.Run(t.Context(), t.TempDir(), guestvm.Options{
		Package: "github.com/constellation-dev/constellation/test/meshguest",
		Args:    []string{"-net-bytes=4194304", "-disk-bytes=8388608"},
		Disks:   []guestvm.Disk{{Serial: "plain", Size: 32 << 20}, {Serial: "luks", Size: 48 << 20}},
	})
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, r.Boot.Console)
	}
	for _, c := range []string{"modules", "backend-a", "backend-b", "presharedkeys", "tunnel", "capture",
		"capture-control", "strict", "net-veth", "net-wireguard", "disk-plain", "disk-luks2"} {
		d, ok := r.Checks[c]
		if !ok {
			t.Fatalf("the guest did not report %q; console:\n%s", c, r.Boot.Console)
		}
		t.Logf("%s: %s", c, d)
	}
	for _, c := range []string{"backend-a", "backend-b"} {
		if !strings.Contains(r.Checks[c], "backend=kernel linktype=wireguard") {
			t.Errorf("%s: the mesh does not run on the kernel's WireGuard: %s", c, r.Checks[c])
		}
	}
	if !strings.Contains(r.Checks["capture"], "found=false unexpected=[]") {
		t.Errorf("the capture during the tunnel's traffic: %s", r.Checks["capture"])
	}
	if !strings.Contains(r.Checks["capture-control"], "found=true") {
		t.Errorf("the capture cannot see plain text: %s", r.Checks["capture-control"])
	}
	// Without the tunnel the request fails at once, on the route (not by going unanswered), and neither the
	// request nor an answer crosses in plain text.
	if s := r.Checks["strict"]; !strings.Contains(s, "GETERR") || strings.Contains(s, "found=true") || !strings.HasSuffix(s, "unexpected=[]") ||
		!(strings.Contains(s, "no route to host") || strings.Contains(s, "network is unreachable")) {
		t.Errorf("without the tunnel: %s", s)
	}
}
