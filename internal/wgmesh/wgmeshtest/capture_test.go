package wgmeshtest

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

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

func FuzzParseFlow(f *testing.F) {
	f.Add(frame(5, unix.IPPROTO_UDP, [4]byte{10, 217, 0, 10}, [4]byte{10, 217, 0, 11}, 51820, 51820))
	f.Add(frame(15, unix.IPPROTO_TCP, [4]byte{10, 217, 0, 10}, [4]byte{10, 217, 0, 11}, 1, 2))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, ok := parseFlow(b)
		if ok && (!fl.Src.Is4() || !fl.Dst.Is4()) {
			t.Fatalf("parsed a flow without IPv4 addresses: %v", fl)
		}
	})
}
