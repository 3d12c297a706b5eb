package wgmesh

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// marker is what the HTTP servers of the test answer; the capture looks for it on the wire.
const marker = "CONSTELLATION-NETWORK-MARKER-7f3a"

func TestKeys(t *testing.T) {
	priv, pub, err := GenerateKey()
	if err != nil || priv == (Key{}) || pub == (Key{}) || priv == pub {
		t.Fatalf("GenerateKey = %v, %v, %v", priv, pub, err)
	}
	back, err := ParseKey(pub.String())
	if err != nil || back != pub {
		t.Fatalf("ParseKey(String()) = %v, %v", back, err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("A", 40)} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

// TestHelperProcess is not a test: the tests below run it as a separate process inside a network namespace
// of their own, as a node (WireGuard interface and HTTP servers) or as a packet capture.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("WGMESH_HELPER") {
	case "node":
		if err := helperNode(); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "capture":
		if err := helperCapture(os.Getenv("WGMESH_IFACE")); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		t.Skip("helper process only")
	}
}

func helperNode() error {
	priv, err := ParseKey(os.Getenv("WGMESH_PRIVATE"))
	if err != nil {
		return err
	}
	peerKey, err := ParseKey(os.Getenv("WGMESH_PEER"))
	if err != nil {
		return err
	}
	self := netip.MustParsePrefix(os.Getenv("WGMESH_ADDR"))
	m, err := Start(Config{Interface: "wg0", PrivateKey: priv, ListenPort: 51820, MTU: 1500 - Overhead})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.AddAddress(self); err != nil {
		return err
	}
	peer := Peer{PublicKey: peerKey, Endpoint: netip.MustParseAddrPort(os.Getenv("WGMESH_PEER_ENDPOINT")), AllowedIPs: []netip.Prefix{netip.MustParsePrefix(os.Getenv("WGMESH_PEER_ADDR"))}}
	if err := m.SetPeers([]Peer{peer}); err != nil {
		return err
	}
	body := strings.Repeat(marker, 100)
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })
	for _, addr := range []string{self.Addr().String() + ":8080", os.Getenv("WGMESH_UNDERLAY") + ":8081"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go http.Serve(ln, handler)
	}
	fmt.Println("READY")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "remove-peers":
			if err := m.SetPeers(nil); err != nil {
				return err
			}
			fmt.Println("REMOVED")
		}
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// helperCapture reads every frame on iface until stdin closes and says whether one contained the marker.
func helperCapture(iface string) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return err
	}
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	fmt.Println("READY")
	frames, found := 0, false
	buf := make([]byte, 65536)
	for {
		select {
		case <-done:
			fmt.Printf("frames=%d found=%v\n", frames, found)
			return nil
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // timeout: look at done again
		}
		frames++
		if bytes.Contains(buf[:n], []byte(marker)) {
			found = true
		}
	}
}

// helper is a running helper process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startHelper(t *testing.T, netns string, env ...string) *helper {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", netns, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	h.expect(t, "READY")
	return h
}

func (h *helper) expect(t *testing.T, prefix string) string {
	t.Helper()
	if !h.out.Scan() || !strings.HasPrefix(h.out.Text(), prefix) {
		t.Fatalf("helper said %q, want %s", h.out.Text(), prefix)
	}
	return h.out.Text()
}

// capture runs fn while capturing on the interface iface of netns and reports whether the marker crossed it
// in plain text.
func capture(t *testing.T, netns, iface string, fn func()) (found bool) {
	t.Helper()
	c := startHelper(t, netns, "WGMESH_HELPER=capture", "WGMESH_IFACE="+iface)
	fn()
	time.Sleep(200 * time.Millisecond)
	c.stdin.Close()
	line := c.expect(t, "frames=")
	var frames int
	fmt.Sscanf(line, "frames=%d found=%t", &frames, &found)
	if frames == 0 {
		t.Fatalf("the capture on %s saw no frames at all", iface)
	}
	return found
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Two nodes in network namespaces of their own, linked by a veth pair: HTTP between their tunnel addresses
// goes through WireGuard, and a capture on the link finds no plaintext; the same request between their link
// addresses does show the marker (so the capture can fail); a node whose peer was removed no longer reaches
// it.
func TestTrafficBetweenNodesIsEncrypted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	for _, tool := range []string{"ip", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	id := strconv.Itoa(os.Getpid() % 100000)
	nsA, nsB, vethA, vethB := "cstwg-a-"+id, "cstwg-b-"+id, "cstwga"+id, "cstwgb"+id
	run(t, "ip", "netns", "add", nsA)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsA).Run() })
	run(t, "ip", "netns", "add", nsB)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsB).Run() })
	run(t, "ip", "link", "add", vethA, "netns", nsA, "type", "veth", "peer", "name", vethB, "netns", nsB)
	for _, c := range [][]string{
		{nsA, "addr", "add", "10.252.0.1/24", "dev", vethA}, {nsA, "link", "set", vethA, "up"}, {nsA, "link", "set", "lo", "up"},
		{nsB, "addr", "add", "10.252.0.2/24", "dev", vethB}, {nsB, "link", "set", vethB, "up"}, {nsB, "link", "set", "lo", "up"},
	} {
		run(t, append([]string{"ip", "-n", c[0]}, c[1:]...)...)
	}
	privA, pubA, _ := GenerateKey()
	privB, pubB, _ := GenerateKey()
	a := startHelper(t, nsA, "WGMESH_HELPER=node", "WGMESH_PRIVATE="+privA.String(), "WGMESH_PEER="+pubB.String(),
		"WGMESH_ADDR=10.253.0.1/32", "WGMESH_PEER_ADDR=10.253.0.2/32", "WGMESH_PEER_ENDPOINT=10.252.0.2:51820", "WGMESH_UNDERLAY=10.252.0.1")
	startHelper(t, nsB, "WGMESH_HELPER=node", "WGMESH_PRIVATE="+privB.String(), "WGMESH_PEER="+pubA.String(),
		"WGMESH_ADDR=10.253.0.2/32", "WGMESH_PEER_ADDR=10.253.0.1/32", "WGMESH_PEER_ENDPOINT=10.252.0.1:51820", "WGMESH_UNDERLAY=10.252.0.2")

	get := func(url string) (string, error) {
		out, err := exec.Command("ip", "netns", "exec", nsA, "curl", "-sS", "-m", "5", url).CombinedOutput()
		return string(out), err
	}
	var body string
	if found := capture(t, nsA, vethA, func() {
		var err error
		if body, err = get("http://10.253.0.2:8080/"); err != nil {
			t.Fatalf("request through the tunnel: %v: %s", err, body)
		}
	}); found {
		t.Fatal("the marker crossed the link in plain text although it went through the tunnel")
	}
	if !strings.Contains(body, marker) {
		t.Fatalf("the answer through the tunnel lacks the marker: %.100q", body)
	}
	if found := capture(t, nsA, vethA, func() {
		if out, err := get("http://10.252.0.2:8081/"); err != nil || !strings.Contains(out, marker) {
			t.Fatalf("request outside the tunnel: %v: %.100s", err, out)
		}
	}); !found {
		t.Fatal("the capture does not see the marker even without the tunnel: it cannot tell")
	}

	// Node A stops peering with B: B's tunnel address is no longer reachable from A.
	io.WriteString(a.stdin, "remove-peers\n")
	a.expect(t, "REMOVED")
	if out, err := get("http://10.253.0.2:8080/"); err == nil {
		t.Fatalf("a removed peer is still reachable: %.100s", out)
	}
}
