// Package wgmesh encrypts traffic between nodes with WireGuard: every node runs a WireGuard interface whose
// peers are exactly the other attested members of the cluster, and traffic to a peer's addresses goes through
// the tunnel.
//
// Every pair of peers also shares a preshared key ([PairKey]), mixed into WireGuard's handshake: recorded
// traffic stays secret against a future quantum computer that breaks Curve25519, as long as the preshared key
// does not leak. A peer without one is never configured (fail closed).
//
// Where the kernel has WireGuard (a node's VM: Debian's kernel with the wireguard module), the interface is the
// kernel's, a link of type "wireguard" configured over generic netlink (wgctrl). Where it has none (the mini
// provider's host), the interface is a TUN device driven by the userspace implementation
// (golang.zx2c4.com/wireguard) inside the process that starts it. Either way it lives in the network namespace
// of that process, and everything above the device (peers with their preshared keys, routes, policy rules,
// filters) is the same; [Mesh.Backend] says which runs. A node's private key is generated on the node and
// never leaves it; only public keys are exchanged.
package wgmesh

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
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

// PublicKey returns the public key of a private key.
func PublicKey(private Key) (Key, error) {
	priv, err := ecdh.X25519().NewPrivateKey(private[:])
	if err != nil {
		return Key{}, err
	}
	return Key(priv.PublicKey().Bytes()), nil
}

// pairKeyLabel is the HKDF info prefix of a pair's preshared key; the pair's public keys follow it. It is
// part of the derivation and never changes.
const pairKeyLabel = "constellation/v1/wireguard-psk/"

// PairKey returns the preshared key of the peers with the public keys a and b (in either order), derived from
// the mesh's root key with HKDF-SHA256: info is the label followed by the two public keys, the lower first.
// Each pair has a key of its own; both ends derive the same one.
func PairKey(root, a, b Key) (Key, error) {
	if root == (Key{}) {
		return Key{}, errors.New("no WireGuard preshared root key: refusing to derive a pair's preshared key from nothing")
	}
	if a == (Key{}) || b == (Key{}) || a == b {
		return Key{}, fmt.Errorf("a preshared key needs two distinct public keys, got %s and %s", a, b)
	}
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	k, err := hkdf.Key(sha256.New, root[:], nil, pairKeyLabel+string(a[:])+string(b[:]), len(Key{}))
	if err != nil {
		return Key{}, err
	}
	return Key(k), nil
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
	// Routing, if set, routes through the tunnel by policy (see [Routing]); without it, the routes to the
	// peers' addresses go into the main table.
	Routing *Routing
	// Backend chooses what runs the device; the default (BackendAuto) is the kernel's WireGuard where the
	// kernel has it, else the userspace implementation.
	Backend Backend
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
	// PresharedKey is the pair's preshared key ([PairKey]); required.
	PresharedKey Key
}

// Mesh is a running WireGuard interface.
type Mesh struct {
	cfg     Config
	dev     wgDevice
	backend Backend
	link    netlink.Link

	mu    sync.Mutex
	peers []Peer
}

// Start creates the interface in the caller's network namespace and brings it up, with no peers. The device
// is the kernel's WireGuard where the kernel has it (cfg.Backend chooses otherwise); above the device,
// everything is the same for both.
func Start(cfg Config) (*Mesh, error) {
	if cfg.Interface == "" || cfg.ListenPort <= 0 || cfg.ListenPort > 65535 || cfg.MTU < 1280 {
		return nil, fmt.Errorf("WireGuard configuration incomplete: interface %q, port %d, MTU %d (at least 1280)", cfg.Interface, cfg.ListenPort, cfg.MTU)
	}
	if cfg.PrivateKey == (Key{}) {
		return nil, errors.New("WireGuard configuration has no private key")
	}
	if cfg.Routing != nil {
		if err := cfg.Routing.check(); err != nil {
			return nil, err
		}
	}
	dev, link, backend, err := newDevice(cfg.Backend, cfg.Interface, cfg.MTU)
	if err != nil {
		return nil, err
	}
	m := &Mesh{cfg: cfg, dev: dev, backend: backend, link: link}
	private, port := wgtypes.Key(cfg.PrivateKey), cfg.ListenPort
	set := wgtypes.Config{PrivateKey: &private, ListenPort: &port, ReplacePeers: true}
	if cfg.Routing != nil {
		mark := int(cfg.Routing.Mark)
		set.FirewallMark = &mark
	}
	if err := dev.configure(set); err != nil {
		dev.close()
		return nil, fmt.Errorf("configuring %s (%s WireGuard): %w", cfg.Interface, backend, err)
	}
	if err := netlink.LinkSetUp(m.link); err != nil {
		dev.close()
		return nil, fmt.Errorf("bringing %s up: %w", cfg.Interface, err)
	}
	if cfg.Routing != nil {
		if err := cfg.Routing.install(cfg.ListenPort); err != nil {
			dev.close()
			return nil, err
		}
	}
	return m, nil
}

// Backend says what runs the device: BackendKernel or BackendUserspace.
func (m *Mesh) Backend() Backend { return m.backend }

// SetPeers makes peers the mesh's only peers: a node that is not in the list stops being a peer at once, and
// the routes to its addresses through the tunnel are removed. Only what changed is configured: a peer that
// stays as it was keeps its session (replacing every peer would drop every session of the node whenever a node
// joins or leaves the cluster, and a peer that did not notice keeps sending into a session the other end no
// longer has until WireGuard gives up on it, about 15 s later).
func (m *Mesh) SetPeers(peers []Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range peers {
		if p.PublicKey == (Key{}) || !p.Endpoint.IsValid() {
			return fmt.Errorf("peer %s has no public key or no endpoint", p.PublicKey)
		}
		if p.PresharedKey == (Key{}) {
			return fmt.Errorf("peer %s has no preshared key: refusing to configure it (its traffic would have no post-quantum protection)", p.PublicKey)
		}
	}
	// The device has one peer per key; of peers with the same key the last one counts, as it would in a
	// configuration that names them all.
	want, before := byKey(peers), byKey(m.peers)
	var set wgtypes.Config
	for _, p := range peers {
		if w := want[p.PublicKey]; !samePeer(w, p) || sent(set.Peers, p.PublicKey) {
			continue // a later peer of the same key counts
		}
		if b, ok := before[p.PublicKey]; ok && samePeer(b, p) {
			continue
		}
		psk := wgtypes.Key(p.PresharedKey)
		pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), PresharedKey: &psk,
			Endpoint: net.UDPAddrFromAddrPort(p.Endpoint), ReplaceAllowedIPs: true}
		for _, a := range p.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, *ipNet(a))
		}
		set.Peers = append(set.Peers, pc)
	}
	for _, p := range m.peers {
		if _, ok := want[p.PublicKey]; !ok && !sent(set.Peers, p.PublicKey) {
			set.Peers = append(set.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), Remove: true})
		}
	}
	if len(set.Peers) > 0 {
		if err := m.dev.configure(set); err != nil {
			return fmt.Errorf("setting the peers of %s: %w", m.cfg.Interface, err)
		}
	}
	// Routes: every allowed prefix of a current peer through the tunnel; routes of removed peers go.
	routes := map[netip.Prefix]bool{}
	for _, p := range want {
		for _, a := range p.AllowedIPs {
			routes[a.Masked()] = true
		}
	}
	for _, p := range m.peers {
		for _, a := range p.AllowedIPs {
			if !routes[a.Masked()] {
				netlink.RouteDel(m.route(a.Masked()))
			}
		}
	}
	for a := range routes {
		if err := netlink.RouteReplace(m.route(a)); err != nil {
			return fmt.Errorf("routing %s through %s: %w", a, m.cfg.Interface, err)
		}
	}
	m.peers = slices.Clone(peers)
	return nil
}

// byKey is the peer of each key, the last of peers with the same key.
func byKey(peers []Peer) map[Key]Peer {
	out := make(map[Key]Peer, len(peers))
	for _, p := range peers {
		out[p.PublicKey] = p
	}
	return out
}

// samePeer reports whether a and b configure the device alike.
func samePeer(a, b Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint && a.PresharedKey == b.PresharedKey && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// sent reports whether cfg configures the peer of key already.
func sent(cfg []wgtypes.PeerConfig, key Key) bool {
	return slices.ContainsFunc(cfg, func(pc wgtypes.PeerConfig) bool { return pc.PublicKey == wgtypes.Key(key) })
}

// route is the route of a peer's prefix through the tunnel.
func (m *Mesh) route(a netip.Prefix) *netlink.Route {
	r := &netlink.Route{LinkIndex: m.link.Attrs().Index, Dst: ipNet(a), Scope: netlink.SCOPE_LINK}
	if m.cfg.Routing != nil {
		r.Table = m.cfg.Routing.Table
		if m.cfg.Routing.Source.IsValid() {
			r.Src = m.cfg.Routing.Source.AsSlice()
		}
	}
	return r
}

// PeerStatus is a peer as the running device has it.
type PeerStatus struct {
	PublicKey       Key
	HasPresharedKey bool
	// LastHandshake is when the peer's current session began (zero: none yet).
	LastHandshake time.Time
}

// Status reads the peers from the running device itself (not from what was asked of it).
func (m *Mesh) Status() ([]PeerStatus, error) {
	st, err := m.dev.state()
	if err != nil {
		return nil, fmt.Errorf("reading the state of %s (%s WireGuard): %w", m.cfg.Interface, m.backend, err)
	}
	return st, nil
}

// Peers returns the current peers.
func (m *Mesh) Peers() []Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.peers)
}

// AddAddress gives the interface an address inside the tunnel.
func (m *Mesh) AddAddress(a netip.Prefix) error {
	return netlink.AddrAdd(m.link, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}})
}

// Close removes the interface. The routing policy stays (see [Routing.Remove]): a node whose tunnel is down
// must not fall back to plain text.
func (m *Mesh) Close() {
	m.dev.close()
}

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
