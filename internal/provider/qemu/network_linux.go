package qemu

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

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
