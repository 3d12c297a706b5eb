package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// deviceWait bounds the wait for the network card and the TPM to appear.
const deviceWait = 60 * time.Second

// Prepare readies the machine for the node's first process: writable /run (with /run/constellation for the
// node's local sockets) and /tmp (the root is read-only),
// securityfs for the firmware's event log, the network card's address derived from its MAC address, and the
// TPM device. It returns the node's provider seam and the TPM's path.
func Prepare(ctx context.Context, log *slog.Logger) (*Client, string, error) {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"securityfs", "/sys/kernel/security", "securityfs", ""},
	} {
		if err := mountOnce(m.src, m.dst, m.fstype, m.data); err != nil {
			return nil, "", err
		}
	}
	// The node's local sockets (attestation agent, mesh, key service) live here, for root only.
	if err := os.MkdirAll("/run/constellation", 0o700); err != nil {
		return nil, "", err
	}
	addr, link, err := configureNetwork(ctx)
	if err != nil {
		return nil, "", err
	}
	log.Info("network configured from the MAC address", "link", link, "address", addr, "metadata", MetadataURL)
	if err := waitFor(ctx, TPMDevice); err != nil {
		return nil, "", fmt.Errorf("the machine's TPM: %w", err)
	}
	return NewClient(MetadataURL), TPMDevice, nil
}

// mountOnce mounts fstype at dst unless something is mounted there already.
func mountOnce(src, dst, fstype, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil && !errors.Is(err, unix.EROFS) {
		return fmt.Errorf("mounting %s: %w", dst, err)
	}
	var st, parent unix.Stat_t
	if unix.Stat(dst, &st) == nil && unix.Stat(dst+"/..", &parent) == nil && st.Dev != parent.Dev {
		return nil // already a mount point
	}
	if err := unix.Mount(src, dst, fstype, unix.MS_NOSUID|unix.MS_NODEV, data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mounting %s on %s: %w", fstype, dst, err)
	}
	return nil
}

// configureNetwork brings up loopback and the one network card with a MAC address the provider assigned,
// with the address derived from it. It sets no default route: only the node network is reachable.
func configureNetwork(ctx context.Context) (netip.Addr, string, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return netip.Addr{}, "", fmt.Errorf("loopback: %w", err)
	}
	deadline := time.Now().Add(deviceWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return netip.Addr{}, "", fmt.Errorf("listing network links: %w", err)
		}
		var found []netlink.Link
		var addr netip.Addr
		for _, l := range links {
			if a, err := AddrFromMAC(l.Attrs().HardwareAddr); err == nil {
				found, addr = append(found, l), a
			}
		}
		switch {
		case len(found) == 1:
			l := found[0]
			ipnet := &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(NodeNetwork.Bits(), 32)}
			if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipnet}); err != nil {
				return netip.Addr{}, "", fmt.Errorf("setting %s on %s: %w", addr, l.Attrs().Name, err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return netip.Addr{}, "", fmt.Errorf("bringing %s up: %w", l.Attrs().Name, err)
			}
			return addr, l.Attrs().Name, nil
		case len(found) > 1:
			return netip.Addr{}, "", fmt.Errorf("%d network cards have a MAC address of the QEMU provider; want exactly one", len(found))
		}
		if time.Now().After(deadline) {
			return netip.Addr{}, "", fmt.Errorf("no network card with a MAC address of the QEMU provider appeared within %s (is the virtio_net module loaded?)", deviceWait)
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitFor waits for a device node to appear.
func waitFor(ctx context.Context, path string) error {
	deadline := time.Now().Add(deviceWait)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
