package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/constellation-dev/constellation/internal/provider/qemu/guest"
)

// The node network's names. They differ from the mini provider's (bridge cst0, 10.217.0.0/24).
const (
	// Netns is the network namespace the provider creates and owns: the nodes' bridge and taps live there.
	Netns = "constellation-qemu"
	// HostLink is the host's end of the veth pair into Netns, with the address guest.Gateway; the only way
	// between the host and the node network.
	HostLink = "cstq0"
	// Bridge is the nodes' bridge in Netns: their taps and uplink are its ports.
	Bridge = "br0"
	// uplink is HostLink's peer in Netns, a port of the bridge.
	uplink = "uplink"
)

// netnsPath is where `ip netns` keeps the namespace.
var netnsPath = filepath.Join("/run/netns", Netns)

// ownerLockPath is the file whose lock (flock) the provider process holds for as long as its node network
// exists. The kernel releases the lock when that process ends in any way (a kill, a crash, a machine shut down
// under it), so a node network whose lock is free is the leftover of a provider that did not clean up.
var ownerLockPath = "/run/constellation-qemu-network.lock"

// claimNetwork makes this process the owner of the node network: it takes the owner lock, refusing when a
// live provider holds it, and removes the network a dead provider left behind. release gives the lock up; call
// it after networkDown.
func claimNetwork(log *slog.Logger) (release func(), err error) {
	f, err := os.OpenFile(ownerLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the node network's lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another QEMU cluster runs on this machine (its provider holds the node network, namespace %s): 'constellation terminate' in its workspace stops it", Netns)
		}
		return nil, fmt.Errorf("locking %s: %w", ownerLockPath, err)
	}
	if NetworkInUse() {
		log.Warn("removing the node network a QEMU provider left behind when it stopped without cleaning up", "namespace", Netns, "link", HostLink)
		if err := networkDown(); err != nil {
			f.Close()
			return nil, fmt.Errorf("removing the node network a stopped provider left: %w", err)
		}
	}
	return func() { f.Close() }, nil
}

// NetworkOwned reports whether a live QEMU provider holds the node network on this machine: a QEMU cluster
// runs. A network that exists but is not owned is a dead provider's leftover, which the next provider removes.
func NetworkOwned() bool {
	f, err := os.OpenFile(ownerLockPath, os.O_RDWR, 0)
	if err != nil {
		return false // no provider has ever run since the machine booted (/run is memory)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// networkUp creates the node network: the namespace with its bridge, and the veth pair that gives the host
// (the CLI, the metadata service) the address guest.Gateway on it. Nothing routes off the namespace: it has
// no addresses, no routes and no forwarding; the nodes set no default route.
func networkUp() error {
	gw := netip.PrefixFrom(guest.Gateway, guest.NodeNetwork.Bits())
	steps := [][]string{
		{"ip", "netns", "add", Netns},
		{"ip", "-n", Netns, "link", "set", "lo", "up"},
		{"ip", "-n", Netns, "link", "add", Bridge, "type", "bridge"},
		{"ip", "-n", Netns, "link", "set", Bridge, "up"},
		{"ip", "link", "add", HostLink, "type", "veth", "peer", "name", uplink, "netns", Netns},
		{"ip", "-n", Netns, "link", "set", uplink, "master", Bridge, "up"},
		{"ip", "addr", "add", gw.String(), "dev", HostLink},
		{"ip", "link", "set", HostLink, "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return fmt.Errorf("creating the node network %s: %w", guest.NodeNetwork, err)
		}
	}
	return nil
}

// addTap creates the tap device of a node's network card on the bridge.
func addTap(name string) error {
	for _, s := range [][]string{
		{"ip", "-n", Netns, "tuntap", "add", "dev", name, "mode", "tap"},
		{"ip", "-n", Netns, "link", "set", name, "master", Bridge, "up"},
	} {
		if err := run(s...); err != nil {
			return fmt.Errorf("creating the tap device %s: %w", name, err)
		}
	}
	return nil
}

// networkDown removes the namespace (and with it the bridge, the taps and the veth pair). Missing parts are
// not an error.
func networkDown() error {
	var errs []string
	if _, err := os.Stat(netnsPath); err == nil {
		if err := run("ip", "netns", "del", Netns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if linkExists(HostLink) {
		if err := run("ip", "link", "del", HostLink); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing the node network: %s", strings.Join(errs, "; "))
	}
	return nil
}

// NetworkInUse reports whether the QEMU provider's node network exists on this machine.
func NetworkInUse() bool {
	_, err := os.Stat(netnsPath)
	return err == nil || linkExists(HostLink)
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
