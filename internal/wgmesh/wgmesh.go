// Package wgmesh encrypts traffic between nodes with WireGuard: every node runs a WireGuard interface whose
// peers are exactly the other attested members of the cluster, and traffic to a peer's addresses goes through
// the tunnel.
//
// Where the kernel has WireGuard, the kernel's device would be used; this machine's kernel has none, so the
// interface is a TUN device driven by the userspace implementation (golang.zx2c4.com/wireguard), in the
// network namespace of the process that starts it. A node's private key is generated on the node and never
// leaves it; only public keys are exchanged.
package wgmesh

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// Key is a WireGuard (Curve25519) key.
type Key [32]byte

// String encodes the key as WireGuard tools do (base64).
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey parses a base64 WireGuard key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("WireGuard key %.60q is not 32 bytes in base64", s)
	}
	copy(k[:], b)
	return k, nil
}

// GenerateKey returns a new private key and its public key.
func GenerateKey() (private, public Key, err error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return private, public, err
	}
	copy(private[:], priv.Bytes())
	copy(public[:], priv.PublicKey().Bytes())
	return private, public, nil
}

// Config configures a node's WireGuard interface.
type Config struct {
	// Interface is the interface name, for example wg0.
	Interface string
	// PrivateKey is this node's key; it never leaves the node.
	PrivateKey Key
	// ListenPort is the UDP port peers send to.
	ListenPort int
	// MTU of the interface: the path MTU minus WireGuard's overhead (60 bytes over IPv4, 80 over IPv6), so
	// that nothing fragments.
	MTU int
}

// Overhead is what WireGuard adds to every packet over IPv6 paths (over IPv4, 20 bytes less): outer IP and
// UDP headers, WireGuard's header and the authentication tag.
const Overhead = 80

// Peer is another node of the mesh.
type Peer struct {
	PublicKey Key
	// Endpoint is where the peer's WireGuard listens (its node address and port).
	Endpoint netip.AddrPort
	// AllowedIPs are the peer's addresses inside the tunnel: only packets from these are accepted from it,
	// and packets to them go to it.
	AllowedIPs []netip.Prefix
}

// Mesh is a running WireGuard interface.
type Mesh struct {
	cfg Config
	dev *device.Device
	tun tun.Device

	mu    sync.Mutex
	peers []Peer
}

// Start creates the interface in the caller's network namespace and brings it up, with no peers.
func Start(cfg Config) (*Mesh, error) {
	if cfg.Interface == "" || cfg.ListenPort <= 0 || cfg.ListenPort > 65535 || cfg.MTU < 1280 {
		return nil, fmt.Errorf("WireGuard configuration incomplete: interface %q, port %d, MTU %d (at least 1280)", cfg.Interface, cfg.ListenPort, cfg.MTU)
	}
	if cfg.PrivateKey == (Key{}) {
		return nil, errors.New("WireGuard configuration has no private key")
	}
	t, err := tun.CreateTUN(cfg.Interface, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w (is /dev/net/tun available?)", cfg.Interface, err)
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	m := &Mesh{cfg: cfg, dev: dev, tun: t}
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.ListenPort)
	if err := dev.IpcSet(uapi); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configuring %s: %w", cfg.Interface, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("bringing %s up: %w", cfg.Interface, err)
	}
	if err := ip("link", "set", cfg.Interface, "up"); err != nil {
		dev.Close()
		return nil, err
	}
	return m, nil
}

// SetPeers makes peers the mesh's only peers: a node that is not in the list stops being a peer at once, and
// the routes to its addresses through the tunnel are removed.
func (m *Mesh) SetPeers(peers []Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	b.WriteString("replace_peers=true\n")
	for _, p := range peers {
		if p.PublicKey == (Key{}) || !p.Endpoint.IsValid() {
			return fmt.Errorf("peer %s has no public key or no endpoint", p.PublicKey)
		}
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", hex.EncodeToString(p.PublicKey[:]), p.Endpoint)
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a.Masked())
		}
	}
	if err := m.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("setting the peers of %s: %w", m.cfg.Interface, err)
	}
	// Routes: every allowed prefix of a current peer through the tunnel; routes of removed peers go.
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		for _, a := range p.AllowedIPs {
			want[a.Masked()] = true
		}
	}
	for _, p := range m.peers {
		for _, a := range p.AllowedIPs {
			if !want[a.Masked()] {
				ip("route", "del", a.Masked().String(), "dev", m.cfg.Interface)
			}
		}
	}
	for a := range want {
		if err := ip("route", "replace", a.String(), "dev", m.cfg.Interface); err != nil {
			return err
		}
	}
	m.peers = slices.Clone(peers)
	return nil
}

// AddAddress gives the interface an address inside the tunnel.
func (m *Mesh) AddAddress(a netip.Prefix) error {
	return ip("addr", "add", a.String(), "dev", m.cfg.Interface)
}

// Close removes the interface.
func (m *Mesh) Close() {
	m.dev.Close()
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
