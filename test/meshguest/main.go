//go:build linux

// Command meshguest is the first process of a virtual machine built like a node (package test/guestvm): it
// proves the node's kernel paths inside the guest and measures them. It checks that the image's kernel
// modules are loaded (node-init loads them from the initramfs), then starts two mesh nodes, each a process of
// its own in a network namespace of its own, joined by a veth pair, each bringing up the mesh through package
// wgmesh in strict mode with the kernel's WireGuard, as the bootstrapper does. It reports:
//
//	modules        every module of bootimage.NodeModules is loaded
//	backend-a/-b   the mesh runs on the kernel's WireGuard and the interface is a link of type "wireguard"
//	presharedkeys  every peer of both devices has a preshared key
//	tunnel         an HTTP request from A to B's node address gets B's answer
//	capture        during that request, a capture on A's veth (AF_PACKET) saw only WireGuard between the nodes
//	               (UDP to the mesh port) and never the answer's marker
//	capture-control  the join port, which crosses in plain text, shows the marker to the same capture
//	strict         with A and B no longer each other's peers, A's request fails at once (no route) and
//	               nothing but WireGuard crosses between the nodes
//	net-wireguard, net-veth  TCP throughput from A to B through the tunnel and over the plain veth (Mbit/s)
//	disk-plain, disk-luks2   sequential write throughput to a blank disk and through a LUKS2 mapping with
//	               dm-integrity on another (MB/s), when the machine has disks with the serials "plain" and "luks"
//
// and powers the machine off. Flags set the amounts measured.
package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/diskmapper/luks"
	"github.com/constellation-dev/constellation/internal/wgmesh"
	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
)

// The two nodes: their node addresses (the protected node network, reachable only through the tunnel but for
// the join port), addresses outside it for the plain veth figure, and their veth ends.
const (
	linkNet        = "10.252.0.0/24"
	linkA, linkB   = "10.252.0.1", "10.252.0.2"
	plainA, plainB = "10.251.0.1", "10.251.0.2"
	devA, devB     = "veth-a", "veth-b"
	meshPort       = 51820
	httpPort       = 8080 // the marker, only through the tunnel
	joinPort       = 8081 // the marker, the port that may cross in plain text (the join service's)
	sinkPort       = 8082 // reads and discards, for throughput
)

func main() {
	if os.Getenv("MESHGUEST_NODE") != "" {
		if err := node(); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		return
	}
	netBytes := flag.Int64("net-bytes", 8<<20, "bytes sent for each network figure")
	diskBytes := flag.Int64("disk-bytes", 16<<20, "bytes written for each disk figure")
	flag.Parse()
	if err := setup(); err != nil {
		result("setup", err, "")
	} else {
		run(*netBytes, *diskBytes)
	}
	fmt.Println("RESULT done")
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func result(check string, err error, format string, args ...any) {
	if err != nil {
		fmt.Printf("RESULT fail %s %v\n", check, err)
		return
	}
	fmt.Printf("RESULT ok %s %s\n", check, fmt.Sprintf(format, args...))
}

// setup mounts what the read-only root lacks: /run (iptables' lock, libcryptsetup's locks) and /tmp.
func setup() error {
	for _, d := range []string{"/run", "/tmp"} {
		if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID, ""); err != nil {
			return fmt.Errorf("mounting %s: %w", d, err)
		}
	}
	if err := os.MkdirAll("/run/cryptsetup", 0o700); err != nil {
		return err
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(lo)
}

func run(netBytes, diskBytes int64) {
	var missing []string
	for _, m := range bootimage.NodeModules {
		if _, err := os.Stat(filepath.Join("/sys/module", m)); err != nil {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		result("modules", fmt.Errorf("not loaded: %v", missing), "")
	} else {
		result("modules", nil, "%d node modules loaded", len(bootimage.NodeModules))
	}

	a, b, err := startNodes()
	if err != nil {
		result("nodes", err, "")
		return
	}
	defer a.stop()
	defer b.stop()
	var pskErr error
	for _, n := range []struct {
		check string
		h     *helper
	}{{"backend-a", a}, {"backend-b", b}} {
		line, err := n.h.ask("status", "STATUS ")
		if err == nil && !strings.Contains(line, " backend=kernel linktype=wireguard ") {
			err = fmt.Errorf("not the kernel's WireGuard: %s", line)
		}
		result(n.check, err, "%s", strings.TrimPrefix(line, "STATUS "))
		if err == nil && !strings.HasSuffix(line, " peers=1 psk=1") {
			pskErr = fmt.Errorf("a peer without a preshared key: %s", line)
		}
	}
	result("presharedkeys", pskErr, "every peer of both devices has one")

	// The request carries the marker too (in its path): a capture sees it if either direction crosses in
	// plain text.
	url := fmt.Sprintf("http://%s:%d/%s", linkB, httpPort, wgmeshtest.Marker)
	capt, get, err := captureGet(a, url)
	result("tunnel", err, "%s", get)
	if err == nil {
		if err = cleanCapture(capt); err != nil {
			err = fmt.Errorf("%w: %s", err, capt)
		}
		result("capture", err, "%s", capt)
	}
	capt, get, err = captureGet(a, fmt.Sprintf("http://%s:%d/", linkB, joinPort))
	if err == nil && !strings.Contains(capt, " found=true ") {
		err = fmt.Errorf("the capture did not see the marker that crossed in plain text: %s", capt)
	}
	result("capture-control", err, "%s; %s", get, capt)

	for _, f := range []struct{ name, target string }{
		{"net-veth", net.JoinHostPort(plainB, strconv.Itoa(sinkPort))},
		{"net-wireguard", net.JoinHostPort(linkB, strconv.Itoa(sinkPort))},
	} {
		line, err := a.ask(fmt.Sprintf("send %s %d", f.target, netBytes), "MBITS ")
		result(f.name, err, "%s Mbit/s", strings.TrimPrefix(line, "MBITS "))
	}

	// The tunnel goes (here: the two nodes drop each other as peers, as when the host makes one look removed
	// from the cluster): A's traffic to B fails, it does not go in plain text.
	_, err = a.ask("remove-peers", "REMOVED")
	if err == nil {
		_, err = b.ask("remove-peers", "REMOVED")
	}
	if err == nil {
		capt, get, err = captureGet(a, url)
		switch {
		case err == nil:
			err = fmt.Errorf("node B answered through no tunnel: %s; %s", get, capt)
		case strings.Contains(capt, " found=true ") || !strings.HasSuffix(capt, " unexpected=[]"):
			err = fmt.Errorf("plain text crossed between the nodes: %s", capt)
		default:
			err = nil
		}
	}
	result("strict", err, "%s; %s", get, capt)

	diskFigures(diskBytes)
}

// captureGet has A fetch url while A captures on its veth; it returns the capture's and the request's reports.
func captureGet(a *helper, url string) (capture, get string, err error) {
	if _, err := a.ask("capture-start", "CAPTURING"); err != nil {
		return "", "", err
	}
	get, gerr := a.ask("get "+url, "GOT ")
	capture, err = a.ask("capture-stop", "CAPTURE ")
	if err != nil {
		return "", get, err
	}
	return strings.TrimPrefix(capture, "CAPTURE "), strings.TrimPrefix(get, "GOT "), gerr
}

// cleanCapture checks a capture's report: frames seen, no marker, nothing between the nodes but WireGuard.
func cleanCapture(c string) error {
	switch {
	case strings.Contains(c, " found=true "):
		return errors.New("the marker crossed the veth in plain text")
	case !strings.HasSuffix(c, " unexpected=[]"):
		return errors.New("packets between the nodes other than WireGuard")
	case strings.Contains(c, " tunnel=0 "):
		return errors.New("the capture saw no WireGuard packets")
	}
	return nil
}

// helper is a mesh node: this program, started in a network namespace of its own.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func (h *helper) ask(line, prefix string) (string, error) {
	if _, err := io.WriteString(h.stdin, line+"\n"); err != nil {
		return "", err
	}
	if !h.out.Scan() {
		return "", fmt.Errorf("the node ended without answering %q", line)
	}
	got := h.out.Text()
	if !strings.HasPrefix(got, prefix) {
		return got, fmt.Errorf("%s: %s", line, got)
	}
	return got, nil
}

func (h *helper) stop() {
	h.stdin.Close()
	h.cmd.Wait()
}

// startNodes starts the two nodes in new network namespaces, joins them with a veth pair and has each bring
// up the mesh with the other as its peer.
func startNodes() (a, b *helper, err error) {
	privA, pubA, err := wgmesh.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	privB, pubB, err := wgmesh.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	var root wgmesh.Key
	if _, err := rand.Read(root[:]); err != nil {
		return nil, nil, err
	}
	start := func(self, plain, peer, dev string, priv, peerKey wgmesh.Key) (*helper, error) {
		cmd := exec.Command("/proc/self/exe")
		cmd.Env = []string{"MESHGUEST_NODE=1", "PATH=/usr/sbin:/usr/bin", "SELF=" + self, "PLAIN=" + plain, "PEER=" + peer,
			"DEV=" + dev, "PRIVATE=" + priv.String(), "PEER_KEY=" + peerKey.String(), "ROOT=" + root.String()}
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET}
		cmd.Stderr = os.Stdout
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting a node in a network namespace of its own: %w", err)
		}
		return &helper{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}, nil
	}
	if a, err = start(linkA, plainA, linkB, devA, privA, pubB); err != nil {
		return nil, nil, err
	}
	if b, err = start(linkB, plainB, linkA, devB, privB, pubA); err != nil {
		a.stop()
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			a.stop()
			b.stop()
		}
	}()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: devA}, PeerName: devB}); err != nil {
		return a, b, fmt.Errorf("creating the veth pair: %w", err)
	}
	for dev, h := range map[string]*helper{devA: a, devB: b} {
		l, err := netlink.LinkByName(dev)
		if err == nil {
			err = netlink.LinkSetNsPid(l, h.cmd.Process.Pid)
		}
		if err != nil {
			return a, b, fmt.Errorf("moving %s into its node's namespace: %w", dev, err)
		}
	}
	for _, h := range []*helper{a, b} {
		if _, err := h.ask("up", "READY"); err != nil {
			return a, b, err
		}
	}
	return a, b, nil
}

// node is a mesh node: it waits for "up", configures its veth end, brings up the mesh (kernel WireGuard,
// strict) and serves, then answers commands on stdin, one line each.
func node() error {
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "up" {
		return errors.New("expected up")
	}
	env := func(k string) string { return os.Getenv(k) }
	self, plain := netip.MustParseAddr(env("SELF")), netip.MustParseAddr(env("PLAIN"))
	priv, err := wgmesh.ParseKey(env("PRIVATE"))
	if err != nil {
		return err
	}
	peerKey, err := wgmesh.ParseKey(env("PEER_KEY"))
	if err != nil {
		return err
	}
	root, err := wgmesh.ParseKey(env("ROOT"))
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(env("DEV"))
	if err != nil {
		return err
	}
	for _, a := range []netip.Addr{self, plain} {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, l := range []netlink.Link{lo, link} {
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	// As the node agent does: strict, the node network only through the tunnel but for the join port.
	m, err := wgmesh.Start(wgmesh.Config{Interface: "wg0", PrivateKey: priv, ListenPort: meshPort, MTU: 1500 - wgmesh.Overhead,
		Backend: wgmesh.BackendKernel,
		Routing: &wgmesh.Routing{Table: meshPort, Mark: 0x51820, Source: self, Link: env("DEV"),
			Protected: []netip.Prefix{netip.MustParsePrefix(linkNet)}, PlaintextTCPPorts: []uint16{joinPort}}})
	if err != nil {
		return err
	}
	defer m.Close()
	pub, err := wgmesh.PublicKey(priv)
	if err != nil {
		return err
	}
	psk, err := wgmesh.PairKey(root, pub, peerKey)
	if err != nil {
		return err
	}
	peer := wgmesh.Peer{PublicKey: peerKey, Endpoint: netip.AddrPortFrom(netip.MustParseAddr(env("PEER")), meshPort),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(env("PEER")), 32)}, PresharedKey: psk}
	if err := m.SetPeers([]wgmesh.Peer{peer}); err != nil {
		return err
	}
	body := strings.Repeat(wgmeshtest.Marker, 100)
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })
	for _, port := range []int{httpPort, joinPort} {
		ln, err := net.Listen("tcp", net.JoinHostPort(self.String(), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		go http.Serve(ln, handler)
	}
	for _, a := range []netip.Addr{self, plain} {
		ln, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(sinkPort)))
		if err != nil {
			return err
		}
		go sink(ln)
	}
	fmt.Println("READY", m.Backend())
	var capture *wgmeshtest.Capture
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "status":
			st, err := m.Status()
			l, lerr := netlink.LinkByName("wg0")
			if err == nil {
				err = lerr
			}
			if err != nil {
				fmt.Println("ERROR", err)
				continue
			}
			withPSK := 0
			for _, p := range st {
				if p.HasPresharedKey {
					withPSK++
				}
			}
			fmt.Printf("STATUS node=%s backend=%s linktype=%s peers=%d psk=%d\n", self, m.Backend(), l.Type(), len(st), withPSK)
		case "capture-start":
			nodes := []netip.Addr{netip.MustParseAddr(linkA), netip.MustParseAddr(linkB)}
			capture, err = wgmeshtest.StartCapture([]string{env("DEV")}, [][]byte{[]byte(wgmeshtest.Marker)}, nodes,
				func(f wgmeshtest.Flow) bool { return f.Proto == unix.IPPROTO_UDP && f.DstPort == meshPort })
			if err != nil {
				fmt.Println("ERROR", err)
				continue
			}
			fmt.Println("CAPTURING")
		case "capture-stop":
			st := capture.Stop()
			fmt.Printf("CAPTURE frames=%d tunnel=%d found=%v unexpected=%v\n", st.Frames, st.Tunnel, st.Found[0], st.Unexpected())
		case "get":
			// A new connection each time: a request must take the route the node has now.
			c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			start := time.Now()
			resp, err := c.Get(arg)
			var n int
			var got []byte
			if err == nil {
				got, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				n = len(got)
			}
			if err == nil && !strings.Contains(string(got), wgmeshtest.Marker) {
				err = fmt.Errorf("the answer lacks the marker: %.60q", got)
			}
			if err != nil {
				fmt.Printf("GETERR %s after %.1fs: %v\n", arg, time.Since(start).Seconds(), err)
				continue
			}
			fmt.Printf("GOT %s %d bytes in %.1fs\n", arg, n, time.Since(start).Seconds())
		case "send":
			target, n, _ := strings.Cut(arg, " ")
			mbits, err := send(target, n)
			if err != nil {
				fmt.Println("ERROR", err)
				continue
			}
			fmt.Printf("MBITS %.1f\n", mbits)
		case "remove-peers":
			if err := m.SetPeers(nil); err != nil {
				fmt.Println("ERROR", err)
				continue
			}
			fmt.Println("REMOVED")
		default:
			fmt.Println("ERROR unknown command", cmd)
		}
	}
	return nil
}

func sink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
}

// send sends n bytes to target over TCP and returns the throughput in Mbit/s, counted until the receiver has
// read everything (it closes after reading to the end).
func send(target, n string) (float64, error) {
	total, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return 0, err
	}
	c, err := net.Dial("tcp", target)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := int64(0); sent < total; {
		k, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
		if err != nil {
			return 0, err
		}
		sent += int64(k)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	io.Copy(io.Discard, c)
	return float64(total) * 8 / time.Since(start).Seconds() / 1e6, nil
}

// diskFigures measures sequential writes to the disk with the serial "plain" and through a LUKS2 mapping with
// dm-integrity (luks.Format, as a node's state disk) of the disk with the serial "luks", the same amount each.
func diskFigures(n int64) {
	plain, perr := diskBySerial("plain")
	enc, lerr := diskBySerial("luks")
	if perr != nil || lerr != nil {
		return // no disks: no disk figures
	}
	mbs, err := writeThroughput(plain, n)
	result("disk-plain", err, "%.1f MB/s (%d MiB to %s)", mbs, n>>20, plain)
	_, first, err := luks.Format(enc)
	if err != nil {
		result("disk-luks2", fmt.Errorf("formatting %s: %w", enc, err), "")
		return
	}
	key := make([]byte, luks.KeySize)
	rand.Read(key)
	if err := luks.SetKey(enc, first, key); err != nil {
		result("disk-luks2", err, "")
		return
	}
	mp, err := luks.Open(enc, "bench", key)
	if err != nil {
		result("disk-luks2", err, "")
		return
	}
	defer mp.Close()
	mbs, err = writeThroughput(mp.Path, n)
	result("disk-luks2", err, "%.1f MB/s (%d MiB through %s, aes-xts-plain64 with hmac-sha256 integrity)", mbs, n>>20, mp.Path)
}

// diskBySerial returns the virtio disk with the serial.
func diskBySerial(serial string) (string, error) {
	found, _ := filepath.Glob("/sys/block/vd*/serial")
	for _, f := range found {
		if raw, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(raw)) == serial {
			return "/dev/" + filepath.Base(filepath.Dir(f)), nil
		}
	}
	return "", fmt.Errorf("no disk with the serial %q", serial)
}

// writeThroughput writes n bytes of random data to the device sequentially and syncs, in MB/s.
func writeThroughput(dev string, n int64) (float64, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	start := time.Now()
	for written := int64(0); written < n; written += int64(len(buf)) {
		if _, err := f.Write(buf[:min(int64(len(buf)), n-written)]); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds() / 1e6, nil
}
