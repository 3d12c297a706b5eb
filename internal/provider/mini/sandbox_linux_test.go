package mini

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/nodeimage"
)

func TestMain(m *testing.M) {
	MaybeRunNodeInit()
	os.Exit(m.Run())
}

// testImage builds a small node image: busybox and a marker file.
func testImage(t *testing.T) string {
	t.Helper()
	files := []nodeimage.File{
		{Path: "/usr/bin/busybox", Source: "/usr/bin/busybox", Mode: 0o755},
		{Path: "/etc/marker", Data: []byte("image-marker-42\n")},
		{Path: "/bin", Link: "usr/bin"},
	}
	for _, a := range []string{"sh", "sleep", "hostname", "cat", "ping", "ip", "echo"} {
		files = append(files, nodeimage.File{Path: "/usr/bin/" + a, Link: "busybox"})
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp"} {
		files = append(files, nodeimage.File{Path: d, Dir: true})
	}
	dir := t.TempDir()
	if err := nodeimage.WriteTree(filepath.Join(dir, "tree"), files); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "node.squashfs")
	if err := nodeimage.MakeSquashfs(context.Background(), filepath.Join(dir, "tree"), img); err != nil {
		t.Fatal(err)
	}
	return img
}

func requireSandboxes(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("node sandboxes need root")
	}
	for _, tool := range []string{"ip", "nsenter", "mount", "mksquashfs", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed; run scripts/setup.sh", tool)
		}
	}
}

// waitConsole waits until a node's console shows marker. The deadline only guards against a hang.
func waitConsole(t *testing.T, sb *Sandbox, marker string) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		raw, _ := os.ReadFile(filepath.Join(sb.StateDir, "console.log"))
		if strings.Contains(string(raw), marker) {
			return string(raw)
		}
		if !sb.Running() {
			t.Fatalf("node %s stopped before printing %q; console:\n%s", sb.Name, marker, raw)
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s never printed %q; console:\n%s", sb.Name, marker, raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSandboxes(t *testing.T) {
	requireSandboxes(t)
	img := testImage(t)
	n := Network{Bridge: "csttest0", Gateway: netip.MustParsePrefix("10.219.0.1/24")}
	n.Down() // leftovers of an interrupted run
	if err := n.Up(); err != nil {
		t.Fatal(err)
	}
	defer n.Down()
	if err := n.Up(); err == nil {
		t.Fatal("a second bridge with the same name was created")
	}
	tpmSocket := filepath.Join(t.TempDir(), "tpm.sock")
	if err := os.WriteFile(tpmSocket, []byte("tpm-socket-visible\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mountsBefore := readMounts(t)

	start := func(name, ip, script string) *Sandbox {
		spec := bootSpec{
			Name: name, Hostname: name, Image: img, StateDir: filepath.Join(t.TempDir(), name), TPMSocket: tpmSocket,
			Cmdline: []string{"/bin/sh", "-c", script}, Metadata: "http://10.219.0.1:8080",
		}
		sb, err := StartSandbox(n, spec, netip.MustParseAddr(ip), "csttest-"+name[len(name)-1:], "constellation-test")
		if err != nil {
			t.Fatalf("StartSandbox(%s): %v", name, err)
		}
		t.Cleanup(func() { sb.Stop() })
		return sb
	}
	sb0 := start("node-0", "10.219.0.10", `hostname; cat /etc/marker; cat /run/constellation/tpm.sock; echo "tpm=$CONSTELLATION_TPM"; ip route; echo "metadata=$CONSTELLATION_METADATA"; echo READY; exec sleep 1000`)
	sb1 := start("node-1", "10.219.0.11", `ping -c1 -W5 10.219.0.10 && echo PING-OK; echo READY; exec sleep 1000`)

	out0 := waitConsole(t, sb0, "READY")
	for _, want := range []string{"node-0\n", "image-marker-42", "tpm-socket-visible", "tpm=/run/constellation/tpm.sock", "10.219.0.0/24 dev eth0", "metadata=http://10.219.0.1:8080"} {
		if !strings.Contains(out0, want) {
			t.Errorf("node-0 console lacks %q:\n%s", want, out0)
		}
	}
	if strings.Contains(out0, "default") {
		t.Errorf("node-0 has a default route:\n%s", out0)
	}
	if out1 := waitConsole(t, sb1, "READY"); !strings.Contains(out1, "PING-OK") {
		t.Errorf("node-1 cannot reach node-0 over the bridge:\n%s", out1)
	}
	// A node whose first process ends says how it ended; stopping it then kills nothing by its old PID.
	sb2 := start("node-2", "10.219.0.12", `echo BYE; exit 3`)
	for sb2.Running() {
		time.Sleep(20 * time.Millisecond)
	}
	if err := sb2.Exited(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Exited() of a node that exited with status 3 = %v", err)
	}
	if err := sb2.Stop(); err != nil {
		t.Errorf("Stop of an ended node: %v", err)
	}
	if !inCgroup(sb0.PID, sb0.Cgroup) || inCgroup(sb0.PID, sb1.Cgroup) || inCgroup(os.Getpid(), sb0.Cgroup) {
		t.Errorf("inCgroup does not tell which node's cgroup a process is in")
	}
	// The provider configures a running node through the namespace it opened at the start.
	if err := sb0.IPInNode("route", "add", "10.97.0.0/16", "dev", "eth0"); err != nil {
		t.Fatalf("adding a route in node-0: %v", err)
	}
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(sb0.PID), "-n", "ip", "route", "show", "10.97.0.0/16").CombinedOutput(); err != nil || !strings.Contains(string(out), "10.97.0.0/16 dev eth0") {
		t.Fatalf("the route is not in node-0: %v: %s", err, out)
	}
	if err := sb0.IPInNode("route", "add", "not-a-prefix"); err == nil || !strings.Contains(err.Error(), "node-0") {
		t.Fatalf("a bad ip command in node-0: %v", err)
	}
	if got := readMounts(t); got != mountsBefore {
		t.Errorf("starting nodes changed the host's mounts")
	}

	for _, sb := range []*Sandbox{sb0, sb1} {
		if err := sb.Stop(); err != nil {
			t.Fatalf("Stop(%s): %v", sb.Name, err)
		}
		if _, err := os.Stat(filepath.Join(cgroupRoot, "pids", sb.Cgroup)); !os.IsNotExist(err) {
			t.Errorf("cgroup of %s left: %v", sb.Name, err)
		}
		if linkExists(sb.HostLink) {
			t.Errorf("veth of %s left", sb.Name)
		}
		if err := exec.Command("kill", "-0", strconv.Itoa(sb.PID)).Run(); err == nil {
			t.Errorf("process of %s left", sb.Name)
		}
	}
	if out, _ := exec.Command("losetup", "-j", img).Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("loop devices left: %s", out)
	}
	removeCgroupTreeAll("constellation-test")
	for _, h := range cgroupHierarchies {
		if _, err := os.Stat(filepath.Join(cgroupRoot, h, "constellation-test")); err == nil {
			t.Errorf("cgroup parent left in %s", h)
		}
	}
}

func readMounts(t *testing.T) string {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}
