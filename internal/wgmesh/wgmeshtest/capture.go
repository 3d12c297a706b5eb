package wgmeshtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Capture records every frame on interfaces of a network namespace (AF_PACKET), to tell what crossed them in
// plain text. The interfaces are promiscuous while it runs: on a bridge's own interface, the capture sees every
// frame the bridge forwards between its ports, not only what is addressed to the bridge.
type Capture struct {
	fds   []int
	done  chan struct{}
	opts  CaptureOptions
	nodes map[netip.Addr]bool // opts.Nodes

	wg sync.WaitGroup
	mu sync.Mutex
	st CaptureStats
}

// CaptureOptions say where a capture listens and what it looks for.
type CaptureOptions struct {
	// Netns is the network namespace of Interfaces, by its name under /run/netns (as `ip netns` knows it);
	// empty: the caller's.
	Netns      string
	Interfaces []string
	// Markers are looked for in every frame.
	Markers [][]byte
	// Nodes are the addresses whose packets between two of them the capture classifies: allowed by Allowed
	// (for example WireGuard's UDP) or not.
	Nodes   []netip.Addr
	Allowed func(Flow) bool
	// WireGuardPort, if not 0, has the capture count the UDP datagrams to or from that port by WireGuard
	// message type.
	WireGuardPort uint16
	// Watched are networks whose addresses must not appear in the IPv4 header of a frame (a pod network, say):
	// the capture counts the packets that have one.
	Watched []netip.Prefix
}

// Flow is an IPv4 packet's addresses, protocol and ports.
type Flow struct {
	Src, Dst         netip.Addr
	Proto            uint8 // unix.IPPROTO_TCP, unix.IPPROTO_UDP, ...
	SrcPort, DstPort uint16
}

func (f Flow) String() string {
	p := map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp"}[f.Proto]
	if p == "" {
		p = fmt.Sprintf("proto %d", f.Proto)
	}
	return fmt.Sprintf("%s %s:%d > %s:%d", p, f.Src, f.SrcPort, f.Dst, f.DstPort)
}

// WireGuard's message types, the first byte of each of its messages.
const (
	WireGuardInitiation = 1
	WireGuardResponse   = 2
	WireGuardCookie     = 3
	WireGuardData       = 4 // transport data: an encrypted packet
)

// CaptureStats is what a capture saw.
type CaptureStats struct {
	Frames int
	// Found holds the markers seen in a frame, by their index.
	Found map[int]bool
	// BetweenNodes counts the packets between two node addresses by flow (ports of the lower end kept, the
	// ephemeral one zeroed), for those the capture's filter did not allow.
	BetweenNodes map[Flow]int
	// Tunnel counts the packets between nodes the filter allowed.
	Tunnel int
	// WireGuard counts the UDP datagrams to or from the options' WireGuardPort by WireGuard message type
	// (WireGuardInitiation ... WireGuardData); under 0 those that are no well-formed WireGuard message.
	WireGuard map[byte]int
	// Watched counts the IPv4 packets with an address of a watched network in their header, by flow.
	Watched map[Flow]int
}

// Unexpected lists the flows between nodes outside the filter, with their packet counts.
func (s CaptureStats) Unexpected() []string { return flowList(s.BetweenNodes) }

// WatchedFlows lists the flows with an address of a watched network, with their packet counts.
func (s CaptureStats) WatchedFlows() []string { return flowList(s.Watched) }

func flowList(m map[Flow]int) []string {
	var out []string
	for f, n := range m {
		out = append(out, fmt.Sprintf("%s (%d packets)", f, n))
	}
	sort.Strings(out)
	return out
}

// StartCapture captures on ifaces of the caller's network namespace until Stop, looking for markers in every
// frame and classifying the IPv4 packets between two of nodes: allowed (for example WireGuard's UDP) or not.
func StartCapture(ifaces []string, markers [][]byte, nodes []netip.Addr, allowed func(Flow) bool) (*Capture, error) {
	return StartCaptureWith(CaptureOptions{Interfaces: ifaces, Markers: markers, Nodes: nodes, Allowed: allowed})
}

// StartCaptureWith captures as opts say until Stop.
func StartCaptureWith(opts CaptureOptions) (*Capture, error) {
	fds, err := openCaptures(opts.Netns, opts.Interfaces)
	if err != nil {
		return nil, err
	}
	c := &Capture{fds: fds, done: make(chan struct{}), opts: opts, nodes: map[netip.Addr]bool{},
		st: CaptureStats{Found: map[int]bool{}, BetweenNodes: map[Flow]int{}, WireGuard: map[byte]int{}, Watched: map[Flow]int{}}}
	for _, n := range opts.Nodes {
		c.nodes[n] = true
	}
	for _, fd := range fds {
		c.wg.Add(1)
		go c.run(fd)
	}
	return c, nil
}

// openCaptures opens a capture socket on each of ifaces in the network namespace netns ("" the caller's). A
// socket stays in the namespace it was created in: only their creation runs there, on a locked thread.
func openCaptures(netns string, ifaces []string) (fds []int, err error) {
	if netns != "" {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("opening this thread's network namespace: %w", err)
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/run/netns", netns))
		if err == nil {
			err = unix.Setns(int(target.Fd()), unix.CLONE_NEWNET)
			target.Close()
		}
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("entering the network namespace %s: %w", netns, err)
		}
		defer func() {
			// A thread that cannot return to its namespace stays locked: the runtime ends it with this goroutine.
			if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
				err = errors.Join(err, fmt.Errorf("returning from the network namespace %s: %w", netns, rerr))
				return
			}
			runtime.UnlockOSThread()
		}()
	}
	for _, iface := range ifaces {
		fd, err := openCapture(iface)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, fmt.Errorf("capturing on %s: %w", iface, err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func openCapture(iface string) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return -1, err
	}
	ifi, err := net.InterfaceByName(iface)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	}
	if err == nil {
		// Promiscuous: a bridge's own interface then sees what the bridge forwards between its ports. The
		// kernel drops the membership with the socket.
		err = unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP,
			&unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC})
	}
	if err == nil {
		// Large buffers: a busy link must not drop frames before they are looked at.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func (c *Capture) run(fd int) {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			// Drain what the kernel already queued, then end.
			for {
				n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
				if err != nil {
					return
				}
				c.look(buf[:n])
			}
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // timeout: look at done again
		}
		c.look(buf[:n])
	}
}

func (c *Capture) look(frame []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.Frames++
	for i, m := range c.opts.Markers {
		if bytes.Contains(frame, m) {
			c.st.Found[i] = true
		}
	}
	f, payload, ok := parsePacket(frame)
	if !ok {
		return
	}
	for _, w := range c.opts.Watched {
		if w.Contains(f.Src) || w.Contains(f.Dst) {
			c.st.Watched[f]++
			break
		}
	}
	if p := c.opts.WireGuardPort; p != 0 && f.Proto == unix.IPPROTO_UDP && (f.SrcPort == p || f.DstPort == p) {
		c.st.WireGuard[wireGuardType(payload)]++
	}
	if !c.nodes[f.Src] || !c.nodes[f.Dst] {
		return
	}
	if c.opts.Allowed != nil && c.opts.Allowed(f) {
		c.st.Tunnel++
		return
	}
	// Keep the well-known port: the lower one, the other is ephemeral.
	if f.SrcPort < f.DstPort {
		f.DstPort = 0
	} else {
		f.SrcPort = 0
	}
	c.st.BetweenNodes[f]++
}

// wireGuardType returns the type of the WireGuard message m (a UDP datagram's payload), or 0 if m is no
// well-formed one: a type, three reserved zero bytes, and the length of a message of that type.
func wireGuardType(m []byte) byte {
	if len(m) < 4 || m[1] != 0 || m[2] != 0 || m[3] != 0 {
		return 0
	}
	switch t := m[0]; {
	case t == WireGuardInitiation && len(m) == 148, t == WireGuardResponse && len(m) == 92, t == WireGuardCookie && len(m) == 64:
		return t
	case t == WireGuardData && len(m) >= 32: // a 16-byte header, then at least the authentication tag
		return t
	}
	return 0
}

// parseFlow reads an Ethernet frame carrying IPv4.
func parseFlow(frame []byte) (Flow, bool) {
	f, _, ok := parsePacket(frame)
	return f, ok
}

// parsePacket reads an Ethernet frame carrying IPv4: its flow and, for the first fragment of a UDP datagram,
// the datagram's payload as far as the frame holds it.
func parsePacket(frame []byte) (Flow, []byte, bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 {
		return Flow{}, nil, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl {
		return Flow{}, nil, false
	}
	// A short frame carries padding after the packet.
	if total := int(binary.BigEndian.Uint16(ip[2:4])); total >= ihl && total < len(ip) {
		ip = ip[:total]
	}
	f := Flow{Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])), Proto: ip[9]}
	if (f.Proto != unix.IPPROTO_TCP && f.Proto != unix.IPPROTO_UDP) || len(ip) < ihl+4 {
		return f, nil, true
	}
	f.SrcPort = binary.BigEndian.Uint16(ip[ihl : ihl+2])
	f.DstPort = binary.BigEndian.Uint16(ip[ihl+2 : ihl+4])
	if f.Proto != unix.IPPROTO_UDP || len(ip) < ihl+8 || binary.BigEndian.Uint16(ip[6:8])&0x1fff != 0 {
		return f, nil, true // no UDP header, or a later fragment (whose first bytes are no header)
	}
	payload := ip[ihl+8:]
	if n := int(binary.BigEndian.Uint16(ip[ihl+4:ihl+6])) - 8; n >= 0 && n < len(payload) {
		payload = payload[:n]
	}
	return f, payload, true
}

// Stop ends the capture and returns what it saw.
func (c *Capture) Stop() CaptureStats {
	close(c.done)
	c.wg.Wait()
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}
