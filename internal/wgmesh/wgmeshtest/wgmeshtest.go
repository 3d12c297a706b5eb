// Package wgmeshtest runs WireGuard mesh nodes in network namespaces of their own, linked by a veth pair, for
// tests and benchmarks: each node is a helper process (this binary, re-executed inside its namespace), so its
// TUN device, sockets and servers all live there. Binaries that use it call MaybeRunHelper first thing.
package wgmeshtest

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// Marker is what the nodes' HTTP servers answer; captures look for it on the wire.
const Marker = "CONSTELLATION-NETWORK-MARKER-7f3a"

// Addresses of a pair: the link (underlay) and the tunnel.
const (
	LinkA, LinkB     = "10.252.0.1", "10.252.0.2"
	TunnelA, TunnelB = "10.253.0.1", "10.253.0.2"
	HTTPPort         = 8080 // on every address
	SinkPort         = 8082 // on every address: reads and discards, for throughput
	// PlaintextPort is, in a strict pair, the one TCP port that may cross the link without the tunnel; the
	// nodes serve the marker on it too.
	PlaintextPort = 8081
	// LinkNet is the link's network; in a strict pair it is reachable only through the tunnel.
	LinkNet = "10.252.0.0/24"
)

// The rest of a strict pair's network: a bridge links A, B and an outsider C, which is on the node network
// but no peer, and also holds the provider's address. B routes a pod, in a namespace of its own.
const (
	// LinkC is the outsider's address on the link; LinkC2 and LinkC3 are more of its addresses: it serves
	// PlaintextPort at LinkC2 (so that the others keep that port free as a source port), and LinkC3 is a
	// second source (a connection's source address and port stay taken a while after it closed).
	LinkC, LinkC2, LinkC3 = "10.252.0.3", "10.252.0.4", "10.252.0.5"
	// LinkA2 is a second address of A on the link, where nothing listens: a source for a process on A that
	// binds PlaintextPort, which A's join service holds on LinkA.
	LinkA2 = "10.252.0.6"
	// Provider is the infrastructure's address on the link (the outsider's second address).
	Provider = "10.252.0.254"
	// MetadataPort is where the provider's service listens, which the nodes connect to.
	MetadataPort = 8084
	// OperatorPort is a node port the provider's address may connect to (as the operator's CLI on mini).
	OperatorPort = 8083
	// PodNet is the pod network, protected as the link is; PodRangeB is B's pod range, PodB B's pod, which
	// serves the marker on HTTPPort, and PodGatewayB B's address towards it.
	PodNet, PodRangeB, PodB, PodGatewayB = "10.254.0.0/16", "10.254.1.0/24", "10.254.1.2", "10.254.1.1"
)

const helperEnv = "WGMESHTEST_HELPER"

// MaybeRunHelper runs a helper and exits if this process was started as one; otherwise it returns at once.
func MaybeRunHelper() {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	var err error
	switch mode {
	case "node":
		err = helperNode()
	case "capture":
		err = helperCapture(os.Getenv("WGMESHTEST_IFACE"))
	case "send":
		err = helperSend(os.Getenv("WGMESHTEST_TARGET"), os.Getenv("WGMESHTEST_BYTES"))
	case "sink":
		err = helperSink(os.Getenv("WGMESHTEST_LISTEN"))
	case "serve":
		err = helperServe(strings.Split(os.Getenv("WGMESHTEST_LISTEN"), ","))
	default:
		err = fmt.Errorf("unknown helper %q", mode)
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helperNode() error {
	priv, err := wgmesh.ParseKey(os.Getenv("WGMESHTEST_PRIVATE"))
	if err != nil {
		return err
	}
	peerKey, err := wgmesh.ParseKey(os.Getenv("WGMESHTEST_PEER"))
	if err != nil {
		return err
	}
	self := netip.MustParsePrefix(os.Getenv("WGMESHTEST_ADDR"))
	cfg := wgmesh.Config{Interface: "wg0", PrivateKey: priv, ListenPort: 51820, MTU: 1500 - wgmesh.Overhead,
		Backend: wgmesh.Backend(os.Getenv("WGMESHTEST_BACKEND"))}
	strict := os.Getenv("WGMESHTEST_STRICT") != ""
	if strict {
		// The node's own link address is its address in the mesh: the link is reachable only through the
		// tunnel, but for the plain-text port.
		cfg.Routing = &wgmesh.Routing{
			Table: 51820, Mark: 0x51820, Source: self.Addr(), Link: os.Getenv("WGMESHTEST_LINKDEV"),
			Protected:         []netip.Prefix{netip.MustParsePrefix(LinkNet), netip.MustParsePrefix(PodNet)},
			Infrastructure:    []netip.Prefix{netip.MustParsePrefix(Provider + "/32")},
			OperatorTCPPorts:  []uint16{OperatorPort},
			PlaintextTCPPorts: []uint16{PlaintextPort},
		}
		if local := os.Getenv("WGMESHTEST_LOCAL"); local != "" {
			cfg.Routing.Local = []netip.Prefix{netip.MustParsePrefix(local)}
		}
	}
	m, err := wgmesh.Start(cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	if !strict {
		if err := m.AddAddress(self); err != nil {
			return err
		}
	}
	root, err := wgmesh.ParseKey(os.Getenv("WGMESHTEST_PSK_ROOT"))
	if err != nil {
		return err
	}
	pub, err := wgmesh.PublicKey(priv)
	if err != nil {
		return err
	}
	psk, err := wgmesh.PairKey(root, pub, peerKey)
	if err != nil {
		return err
	}
	peer := wgmesh.Peer{PublicKey: peerKey, Endpoint: netip.MustParseAddrPort(os.Getenv("WGMESHTEST_PEER_ENDPOINT")), PresharedKey: psk}
	for _, a := range strings.Split(os.Getenv("WGMESHTEST_PEER_ADDR"), ",") {
		peer.AllowedIPs = append(peer.AllowedIPs, netip.MustParsePrefix(a))
	}
	if err := m.SetPeers([]wgmesh.Peer{peer}); err != nil {
		return err
	}
	body := strings.Repeat(Marker, 100)
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })
	hosts := []string{self.Addr().String(), os.Getenv("WGMESHTEST_LINK")}
	if strict {
		hosts = hosts[:1]
		for _, port := range []int{PlaintextPort, OperatorPort} {
			ln, err := net.Listen("tcp", net.JoinHostPort(hosts[0], strconv.Itoa(port)))
			if err != nil {
				return err
			}
			go http.Serve(ln, handler)
		}
	}
	for _, host := range hosts {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(HTTPPort)))
		if err != nil {
			return err
		}
		go http.Serve(ln, handler)
		sink, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(SinkPort)))
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := sink.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
	}
	fmt.Println("READY", m.Backend())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "remove-peers":
			if err := m.SetPeers(nil); err != nil {
				return err
			}
			fmt.Println("REMOVED")
		case "add-peer": // a further peer (a node that joins), the first one kept as it is
			_, other, err := wgmesh.GenerateKey()
			if err != nil {
				return err
			}
			psk, err := wgmesh.PairKey(root, pub, other)
			if err != nil {
				return err
			}
			joined := wgmesh.Peer{PublicKey: other, Endpoint: netip.MustParseAddrPort(LinkC + ":51820"), PresharedKey: psk,
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.253.0.9/32")}}
			if err := m.SetPeers([]wgmesh.Peer{peer, joined}); err != nil {
				return err
			}
			fmt.Println("ADDED")
		case "handshake": // when the session with the first peer began, in Unix nanoseconds (0: none)
			st, err := m.Status()
			if err != nil {
				return err
			}
			var at int64
			for _, p := range st {
				if p.PublicKey == peerKey && !p.LastHandshake.IsZero() {
					at = p.LastHandshake.UnixNano()
				}
			}
			fmt.Println("HANDSHAKE", at)
		case "remove-routing": // the node no longer forces its traffic through the tunnel
			cfg.Routing.Remove()
			fmt.Println("REMOVED")
		case "status": // the peers as the device has them: how many, how many with a preshared key
			st, err := m.Status()
			if err != nil {
				return err
			}
			withPSK := 0
			for _, p := range st {
				if p.HasPresharedKey {
					withPSK++
				}
			}
			fmt.Printf("PEERS %d PSK %d\n", len(st), withPSK)
		}
	}
	return nil
}

// helperSend sends n bytes to target over TCP and prints the throughput in Mbit/s.
func helperSend(target, n string) error {
	total, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return err
	}
	fmt.Println("READY")
	c, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := int64(0); sent < total; {
		k, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
		if err != nil {
			return err
		}
		sent += int64(k)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	io.Copy(io.Discard, c) // the sink closes after reading everything
	secs := time.Since(start).Seconds()
	fmt.Printf("MBITS %.1f\n", float64(total)*8/secs/1e6)
	return nil
}

// helperSink accepts TCP connections on addr and reads and discards everything, until stdin closes.
func helperSink(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	fmt.Println("READY")
	io.Copy(io.Discard, os.Stdin)
	return ln.Close()
}

// helperServe serves the marker over HTTP on every address until stdin closes.
func helperServe(addrs []string) error {
	body := strings.Repeat(Marker, 100)
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })
	for _, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		defer ln.Close()
		go http.Serve(ln, handler)
	}
	fmt.Println("READY")
	io.Copy(io.Discard, os.Stdin)
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// helperCapture reads every frame on iface until stdin closes and says whether one contained the marker.
func helperCapture(iface string) error {
	c, err := StartCapture([]string{iface}, [][]byte{[]byte(Marker)}, nil, nil)
	if err != nil {
		return err
	}
	fmt.Println("READY")
	io.Copy(io.Discard, os.Stdin)
	st := c.Stop()
	fmt.Printf("frames=%d found=%v\n", st.Frames, st.Found[0])
	return nil
}

// Helper is a running helper process.
type Helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	// Ready is the line the helper said when it was ready; a node says its WireGuard backend there.
	Ready string
}

// Send writes a line to the helper.
func (h *Helper) Send(line string) error {
	_, err := io.WriteString(h.stdin, line+"\n")
	return err
}

// Expect reads the helper's next line, which must start with prefix.
func (h *Helper) Expect(prefix string) (string, error) {
	if !h.out.Scan() {
		return "", fmt.Errorf("helper ended without saying %s", prefix)
	}
	if !strings.HasPrefix(h.out.Text(), prefix) {
		return "", fmt.Errorf("helper said %q, want %s", h.out.Text(), prefix)
	}
	return h.out.Text(), nil
}

// Stop ends the helper.
func (h *Helper) Stop() {
	h.stdin.Close()
	h.cmd.Process.Kill()
	h.cmd.Wait()
}

func startHelper(netns string, env ...string) (*Helper, error) {
	return startHelperCmd([]string{"ip", "netns", "exec", netns}, env...)
}

// StartSink runs a TCP sink on addr in the network namespace of the process pid (a pod's, say); Stop ends it.
func StartSink(pid int, addr string) (*Helper, error) {
	return startHelperCmd([]string{"nsenter", "-t", strconv.Itoa(pid), "-n"}, helperEnv+"=sink", "WGMESHTEST_LISTEN="+addr)
}

// ThroughputFrom sends n bytes over TCP to target (host:port) from the network namespace of the process pid
// and returns Mbit/s.
func ThroughputFrom(pid int, target string, n int64) (float64, error) {
	return throughput([]string{"nsenter", "-t", strconv.Itoa(pid), "-n"}, target, n)
}

// throughput runs the sending helper under prefix (which enters a network namespace).
func throughput(prefix []string, target string, n int64) (float64, error) {
	h, err := startHelperCmd(prefix, helperEnv+"=send", "WGMESHTEST_TARGET="+target, "WGMESHTEST_BYTES="+strconv.FormatInt(n, 10))
	if err != nil {
		return 0, err
	}
	defer h.Stop()
	line, err := h.Expect("MBITS ")
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.TrimPrefix(line, "MBITS "), 64)
}

// startHelperCmd starts this binary as a helper under the command prefix (which enters a namespace).
func startHelperCmd(prefix []string, env ...string) (*Helper, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(prefix[0], append(prefix[1:], self, "-test.run=^$")...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &Helper{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	if h.Ready, err = h.Expect("READY"); err != nil {
		h.Stop()
		return nil, err
	}
	return h, nil
}

// Pair is two nodes, A and B, in network namespaces of their own, linked by a veth pair, with a WireGuard
// tunnel between them. A strict pair also has an outsider C and B's pod (see [NewStrictPair]).
type Pair struct {
	NamespaceA, NamespaceB string
	LinkDevA, LinkDevB     string
	A, B                   *Helper

	// In a strict pair: the outsider's namespace and its link, the pod's namespace, the bridge's namespace,
	// and what the outsider and the pod serve.
	NamespaceC, NamespacePod, NamespaceBridge string
	LinkDevC                                  string
	C, Pod                                    *Helper
}

// ErrUnsupported is returned where the machine cannot run a pair (not root, no TUN device, no ip).
var ErrUnsupported = errors.New("wgmeshtest: needs root, /dev/net/tun and iproute2")

// NewPair sets up a pair whose tunnel has addresses of its own (TunnelA, TunnelB); Close removes everything
// it created.
func NewPair() (p *Pair, err error) {
	root, err := randomKey()
	if err != nil {
		return nil, err
	}
	return newPair(false, root, root)
}

// NewPairWithRoots sets up a pair as NewPair does, whose nodes derive their preshared key from the mesh root
// keys rootA and rootB: with different roots, they have different preshared keys.
func NewPairWithRoots(rootA, rootB wgmesh.Key) (p *Pair, err error) {
	return newPair(false, rootA, rootB)
}

func randomKey() (wgmesh.Key, error) {
	var k wgmesh.Key
	_, err := rand.Read(k[:])
	return k, err
}

// NewStrictPair sets up a pair in strict mode: the nodes' link addresses are their mesh addresses, reachable
// only through the tunnel (but for PlaintextPort), and each drops what arrives on the link outside it. The
// link is a bridge that also holds an outsider C (LinkC, LinkC2, LinkC3 and the provider's address Provider, no peer),
// which serves the marker on PlaintextPort at LinkC2 and, at Provider, on MetadataPort; B routes its pod range PodRangeB to a
// pod (PodB) in a namespace of its own, a peer's allowed range for A.
func NewStrictPair() (p *Pair, err error) {
	root, err := randomKey()
	if err != nil {
		return nil, err
	}
	return newPair(true, root, root)
}

func newPair(strict bool, rootA, rootB wgmesh.Key) (p *Pair, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrUnsupported
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, ErrUnsupported
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, ErrUnsupported
	}
	id := strconv.Itoa(os.Getpid() % 100000)
	p = &Pair{NamespaceA: "cstwg-a-" + id, NamespaceB: "cstwg-b-" + id, LinkDevA: "cstwga" + id, LinkDevB: "cstwgb" + id}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	cmds := [][]string{{"netns", "add", p.NamespaceA}, {"netns", "add", p.NamespaceB}}
	if !strict {
		cmds = append(cmds, []string{"link", "add", p.LinkDevA, "netns", p.NamespaceA, "type", "veth", "peer", "name", p.LinkDevB, "netns", p.NamespaceB})
	} else {
		p.NamespaceC, p.NamespacePod, p.NamespaceBridge, p.LinkDevC = "cstwg-c-"+id, "cstwg-p-"+id, "cstwg-s-"+id, "cstwgc"+id
		podDev, podGwDev := "cstwgp"+id, "cstwgq"+id
		cmds = append(cmds, [][]string{
			{"netns", "add", p.NamespaceC}, {"netns", "add", p.NamespacePod}, {"netns", "add", p.NamespaceBridge},
			{"-n", p.NamespaceBridge, "link", "add", "br0", "type", "bridge"}, {"-n", p.NamespaceBridge, "link", "set", "br0", "up"},
		}...)
		for _, l := range []struct{ ns, dev, port string }{{p.NamespaceA, p.LinkDevA, "sa" + id}, {p.NamespaceB, p.LinkDevB, "sb" + id}, {p.NamespaceC, p.LinkDevC, "sc" + id}} {
			cmds = append(cmds,
				[]string{"link", "add", l.dev, "netns", l.ns, "type", "veth", "peer", "name", l.port, "netns", p.NamespaceBridge},
				[]string{"-n", p.NamespaceBridge, "link", "set", l.port, "master", "br0", "up"})
		}
		cmds = append(cmds, [][]string{
			{"-n", p.NamespaceC, "addr", "add", LinkC + "/24", "dev", p.LinkDevC}, {"-n", p.NamespaceC, "addr", "add", LinkC2 + "/24", "dev", p.LinkDevC},
			{"-n", p.NamespaceC, "addr", "add", LinkC3 + "/24", "dev", p.LinkDevC},
			{"-n", p.NamespaceC, "addr", "add", Provider + "/24", "dev", p.LinkDevC},
			{"-n", p.NamespaceC, "link", "set", p.LinkDevC, "up"}, {"-n", p.NamespaceC, "link", "set", "lo", "up"},
			{"-n", p.NamespaceC, "route", "add", PodNet, "via", LinkB},
			{"link", "add", podDev, "netns", p.NamespacePod, "type", "veth", "peer", "name", podGwDev, "netns", p.NamespaceB},
			{"-n", p.NamespacePod, "addr", "add", PodB + "/24", "dev", podDev}, {"-n", p.NamespacePod, "link", "set", podDev, "up"},
			{"-n", p.NamespacePod, "link", "set", "lo", "up"}, {"-n", p.NamespacePod, "route", "add", "default", "via", PodGatewayB},
			{"-n", p.NamespaceB, "addr", "add", PodGatewayB + "/24", "dev", podGwDev}, {"-n", p.NamespaceB, "link", "set", podGwDev, "up"},
			{"-n", p.NamespaceA, "addr", "add", LinkA2 + "/24", "dev", p.LinkDevA},
		}...)
	}
	cmds = append(cmds, [][]string{
		{"-n", p.NamespaceA, "addr", "add", LinkA + "/24", "dev", p.LinkDevA}, {"-n", p.NamespaceA, "link", "set", p.LinkDevA, "up"},
		{"-n", p.NamespaceA, "link", "set", "lo", "up"},
		{"-n", p.NamespaceB, "addr", "add", LinkB + "/24", "dev", p.LinkDevB}, {"-n", p.NamespaceB, "link", "set", p.LinkDevB, "up"},
		{"-n", p.NamespaceB, "link", "set", "lo", "up"},
	}...)
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return p, fmt.Errorf("ip %s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	if strict {
		// B routes for its pod.
		if out, err := exec.Command("ip", "netns", "exec", p.NamespaceB, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward").CombinedOutput(); err != nil {
			return p, fmt.Errorf("enabling forwarding in %s: %w: %s", p.NamespaceB, err, out)
		}
		if p.C, err = startHelper(p.NamespaceC, helperEnv+"=serve", "WGMESHTEST_LISTEN="+strings.Join([]string{
			net.JoinHostPort(LinkC2, strconv.Itoa(PlaintextPort)), net.JoinHostPort(Provider, strconv.Itoa(MetadataPort))}, ",")); err != nil {
			return p, err
		}
		if p.Pod, err = startHelper(p.NamespacePod, helperEnv+"=serve", "WGMESHTEST_LISTEN="+net.JoinHostPort(PodB, strconv.Itoa(HTTPPort))); err != nil {
			return p, err
		}
	}
	privA, pubA, err := wgmesh.GenerateKey()
	if err != nil {
		return p, err
	}
	privB, pubB, err := wgmesh.GenerateKey()
	if err != nil {
		return p, err
	}
	node := func(ns string, priv, peer wgmesh.Key, self, other, link, otherLink, dev string, extra ...string) (*Helper, error) {
		env := []string{helperEnv + "=node", "WGMESHTEST_PRIVATE=" + priv.String(), "WGMESHTEST_PEER=" + peer.String(),
			"WGMESHTEST_ADDR=" + self + "/32", "WGMESHTEST_PEER_ADDR=" + other + "/32", "WGMESHTEST_PEER_ENDPOINT=" + otherLink + ":51820",
			"WGMESHTEST_LINK=" + link, "WGMESHTEST_LINKDEV=" + dev}
		if strict {
			env = append(env, "WGMESHTEST_STRICT=1")
		}
		return startHelper(ns, append(env, extra...)...)
	}
	selfA, selfB := TunnelA, TunnelB
	if strict {
		selfA, selfB = LinkA, LinkB
	}
	var extraA, extraB []string
	if strict {
		// A reaches B's pods through the tunnel; B routes them itself.
		extraA = []string{"WGMESHTEST_PEER_ADDR=" + selfB + "/32," + PodRangeB}
		extraB = []string{"WGMESHTEST_LOCAL=" + PodRangeB}
	}
	extraA = append(extraA, "WGMESHTEST_PSK_ROOT="+rootA.String())
	extraB = append(extraB, "WGMESHTEST_PSK_ROOT="+rootB.String())
	if p.A, err = node(p.NamespaceA, privA, pubB, selfA, selfB, LinkA, LinkB, p.LinkDevA, extraA...); err != nil {
		return p, err
	}
	if p.B, err = node(p.NamespaceB, privB, pubA, selfB, selfA, LinkB, LinkA, p.LinkDevB, extraB...); err != nil {
		return p, err
	}
	return p, nil
}

// Close stops the nodes and removes the namespaces (and with them the link).
func (p *Pair) Close() {
	for _, h := range []*Helper{p.A, p.B, p.C, p.Pod} {
		if h != nil {
			h.Stop()
		}
	}
	for _, ns := range []string{p.NamespaceA, p.NamespaceB, p.NamespaceC, p.NamespacePod, p.NamespaceBridge} {
		if ns != "" {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	}
}

// Capture runs fn while capturing every frame on A's link and reports whether the marker crossed it in plain
// text, and how many frames it saw.
func (p *Pair) Capture(fn func() error) (found bool, frames int, err error) {
	return CaptureIn(p.NamespaceA, p.LinkDevA, fn)
}

// CaptureIn runs fn while capturing every frame on the interface iface of the network namespace ns, and
// reports whether the marker crossed it in plain text, and how many frames it saw.
func CaptureIn(ns, iface string, fn func() error) (found bool, frames int, err error) {
	c, err := startHelper(ns, helperEnv+"=capture", "WGMESHTEST_IFACE="+iface)
	if err != nil {
		return false, 0, err
	}
	defer c.Stop()
	ferr := fn()
	time.Sleep(200 * time.Millisecond)
	c.stdin.Close()
	line, err := c.Expect("frames=")
	if err != nil {
		return false, 0, err
	}
	fmt.Sscanf(line, "frames=%d found=%t", &frames, &found)
	return found, frames, ferr
}

// Get fetches url from node A with curl.
func (p *Pair) Get(url string) (string, error) {
	return GetIn(p.NamespaceA, url)
}

// GetIn fetches url with curl in the network namespace ns; args go to curl before url (for example
// --local-port or --interface to choose the source).
func GetIn(ns, url string, args ...string) (string, error) {
	out, err := exec.Command("ip", append(append([]string{"netns", "exec", ns, "curl", "-sS", "-m", "5"}, args...), url)...).CombinedOutput()
	return string(out), err
}

// Throughput sends n bytes from A to target (host:port) over TCP and returns Mbit/s.
func (p *Pair) Throughput(target string, n int64) (float64, error) {
	return throughput([]string{"ip", "netns", "exec", p.NamespaceA}, target, n)
}
