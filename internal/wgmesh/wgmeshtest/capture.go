package wgmeshtest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Capture records every frame on interfaces of the caller's network namespace (AF_PACKET), to tell what
// crossed them in plain text. On a bridge, capture on its ports: the bridge's own interface sees only what is
// addressed to the host.
type Capture struct {
	fds     []int
	done    chan struct{}
	markers [][]byte
	nodes   map[netip.Addr]bool
	allowed func(Flow) bool

	wg sync.WaitGroup
	mu sync.Mutex
	st CaptureStats
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
}

// Unexpected lists the flows between nodes outside the filter, most frequent first.
func (s CaptureStats) Unexpected() []string {
	var out []string
	for f, n := range s.BetweenNodes {
		out = append(out, fmt.Sprintf("%s (%d packets)", f, n))
	}
	sort.Strings(out)
	return out
}

// StartCapture captures on ifaces until Stop, looking for markers in every frame and classifying the IPv4
// packets between two of nodes: allowed (for example WireGuard's UDP) or not.
func StartCapture(ifaces []string, markers [][]byte, nodes []netip.Addr, allowed func(Flow) bool) (*Capture, error) {
	c := &Capture{done: make(chan struct{}), markers: markers, nodes: map[netip.Addr]bool{}, allowed: allowed,
		st: CaptureStats{Found: map[int]bool{}, BetweenNodes: map[Flow]int{}}}
	for _, n := range nodes {
		c.nodes[n] = true
	}
	for _, iface := range ifaces {
		fd, err := openCapture(iface)
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("capturing on %s: %w", iface, err)
		}
		c.fds = append(c.fds, fd)
		c.wg.Add(1)
		go c.run(fd)
	}
	return c, nil
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
	for i, m := range c.markers {
		if bytes.Contains(frame, m) {
			c.st.Found[i] = true
		}
	}
	f, ok := parseFlow(frame)
	if !ok || !c.nodes[f.Src] || !c.nodes[f.Dst] {
		return
	}
	if c.allowed != nil && c.allowed(f) {
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

// parseFlow reads an Ethernet frame carrying IPv4.
func parseFlow(frame []byte) (Flow, bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 {
		return Flow{}, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl {
		return Flow{}, false
	}
	f := Flow{Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])), Proto: ip[9]}
	if (f.Proto == unix.IPPROTO_TCP || f.Proto == unix.IPPROTO_UDP) && len(ip) >= ihl+4 {
		f.SrcPort = binary.BigEndian.Uint16(ip[ihl : ihl+2])
		f.DstPort = binary.BigEndian.Uint16(ip[ihl+2 : ihl+4])
	}
	return f, true
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
