package wgmeshtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	MaybeRunHelper()
	os.Exit(m.Run())
}

// frame is an Ethernet frame with an IPv4 header (ihl words) and 4 bytes of ports.
func frame(ihl byte, proto byte, src, dst [4]byte, sport, dport uint16) []byte {
	f := make([]byte, 14+int(ihl)*4+4)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:]
	ip[0] = 0x40 | ihl
	ip[9] = proto
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	l4 := ip[int(ihl)*4:]
	l4[0], l4[1], l4[2], l4[3] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	return f
}

func TestParseFlow(t *testing.T) {
	f, ok := parseFlow(frame(5, unix.IPPROTO_UDP, [4]byte{10, 217, 0, 10}, [4]byte{10, 217, 0, 11}, 51820, 51820))
	want := Flow{Src: netip.MustParseAddr("10.217.0.10"), Dst: netip.MustParseAddr("10.217.0.11"), Proto: unix.IPPROTO_UDP, SrcPort: 51820, DstPort: 51820}
	if !ok || f != want {
		t.Fatalf("parseFlow = %v %v, want %v", f, ok, want)
	}
	// IP options: the ports follow the longer header.
	if f, ok := parseFlow(frame(6, unix.IPPROTO_TCP, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 40000, 6443)); !ok || f.DstPort != 6443 || f.SrcPort != 40000 {
		t.Fatalf("with options: %v %v", f, ok)
	}
	ipv6 := frame(5, unix.IPPROTO_TCP, [4]byte{}, [4]byte{}, 1, 2)
	ipv6[12], ipv6[13] = 0x86, 0xdd
	bad := frame(5, unix.IPPROTO_TCP, [4]byte{}, [4]byte{}, 1, 2)
	bad[14] = 0x44 // header length below 20 bytes
	for name, fr := range map[string][]byte{"IPv6": ipv6, "short": frame(5, 6, [4]byte{}, [4]byte{}, 1, 2)[:20], "header length": bad} {
		if _, ok := parseFlow(fr); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}

// udpFrame is an Ethernet frame with an IPv4 header (total length set) and a UDP datagram carrying payload,
// followed by pad bytes of padding.
func udpFrame(payload []byte, pad int) []byte {
	f := frame(5, unix.IPPROTO_UDP, [4]byte{10, 219, 0, 10}, [4]byte{10, 219, 0, 11}, 51820, 51820)
	f = append(f, 0, 0, 0, 0) // UDP length and checksum
	binary.BigEndian.PutUint16(f[14+24:], uint16(8+len(payload)))
	f = append(f, payload...)
	binary.BigEndian.PutUint16(f[14+2:], uint16(len(f)-14))
	return append(f, make([]byte, pad)...)
}

func TestWireGuardType(t *testing.T) {
	msg := func(typ byte, n int) []byte {
		m := make([]byte, n)
		m[0] = typ
		for i := 4; i < n; i++ {
			m[i] = 0xa5
		}
		return m
	}
	reserved := msg(WireGuardData, 64)
	reserved[2] = 1
	for _, c := range []struct {
		name string
		m    []byte
		want byte
	}{
		{"initiation", msg(WireGuardInitiation, 148), WireGuardInitiation},
		{"response", msg(WireGuardResponse, 92), WireGuardResponse},
		{"cookie reply", msg(WireGuardCookie, 64), WireGuardCookie},
		{"transport data", msg(WireGuardData, 32+1280), WireGuardData},
		{"keepalive", msg(WireGuardData, 32), WireGuardData},
		{"initiation of the wrong length", msg(WireGuardInitiation, 149), 0},
		{"transport data shorter than its tag", msg(WireGuardData, 31), 0},
		{"reserved bytes set", reserved, 0},
		{"unknown type", msg(5, 64), 0},
		{"plain text", []byte("GET / HTTP/1.1\r\n"), 0},
		{"empty", nil, 0},
	} {
		if got := wireGuardType(c.m); got != c.want {
			t.Errorf("%s: type %d, want %d", c.name, got, c.want)
		}
	}
}

func TestParsePacketPayload(t *testing.T) {
	data := append([]byte{WireGuardData, 0, 0, 0}, bytes.Repeat([]byte{0xa5}, 28)...)
	// A short datagram in a frame padded to Ethernet's minimum: the payload ends where the datagram does.
	f, payload, ok := parsePacket(udpFrame(data[:4], 20))
	if !ok || f.Proto != unix.IPPROTO_UDP || f.DstPort != 51820 || !bytes.Equal(payload, data[:4]) {
		t.Fatalf("padded frame: %v %v payload %x", f, ok, payload)
	}
	if _, payload, _ := parsePacket(udpFrame(data, 0)); wireGuardType(payload) != WireGuardData {
		t.Fatalf("transport data not recognised: %x", payload)
	}
	// A later fragment has no UDP header: no payload.
	later := udpFrame(data, 0)
	later[14+7] = 1
	if f, payload, ok := parsePacket(later); !ok || payload != nil || f.Src != netip.MustParseAddr("10.219.0.10") {
		t.Fatalf("later fragment: %v %v payload %x", f, ok, payload)
	}
	// TCP has no payload here; the datagram's length beyond the frame is cut to the frame.
	if _, payload, ok := parsePacket(frame(5, unix.IPPROTO_TCP, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2)); !ok || payload != nil {
		t.Fatalf("TCP: %v payload %x", ok, payload)
	}
	long := udpFrame(data, 0)
	binary.BigEndian.PutUint16(long[14+24:], 9000)
	if _, payload, _ := parsePacket(long); !bytes.Equal(payload, data) {
		t.Fatalf("datagram longer than its frame: payload %x", payload)
	}
}

// TestCaptureOnBridge captures on the own interface of the bridge that links a strict pair's nodes, as the
// host of a cluster can on its node network. ATTACK: the host snoops the node network while A fetches the
// marker from B's pod: the capture sees WireGuard transport data between the nodes and nothing else between
// them, neither the marker nor the pod network's addresses. The same capture sees each of them where it does
// cross in plain text (the plain-text port's answer; the outsider's attempt to reach the pod around the
// tunnel): it could tell.
func TestCaptureOnBridge(t *testing.T) {
	for _, tool := range []string{"curl", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	p, err := NewStrictPair()
	if err == ErrUnsupported {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	opts := CaptureOptions{
		Netns: p.NamespaceBridge, Interfaces: []string{"br0"}, Markers: [][]byte{[]byte(Marker)},
		// A's link holds LinkA2 first: its packets leave from there.
		Nodes:         []netip.Addr{netip.MustParseAddr(LinkA), netip.MustParseAddr(LinkA2), netip.MustParseAddr(LinkB)},
		Allowed:       func(f Flow) bool { return f.Proto == unix.IPPROTO_UDP && f.SrcPort == 51820 && f.DstPort == 51820 },
		WireGuardPort: 51820,
		Watched:       []netip.Prefix{netip.MustParsePrefix(PodNet)},
	}
	capture := func(fn func()) CaptureStats {
		t.Helper()
		c, err := StartCaptureWith(opts)
		if err != nil {
			t.Fatal(err)
		}
		fn()
		return c.Stop()
	}
	pod := "http://" + PodB + ":" + strconv.Itoa(HTTPPort) + "/"
	st := capture(func() {
		if out, err := p.Get(pod); err != nil || !strings.Contains(out, Marker) {
			t.Fatalf("A to B's pod through the tunnel: %v: %.100s", err, out)
		}
	})
	if st.Found[0] {
		t.Error("the marker crossed the bridge in plain text")
	}
	if st.WireGuard[WireGuardData] == 0 || st.Tunnel == 0 {
		t.Errorf("no WireGuard transport data between the nodes on the bridge (%d frames, WireGuard messages by type %v)", st.Frames, st.WireGuard)
	}
	if st.WireGuard[0] != 0 {
		t.Errorf("%d datagrams on the WireGuard port are no WireGuard messages", st.WireGuard[0])
	}
	if w, u := st.WatchedFlows(), st.Unexpected(); len(w) > 0 || len(u) > 0 {
		t.Errorf("in plain text on the bridge: pod addresses %v, traffic between nodes outside the tunnel %v", w, u)
	}

	// In plain text: B's answer on the plain-text port, and the outsider's packets to B's pod.
	st = capture(func() {
		if out, err := p.Get("http://" + LinkB + ":" + strconv.Itoa(PlaintextPort) + "/"); err != nil || !strings.Contains(out, Marker) {
			t.Fatalf("A to B's plain-text port: %v: %.100s", err, out)
		}
		var exit *exec.ExitError
		if out, err := GetIn(p.NamespaceC, pod, "-m", "1"); !errors.As(err, &exit) || exit.ExitCode() != 28 {
			t.Fatalf("the outsider to B's pod around the tunnel: want no answer, got %v: %.100s", err, out)
		}
	})
	if !st.Found[0] {
		t.Errorf("the capture did not see the marker that crossed the bridge in plain text (%d frames)", st.Frames)
	}
	if u := st.Unexpected(); len(u) == 0 || !strings.Contains(strings.Join(u, " "), ":"+strconv.Itoa(PlaintextPort)+" ") {
		t.Errorf("the plain-text connection between the nodes is not among the unexpected flows: %v", u)
	}
	if w := st.WatchedFlows(); len(w) == 0 || !strings.Contains(strings.Join(w, " "), PodB) {
		t.Errorf("the pod's address in plain text is not among the watched flows: %v", w)
	}
}

func FuzzParseFlow(f *testing.F) {
	f.Add(frame(5, unix.IPPROTO_UDP, [4]byte{10, 217, 0, 10}, [4]byte{10, 217, 0, 11}, 51820, 51820))
	f.Add(frame(15, unix.IPPROTO_TCP, [4]byte{10, 217, 0, 10}, [4]byte{10, 217, 0, 11}, 1, 2))
	f.Add(udpFrame(append([]byte{WireGuardData, 0, 0, 0}, make([]byte, 28)...), 6))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, payload, ok := parsePacket(b)
		if ok && (!fl.Src.Is4() || !fl.Dst.Is4()) {
			t.Fatalf("parsed a flow without IPv4 addresses: %v", fl)
		}
		if len(payload) > 0 && (!ok || fl.Proto != unix.IPPROTO_UDP || !bytes.Contains(b, payload)) {
			t.Fatalf("a payload %x that is no part of a UDP datagram in the frame (%v %v)", payload, fl, ok)
		}
		if typ := wireGuardType(payload); typ > WireGuardData {
			t.Fatalf("WireGuard message type %d", typ)
		}
	})
}
