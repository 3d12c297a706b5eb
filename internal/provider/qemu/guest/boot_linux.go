package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// deviceWait bounds the wait for the network card and the TPM to appear.
const deviceWait = 60 * time.Second

// Prepare readies the machine for the node's first process: writable /run (with /run/constellation for the
// node's local sockets) and /tmp (the root is read-only),
// securityfs for the firmware's event log, the network card's address derived from its MAC address, and the
// TPM device. It returns the node's provider seam, the TPM's path and the state disk's device node.
func Prepare(ctx context.Context, log *slog.Logger) (*Client, string, string, error) {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"securityfs", "/sys/kernel/security", "securityfs", ""},
	} {
		if err := mountOnce(m.src, m.dst, m.fstype, m.data); err != nil {
			return nil, "", "", err
		}
	}
	// The node's local sockets (attestation agent, mesh, key service) live here, for root only.
	if err := os.MkdirAll("/run/constellation", 0o700); err != nil {
		return nil, "", "", err
	}
	if err := writableEtc(); err != nil {
		return nil, "", "", err
	}
	if err := mountCgroups(); err != nil {
		return nil, "", "", err
	}
	// A Kubernetes node routes its pods' traffic (the bridge CNI), and bridged pod traffic must pass the
	// node's packet filter (kube-proxy's rules, the mesh's strict rules).
	for _, k := range []string{"net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"} {
		if err := os.WriteFile("/proc/sys/"+k, []byte("1"), 0); err != nil {
			return nil, "", "", fmt.Errorf("setting %s: %w (is br_netfilter loaded?)", k, err)
		}
	}
	addr, link, err := configureNetwork(ctx)
	if err != nil {
		return nil, "", "", err
	}
	log.Info("network configured from the MAC address", "link", link, "address", addr, "metadata", MetadataURL)
	if err := waitFor(ctx, TPMDevice); err != nil {
		return nil, "", "", fmt.Errorf("the machine's TPM: %w", err)
	}
	disk, err := findStateDisk(ctx, "/sys/class/block")
	if err != nil {
		return nil, "", "", err
	}
	log.Info("state disk found", "device", disk)
	return NewClient(MetadataURL), TPMDevice, disk, nil
}

// findStateDisk returns the device node of the machine's state disk: its one writable virtio disk (the boot
// disk is read-only). Which disk the host attached is not trusted: the node opens it only as a LUKS2 volume
// with integrity under a key from attestation, and refuses a disk it cannot authenticate.
func findStateDisk(ctx context.Context, sysBlock string) (string, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		disks, err := writableVirtioDisks(sysBlock)
		if err != nil {
			return "", err
		}
		switch {
		case len(disks) == 1:
			return "/dev/" + disks[0], nil
		case len(disks) > 1:
			return "", fmt.Errorf("%d writable virtio disks (%v); the QEMU provider attaches exactly one state disk", len(disks), disks)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no writable virtio disk (the state disk) appeared within %s (is virtio_blk loaded?)", deviceWait)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writableVirtioDisks lists the whole virtio disks (vd*) whose read-only flag is 0.
func writableVirtioDisks(sysBlock string) ([]string, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("listing block devices: %w", err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "vd") {
			continue
		}
		if _, err := os.Stat(filepath.Join(sysBlock, name, "partition")); err == nil {
			continue // a partition, not a whole disk
		}
		ro, err := os.ReadFile(filepath.Join(sysBlock, name, "ro"))
		if err != nil {
			return nil, fmt.Errorf("reading the read-only flag of %s: %w", name, err)
		}
		if strings.TrimSpace(string(ro)) == "0" {
			out = append(out, name)
		}
	}
	return out, nil
}

// etcUpper is the in-memory layer over the image's /etc.
const etcUpper = "/run/constellation/etc"

// writableEtc puts an in-memory layer over the image's read-only /etc (an overlay whose upper directory is on
// /run): containerd's and the CNI's configuration are written at boot, and nothing written there reaches a
// disk of the host. The image's /etc/resolv.conf (empty: the node network has no resolver, and a node never
// asks the host's) and /etc/hosts show through.
func writableEtc() error {
	if unix.Access("/etc", unix.W_OK) == nil {
		return nil // already writable
	}
	upper, work := etcUpper+"/upper", etcUpper+"/work"
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("overlay", "/etc", "overlay", unix.MS_NOSUID|unix.MS_NODEV, "lowerdir=/etc,upperdir="+upper+",workdir="+work); err != nil {
		return fmt.Errorf("an in-memory layer over /etc: %w (is the overlay module loaded?)", err)
	}
	return nil
}

// CgroupParent is the cgroup (below the cgroup v2 root) under which the node's kubelet keeps its pods, as on
// the mini provider.
const CgroupParent = "constellation"

// mountCgroups mounts the cgroup v2 hierarchy and hands every controller down to CgroupParent and its
// children (the kubelet's cgroup root is CgroupParent/<node name>).
func mountCgroups() error {
	const root = "/sys/fs/cgroup"
	if err := mountOnce("cgroup2", root, "cgroup2", ""); err != nil {
		return err
	}
	parent := filepath.Join(root, CgroupParent)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating the cgroup %s: %w", parent, err)
	}
	for _, dir := range []string{root, parent} {
		raw, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			return fmt.Errorf("the cgroup controllers: %w", err)
		}
		var enable []string
		for _, c := range strings.Fields(string(raw)) {
			enable = append(enable, "+"+c)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0); err != nil {
			return fmt.Errorf("enabling the cgroup controllers %v in %s: %w", enable, dir, err)
		}
	}
	return nil
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
