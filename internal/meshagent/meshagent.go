// Package meshagent runs a node's part of the cluster's WireGuard mesh: the interface in strict mode (the node
// and pod networks reachable only through the tunnel), and its peers kept equal to the cluster's record
// (package meshpeers) with their addresses from the provider and each pair's preshared key derived from the
// mesh's root key. The node's key, the root key and the last record live on the node's encrypted state disk.
package meshagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// Interface is the node's WireGuard interface.
const Interface = "wg0"

// The node's WireGuard interface and its policy routing.
const (
	meshInterface = Interface
	meshTable     = 51820
	meshMark      = 0x51820
	// meshKeyFile keeps the node's private key on its encrypted state disk (/var is on it once unlocked), so
	// that the first control-plane node keeps its key across a recovery, which does not go through the join
	// service.
	meshKeyFile = "/var/lib/constellation/wireguard/private.key"
	// meshPeersFile keeps the cluster's record of the mesh as this node last read it, on its state disk: after
	// all control-plane nodes restarted, they reach each other (and etcd its quorum) before the record in the
	// API is readable again.
	meshPeersFile = "/var/lib/constellation/wireguard/peers.json"
	// meshRootFile keeps the mesh's root key for preshared keys on the state disk, so that a node that
	// restarts (and the first control-plane node at a recovery, before it has its peers' keys again)
	// configures its peers with their preshared keys at once.
	meshRootFile = "/var/lib/constellation/wireguard/psk-root.key"
	// meshRetryInterval is how long a node waits before it tries again to watch or apply the cluster's
	// record of the mesh after that failed.
	meshRetryInterval = 2 * time.Second
)

// Agent runs the node's part of the cluster's WireGuard mesh: the interface, and its peers kept equal to the
// cluster's record (package meshpeers), with their addresses from the provider and each pair's preshared key
// derived from the mesh's root key (joinservice.MeshRootKeyID), which the node got over aTLS from the join
// service, or derived from the master secret on the first control-plane node. Without the root it configures
// no peer.
type Agent struct {
	md             provider.Node
	self           provider.Instance
	podNetwork     netip.Prefix
	operatorPorts  []uint16
	plaintextPorts []uint16
	keyFile        string
	peersFile      string
	rootFile       string
	log            *slog.Logger

	mu      sync.Mutex
	private wgmesh.Key
	public  wgmesh.Key
	root    wgmesh.Key // the mesh's root key for preshared keys
	mesh    *wgmesh.Mesh
	current []string // the peers set last, "name key" sorted, to log changes only
	// recorded is the cluster's record as last read; admitted are nodes this node's join service admitted
	// that have not published their key yet.
	recorded []meshpeers.Peer
	admitted map[string]admittedPeer
	kept     []meshpeers.Peer // the peers last kept on the state disk
	// followed is closed once Follow has applied the cluster's record for the first time.
	followed     chan struct{}
	followedOnce sync.Once
}

// admittedPeer is a node a join service on this node admitted, a peer until its key is in the cluster's
// Record or its bootstrap token has expired.
type admittedPeer struct {
	key   wgmesh.Key
	until time.Time
}

// mergePeers is the record with the admitted nodes' keys in force (they are newer: a node that rejoins has a
// new key); admitted entries the record has caught up with, or that expired, are dropped from admitted.
func mergePeers(recorded []meshpeers.Peer, admitted map[string]admittedPeer, now time.Time) []meshpeers.Peer {
	out := make([]meshpeers.Peer, 0, len(recorded)+len(admitted))
	seen := map[string]bool{}
	for _, r := range recorded {
		if a, ok := admitted[r.Node]; ok {
			if a.key == r.PublicKey || now.After(a.until) {
				delete(admitted, r.Node)
			} else {
				r.PublicKey = a.key
			}
		}
		seen[r.Node] = true
		out = append(out, r)
	}
	for name, a := range admitted {
		if now.After(a.until) {
			delete(admitted, name)
			continue
		}
		if !seen[name] {
			out = append(out, meshpeers.Peer{Node: name, PublicKey: a.key})
		}
	}
	slices.SortFunc(out, func(x, y meshpeers.Peer) int { return strings.Compare(x.Node, y.Node) })
	return out
}

// Admit makes a node this node's join service admitted a peer at once.
func (a *Agent) Admit(ctx context.Context, node string, key wgmesh.Key) error {
	a.mu.Lock()
	if a.admitted == nil {
		a.admitted = map[string]admittedPeer{}
	}
	a.admitted[node] = admittedPeer{key: key, until: time.Now().Add(joinpb.TokenTTL)}
	a.mu.Unlock()
	a.log.Info("node admitted by this node's join service; a peer until it publishes its key", "node", node, "publicKey", key.String())
	return a.Apply(ctx)
}

// Record takes the cluster's record of the mesh and applies it.
func (a *Agent) Record(ctx context.Context, recorded []meshpeers.Peer) error {
	a.mu.Lock()
	a.recorded = recorded
	a.mu.Unlock()
	return a.Apply(ctx)
}

// keptPeer is a peer as kept on the state disk.
type keptPeer struct {
	Node      string `json:"node"`
	PublicKey string `json:"publicKey"`
}

func (a *Agent) keepRecord(recorded []meshpeers.Peer) error {
	kept := make([]keptPeer, 0, len(recorded))
	for _, p := range recorded {
		kept = append(kept, keptPeer{Node: p.Node, PublicKey: p.PublicKey.String()})
	}
	raw, err := json.Marshal(kept)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.peersFile), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(a.peersFile, raw, 0o600)
}

// loadRecord takes the record kept on the state disk, if there is one and nothing newer.
func (a *Agent) loadRecord() error {
	raw, err := os.ReadFile(a.peersFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var kept []keptPeer
	if err := json.Unmarshal(raw, &kept); err != nil {
		return fmt.Errorf("the WireGuard peers kept on the state disk: %w", err)
	}
	var recorded []meshpeers.Peer
	for _, k := range kept {
		key, err := wgmesh.ParseKey(k.PublicKey)
		if err != nil {
			return fmt.Errorf("the WireGuard peers kept on the state disk: node %q: %w", k.Node, err)
		}
		recorded = append(recorded, meshpeers.Peer{Node: k.Node, PublicKey: key})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.recorded == nil {
		a.recorded = recorded
	}
	return nil
}

// Apply sets the peers from the record and the admitted nodes.
// The peers in force, admitted nodes included, are kept on the state disk whenever they change.
func (a *Agent) Apply(ctx context.Context) error {
	a.mu.Lock()
	merged := mergePeers(a.recorded, a.admitted, time.Now())
	changed := !slices.Equal(merged, a.kept)
	a.kept = merged
	a.mu.Unlock()
	if changed {
		if err := a.keepRecord(merged); err != nil {
			a.log.Warn("keeping the WireGuard peers on the state disk failed", "error", err)
		}
	}
	return a.setPeers(ctx, merged)
}

// Options describe the node to an Agent.
type Options struct {
	// Provider gives the nodes' addresses; Self is this node.
	Provider provider.Node
	Self     provider.Instance
	// PodNetwork is the cluster's pod network, reachable only through the tunnel.
	PodNetwork netip.Prefix
	// OperatorTCPPorts are the node's services the operator reaches from the provider's address (each
	// authenticates and encrypts by itself); PlaintextTCPPorts are reachable on the node network without the
	// tunnel (the join service, which a node calls before it has peers). See wgmesh.Routing.
	OperatorTCPPorts, PlaintextTCPPorts []uint16
	Log                                 *slog.Logger
}

// New returns the agent of a node; it brings nothing up yet.
func New(o Options) *Agent {
	return &Agent{
		md: o.Provider, self: o.Self, podNetwork: o.PodNetwork, operatorPorts: o.OperatorTCPPorts, plaintextPorts: o.PlaintextTCPPorts,
		keyFile: meshKeyFile, peersFile: meshPeersFile, rootFile: meshRootFile, log: o.Log,
	}
}

// NewKey makes a key pair for this node's next join; the private key stays in this process until the state
// disk is unlocked.
func (a *Agent) NewKey() (wgmesh.Key, error) {
	priv, pub, err := wgmesh.GenerateKey()
	if err != nil {
		return wgmesh.Key{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.private, a.public = priv, pub
	return pub, nil
}

// SetRoot takes the mesh's root key for preshared keys (32 bytes) and keeps it on the state disk, which must
// be unlocked.
func (a *Agent) SetRoot(raw []byte) error {
	if len(raw) != len(wgmesh.Key{}) || wgmesh.Key(raw) == (wgmesh.Key{}) {
		return fmt.Errorf("the WireGuard preshared root key has %d bytes or is zero, want 32 random bytes; the join service must be of this release", len(raw))
	}
	if err := os.MkdirAll(filepath.Dir(a.rootFile), 0o700); err != nil {
		return err
	}
	root := wgmesh.Key(raw)
	if err := atomicfile.Write(a.rootFile, []byte(root.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("keeping the WireGuard preshared root key on the state disk: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.root = root
	return nil
}

// loadRoot takes the root key kept on the state disk; without one, the node has none until it is given it.
func (a *Agent) loadRoot() error {
	raw, err := atomicfile.ReadPrivate(a.rootFile)
	if errors.Is(err, fs.ErrNotExist) {
		a.log.Warn("no WireGuard preshared root key on the state disk: no peer is configured until the node gets it")
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the WireGuard preshared root key from the state disk: %w", err)
	}
	root, err := wgmesh.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil || root == (wgmesh.Key{}) {
		return fmt.Errorf("the WireGuard preshared root key on the state disk is damaged: %v", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.root = root
	return nil
}

// LoadKey takes the key the node kept on its state disk, the mesh's root key and the peers it last knew.
func (a *Agent) LoadKey() error {
	if err := a.loadRecord(); err != nil {
		return err
	}
	if err := a.loadRoot(); err != nil {
		return err
	}
	raw, err := os.ReadFile(a.keyFile)
	if err != nil {
		return fmt.Errorf("reading this node's WireGuard key from its state disk: %w", err)
	}
	priv, err := wgmesh.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("this node's WireGuard key on its state disk: %w", err)
	}
	pub, err := wgmesh.PublicKey(priv)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.private, a.public = priv, pub
	return nil
}

// PublicKey returns the public key of the node's WireGuard interface, zero before the node has a key.
func (a *Agent) PublicKey() (wgmesh.Key, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.public, nil
}

// NodeLink returns the node's link to the node network: the interface that holds addr, its network and
// its MTU.
func NodeLink(addr netip.Addr) (name string, network netip.Prefix, mtu int, err error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", netip.Prefix{}, 0, err
	}
	for _, ifi := range ifaces {
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(ipn.IP)
			if ip.Unmap() == addr {
				ones, _ := ipn.Mask.Size()
				return ifi.Name, netip.PrefixFrom(addr, ones).Masked(), ifi.MTU, nil
			}
		}
	}
	return "", netip.Prefix{}, 0, fmt.Errorf("no interface holds the node address %s", addr)
}

// Start keeps the key on the state disk and brings the interface up, in strict mode: the node network and
// the pod network are reachable only through the tunnel, but for the join service's port and, from the
// provider's address, replies to the node's own connections and the operator's ports (see [wgmesh.Routing]).
func (a *Agent) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.private == (wgmesh.Key{}) {
		return errors.New("the node has no WireGuard key")
	}
	if err := os.MkdirAll(filepath.Dir(a.keyFile), 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(a.keyFile, []byte(a.private.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("keeping the WireGuard key on the state disk: %w", err)
	}
	self, err := netip.ParseAddr(a.self.IP)
	if err != nil {
		return fmt.Errorf("node address %q: %w", a.self.IP, err)
	}
	link, network, mtu, err := NodeLink(self)
	if err != nil {
		return err
	}
	infra, err := providerAddress(a.md.Endpoint())
	if err != nil {
		return err
	}
	routing := &wgmesh.Routing{
		Table: meshTable, Mark: meshMark, Source: self, Link: link,
		Protected:         []netip.Prefix{network, a.podNetwork},
		Infrastructure:    []netip.Prefix{infra},
		OperatorTCPPorts:  a.operatorPorts,
		PlaintextTCPPorts: a.plaintextPorts,
	}
	if pods, err := netip.ParsePrefix(a.self.PodCIDR); err == nil {
		routing.Local = []netip.Prefix{pods}
	}
	m, err := wgmesh.Start(wgmesh.Config{Interface: meshInterface, PrivateKey: a.private, ListenPort: meshpeers.Port, MTU: mtu - wgmesh.Overhead, Routing: routing})
	if err != nil {
		return fmt.Errorf("starting the WireGuard interface: %w", err)
	}
	a.mesh = m
	a.log.Info("WireGuard interface up, strict: the node and pod networks only through the tunnel",
		"interface", meshInterface, "backend", m.Backend(), "publicKey", a.public.String(), "mtu", mtu-wgmesh.Overhead, "protected", []string{network.String(), a.podNetwork.String()})
	return nil
}

// providerAddress is the host of the metadata service: the provider's infrastructure, reached directly.
func providerAddress(metadataURL string) (netip.Prefix, error) {
	u, err := url.Parse(metadataURL)
	if err != nil {
		return netip.Prefix{}, err
	}
	addr, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("the metadata service %q is not at an IP address: %w", metadataURL, err)
	}
	return netip.PrefixFrom(addr, addr.BitLen()), nil
}

// setPeers makes the recorded nodes, other than this one, the peers, at the addresses the provider gives
// them, each with the pair's preshared key. A recorded node the provider does not know is no peer.
func (a *Agent) setPeers(ctx context.Context, recorded []meshpeers.Peer) error {
	instances, err := a.md.Instances(ctx)
	if err != nil {
		return fmt.Errorf("asking the provider for the nodes' addresses: %w", err)
	}
	a.mu.Lock()
	root, public := a.root, a.public
	a.mu.Unlock()
	peers, names, err := meshPeers(recorded, instances, a.self.Name, root, public, a.log)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mesh == nil {
		return errors.New("the WireGuard interface is not up")
	}
	if slices.Equal(names, a.current) {
		return nil
	}
	if err := a.mesh.SetPeers(peers); err != nil {
		return err
	}
	a.current = names
	a.log.Info("WireGuard peers changed", "peers", names)
	return nil
}

// meshPeers are the WireGuard peers of the node self (with the public key public) for the recorded nodes, at
// the provider's addresses of instances, each with the pair's preshared key from root. Without a root there
// is no peer: an error, never a peer without a preshared key.
func meshPeers(recorded []meshpeers.Peer, instances []provider.Instance, self string, root, public wgmesh.Key, log *slog.Logger) ([]wgmesh.Peer, []string, error) {
	byName := map[string]provider.Instance{}
	for _, inst := range instances {
		byName[inst.Name] = inst
	}
	var peers []wgmesh.Peer
	var names []string
	for _, r := range recorded {
		if r.Node == self {
			continue
		}
		inst, ok := byName[r.Node]
		if !ok {
			log.Warn("a node in the cluster's WireGuard record is unknown to the provider; not a peer", "node", r.Node)
			continue
		}
		ip, err1 := netip.ParseAddr(inst.IP)
		pods, err2 := netip.ParsePrefix(inst.PodCIDR)
		if err1 != nil || err2 != nil {
			log.Warn("the provider gives a node no usable addresses; not a peer", "node", r.Node, "ip", inst.IP, "podCIDR", inst.PodCIDR)
			continue
		}
		if r.PublicKey == public {
			log.Warn("a node in the cluster's WireGuard record has this node's key; not a peer", "node", r.Node)
			continue
		}
		psk, err := wgmesh.PairKey(root, public, r.PublicKey)
		if err != nil {
			return nil, nil, fmt.Errorf("the preshared key with node %s: %w", r.Node, err)
		}
		peers = append(peers, wgmesh.Peer{
			PublicKey:    r.PublicKey,
			Endpoint:     netip.AddrPortFrom(ip, meshpeers.Port),
			AllowedIPs:   []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen()), pods},
			PresharedKey: psk,
		})
		names = append(names, r.Node+" "+r.PublicKey.String())
	}
	slices.Sort(names)
	return peers, names, nil
}

// Publish records this node's key in the cluster, on its Node object, with the kubelet's credentials in
// kubeconfig, as soon as the kubelet has registered.
func (a *Agent) Publish(ctx context.Context, kubeconfig string) error {
	a.mu.Lock()
	pub := a.public
	a.mu.Unlock()
	for attempt := 1; ; attempt++ {
		api, err := kubeapi.FromKubeconfig(kubeconfig)
		if err == nil {
			if err = meshpeers.Publish(ctx, api, a.self.Name, pub); err == nil {
				a.log.Info("WireGuard key published on this node's Node object", "publicKey", pub.String())
				return nil
			}
		}
		// Expected while the kubelet registers or the API server starts: say so once in a while only.
		if attempt%30 == 1 && !errors.Is(err, meshpeers.ErrNotRegistered) && !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("publishing this node's WireGuard key failed; retrying", "attempt", attempt, "error", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Follow keeps the peers equal to the cluster's record until ctx ends, watching it with the kubelet's
// credentials in kubeconfig (once they exist): each change of the record is applied when it arrives, and an
// apply that failed (the provider did not answer, say) is retried.
func (a *Agent) Follow(ctx context.Context, kubeconfig string) {
	var w *meshpeers.Watcher
	for w == nil {
		cfg, err := meshpeers.RESTConfig(kubeconfig)
		if err == nil {
			w, err = meshpeers.NewWatcher(cfg, a.log)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("watching the cluster's WireGuard peers is not possible yet; retrying", "error", err)
		}
		if w == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(meshRetryInterval):
			}
		}
	}
	go w.Run(ctx)
	if !w.WaitSynced(ctx) {
		return
	}
	var retry <-chan time.Time
	var lastMalformed []string
	for {
		recorded, malformed := w.Peers()
		if len(malformed) > 0 && !slices.Equal(malformed, lastMalformed) {
			a.log.Warn("nodes with a malformed WireGuard key in the cluster's record; not peers", "nodes", malformed)
		}
		lastMalformed = malformed
		retry = nil
		if err := a.Record(ctx, recorded); err != nil {
			a.log.Warn("applying the cluster's WireGuard peers failed; keeping the current ones and retrying", "error", err)
			retry = time.After(meshRetryInterval)
		} else {
			a.followedOnce.Do(func() { close(a.followedChan()) })
		}
		select {
		case <-ctx.Done():
			return
		case <-w.Changed():
		case <-retry:
		}
	}
}

// followedChan is closed once Follow has applied the cluster's record.
func (a *Agent) followedChan() chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.followed == nil {
		a.followed = make(chan struct{})
	}
	return a.followed
}

// probeInterval is how often WaitPeers asks again a peer that has not answered.
const probeInterval = 500 * time.Millisecond

// WaitPeers waits until this node's peers are the cluster's (Follow applied the record) and each of them answers
// through the tunnel: a TCP connection to the peer's node address at port, accepted or refused, proves that the
// peer has this node as its peer too (WireGuard answers no handshake of a node it does not know), which the
// other nodes learn only once this node published its key. A node whose pods are reached by every other node
// may take pods. A peer that has not answered within limit (a node being removed, say) is given up on and
// named in the log: it does not keep this node from taking pods. It returns early only when ctx ends.
func (a *Agent) WaitPeers(ctx context.Context, port int, limit time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-a.followedChan():
	}
	a.mu.Lock()
	m := a.mesh
	a.mu.Unlock()
	if m == nil {
		return errors.New("the WireGuard interface is not up")
	}
	var addrs []netip.Addr
	for _, p := range m.Peers() {
		addrs = append(addrs, p.Endpoint.Addr())
	}
	began := time.Now()
	silent := probePeers(ctx, addrs, port, began.Add(limit))
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(silent) > 0 {
		a.log.Warn("peers that did not answer through the tunnel; not waiting for them any longer", "peers", silent, "after", limit)
	} else {
		a.log.Info("every peer answers through the tunnel", "peers", len(addrs), "after", time.Since(began).Round(time.Millisecond))
	}
	return nil
}

// probeParallel bounds the connections probePeers has open at once: a round over a large cluster's peers takes
// about as long as one connection's timeout, not one per silent peer.
const probeParallel = 64

// probePeers connects to port at each of addrs until each has answered (accepted or refused the connection),
// deadline has passed, or ctx has ended, and returns those that did not answer.
func probePeers(ctx context.Context, addrs []netip.Addr, port int, deadline time.Time) []netip.Addr {
	left := slices.Clone(addrs)
	for len(left) > 0 && ctx.Err() == nil {
		answered := make([]bool, len(left))
		sem := make(chan struct{}, probeParallel)
		var wg sync.WaitGroup
		for i, addr := range left {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				d := net.Dialer{Timeout: time.Second}
				conn, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, uint16(port)).String())
				if err == nil {
					conn.Close()
				}
				answered[i] = err == nil || errors.Is(err, syscall.ECONNREFUSED)
			}()
		}
		wg.Wait()
		var silent []netip.Addr
		for i, addr := range left {
			if !answered[i] {
				silent = append(silent, addr)
			}
		}
		left = silent
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(probeInterval):
		}
	}
	return left
}
