// Package guest is the QEMU provider's side of the node's provider seam, inside the virtual machine: it
// implements provider.Node for a node booted from the bootable disk image (package bootimage) on the QEMU
// provider's network.
//
// # Addresses
//
// The kernel command line is part of the measured unified kernel image and the same for every node, so a node
// cannot learn its address from it. As clouds do, the provider assigns each machine's network card a MAC
// address from which the node derives its IPv4 address: 52:54 followed by the four bytes of the address
// ([MACForAddr], [AddrFromMAC]), in the provider's node network [NodeNetwork] (10.219.0.0/24). The metadata
// service listens at a fixed address of that network, [Gateway] (10.219.0.1), port [MetadataPort]. The node
// sets no default route: nothing but the node network is reachable. Whatever the host answers this way
// (address, metadata) is untrusted: the node's name and role come from its attestation-key certificate, which
// only its own TPM can obtain, and its boot from a quote over the TPM's PCRs.
//
// # Event log and TPM
//
// The node's TPM is the machine's (the kernel's resource manager, /dev/tpmrm0). The event log is the guest's
// own: the firmware's TCG log as the kernel exposes it in securityfs ([EventLogPath]), never one from the host;
// a verifier replays it against the quoted PCRs.
package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
)

// ProviderName is the QEMU provider's name.
const ProviderName = "qemu"

// The QEMU provider's networks. They differ from the mini provider's, so that both can run on one machine.
var (
	// NodeNetwork is the network of the nodes and the provider.
	NodeNetwork = netip.MustParsePrefix("10.219.0.0/24")
	// Gateway is the provider's address on the node network, where the metadata service listens.
	Gateway = netip.MustParseAddr("10.219.0.1")
	// PodSubnet holds every node's pod range (a /24 each); ServiceCIDR is the cluster's service network.
	PodSubnet   = netip.MustParsePrefix("10.220.0.0/16")
	ServiceCIDR = netip.MustParsePrefix("10.98.0.0/16")
)

// MetadataPort is the metadata service's port on Gateway.
const MetadataPort = 8080

// MetadataURL is the metadata service's base URL.
var MetadataURL = fmt.Sprintf("http://%s", netip.AddrPortFrom(Gateway, MetadataPort))

// EventLogPath is where the kernel exposes the firmware's TCG event log.
const EventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// TPMDevice is the kernel's TPM resource manager.
const TPMDevice = "/dev/tpmrm0"

// macPrefix starts every MAC address the provider assigns: locally administered, unicast.
var macPrefix = [2]byte{0x52, 0x54}

// MACForAddr is the MAC address of the network card of the node with address addr.
func MACForAddr(addr netip.Addr) (net.HardwareAddr, error) {
	if err := checkNodeAddr(addr); err != nil {
		return nil, err
	}
	a := addr.As4()
	return net.HardwareAddr{macPrefix[0], macPrefix[1], a[0], a[1], a[2], a[3]}, nil
}

// AddrFromMAC is the address a node whose network card has the MAC address mac takes.
func AddrFromMAC(mac net.HardwareAddr) (netip.Addr, error) {
	if len(mac) != 6 || mac[0] != macPrefix[0] || mac[1] != macPrefix[1] {
		return netip.Addr{}, fmt.Errorf("MAC address %s was not assigned by the QEMU provider (want %02x:%02x:<IPv4 address>)", mac, macPrefix[0], macPrefix[1])
	}
	addr := netip.AddrFrom4([4]byte(mac[2:6]))
	if err := checkNodeAddr(addr); err != nil {
		return netip.Addr{}, fmt.Errorf("MAC address %s: %w", mac, err)
	}
	return addr, nil
}

// checkNodeAddr refuses addresses a node cannot have: outside the node network, its network or broadcast
// address, or the provider's.
func checkNodeAddr(addr netip.Addr) error {
	last := addr.As16()[15]
	if !addr.Is4() || !NodeNetwork.Contains(addr) || addr == Gateway || last == 0 || last == 255 {
		return fmt.Errorf("%s is not a node address of the QEMU provider's network %s", addr, NodeNetwork)
	}
	return nil
}

// Client is the QEMU provider's side of the node's provider seam: identity, instances, attestation-key
// enrolment and the init-secret hash from the provider's metadata service (the mini provider's service and
// protocol, package metadata), the event log from the guest's own kernel.
type Client struct {
	*metadata.Client
	// EventLogFile is where EventLog reads the firmware's event log; EventLogPath unless a test sets it.
	EventLogFile string
}

var _ provider.Node = (*Client)(nil)

// NewClient returns the provider seam of a node that reaches the metadata service at endpoint.
func NewClient(endpoint string) *Client {
	return &Client{Client: metadata.NewClient(endpoint), EventLogFile: EventLogPath}
}

// Name is the provider's name.
func (c *Client) Name() string { return ProviderName }

// Variant is the attestation variant of the QEMU provider's nodes.
func (c *Client) Variant() attestation.Variant { return attestation.QEMUVTPM }

// Networks are the cluster's pod and service networks.
func (c *Client) Networks() (pods, services netip.Prefix) { return PodSubnet, ServiceCIDR }

// EventLog returns the firmware's TCG event log of this machine's boot, as the guest's kernel exposes it.
func (c *Client) EventLog(_ context.Context) ([]byte, error) {
	raw, err := os.ReadFile(c.EventLogFile)
	if err != nil {
		return nil, fmt.Errorf("reading the firmware's event log: %w (is securityfs mounted at /sys/kernel/security, and does the machine have a TPM?)", err)
	}
	if len(raw) == 0 {
		return nil, errors.New("the firmware's event log is empty: the firmware measured nothing, or the kernel found no log")
	}
	return raw, nil
}
