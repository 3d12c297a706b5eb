package suite

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/constellation-dev/constellation/test/guestvm"
)

func init() {
	register(Suite{Names: []string{"guest-disk-write-ratio", "guest-wireguard-ratio",
		"guest-disk-write-plain", "guest-disk-write-luks2", "guest-veth", "guest-wireguard"}, Run: runGuest})
}

// runGuest boots one virtual machine built like a node (test/guestvm, QEMU with TCG) whose first process is
// test/meshguest, and reports what it measured inside the guest, in that one run: sequential writes through a
// LUKS2 mapping with dm-integrity (aes-xts-plain64, hmac-sha256) against the plain disk, and TCP throughput
// between two network namespaces through the kernel's WireGuard (the mesh in strict mode) against the plain
// veth between them. Under TCG every figure is far below real hardware; the ratios are what carries over.
func runGuest(ctx context.Context) ([]Result, error) {
	if err := guestvm.Prerequisites(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bench-guest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	r, err := guestvm.Run(ctx, dir, guestvm.Options{
		Package: "github.com/constellation-dev/constellation/test/meshguest",
		Args:    []string{"-net-bytes=33554432", "-disk-bytes=33554432"},
		Disks:   []guestvm.Disk{{Serial: "plain", Size: 64 << 20}, {Serial: "luks", Size: 96 << 20}},
	})
	if err != nil {
		return nil, fmt.Errorf("%w\nconsole:\n%s", err, r.Boot.Console)
	}
	figure := func(check string) (float64, error) {
		d, ok := r.Checks[check]
		if !ok {
			return 0, fmt.Errorf("the guest did not report %s", check)
		}
		f := strings.Fields(d)
		if len(f) == 0 {
			return 0, fmt.Errorf("the guest's %s is empty", check)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || v <= 0 {
			return 0, fmt.Errorf("the guest's %s: %q", check, d)
		}
		return v, nil
	}
	var v [4]float64
	for i, c := range []string{"disk-plain", "disk-luks2", "net-veth", "net-wireguard"} {
		if v[i], err = figure(c); err != nil {
			return nil, err
		}
	}
	return []Result{
		{"guest-disk-write-ratio", v[1] / v[0], "x"},
		{"guest-wireguard-ratio", v[3] / v[2], "x"},
		{"guest-disk-write-plain", v[0], "MB/s"},
		{"guest-disk-write-luks2", v[1], "MB/s"},
		{"guest-veth", v[2], "Mbit/s"},
		{"guest-wireguard", v[3], "Mbit/s"},
	}, nil
}
