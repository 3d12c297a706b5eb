// Package e2e holds end-to-end tests that drive the built constellation binary against a real mini cluster
// on this machine: node sandboxes, software TPMs, measured boot, attestation.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

func requireMachine(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a mini cluster needs root")
	}
	for _, tool := range []string{"ip", "nsenter", "mount", "mksquashfs", "busybox", "swtpm", "swtpm_setup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed; run scripts/setup.sh", tool)
		}
	}
	lockMini(t)
	stopOrphans(t)
	// Under the lock no other test's cluster exists: a network left now is a cluster outside the tests, or
	// the leftover of one that crashed. Skipping would let every end-to-end test pass without running.
	if mini.NetworkInUse() {
		t.Fatalf("a mini cluster's network (%s) exists on this machine, but no test holds it: stop that cluster "+
			"('constellation mini down' in its workspace) or remove a crashed one's leftovers ('ip link del %s') and run again",
			mini.BridgeName, mini.BridgeName)
	}
}

// miniLockPath serialises the tests that create a mini cluster (one network per machine), across packages and
// test binaries.
const miniLockPath = "/tmp/constellation-mini-provider.lock"

// lockMini waits until no other test runs a mini cluster on this machine; the lock ends with the test.
func lockMini(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(miniLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("opening %s: %v", miniLockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("locking %s: %v", miniLockPath, err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// goBuild builds a command of this module into dir.
func goBuild(t *testing.T, dir, pkg, name string, env ...string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// signImage signs imageDir's measurements as a local build does, with a development key and a transparency
// log of its own on loopback (stopped when signing is done), and returns the flags that make config generate
// trust them.
func signImage(t *testing.T, imageDir string) []string {
	t.Helper()
	signDir := t.TempDir()
	ports, err := signtest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", "../../tools/sign-measurements", "-image-dir", imageDir, "-dir", signDir, "-port", strconv.Itoa(ports.HTTP))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("signing the measurements: %v\n%s", err, b)
	}
	return []string{"--trusted-root", filepath.Join(signDir, "trusted-root.json"), "--allow-dev-signed"}
}

// smallImage builds a node image with the real bootstrapper and busybox, without Kubernetes: enough to boot
// nodes, measure them and attest them.
func smallImage(t *testing.T, bootstrapper, outDir string) {
	t.Helper()
	files := []nodeimage.File{
		{Path: "/usr/bin/bootstrapper", Source: bootstrapper, Mode: 0o755},
		{Path: "/usr/bin/busybox", Source: "/usr/bin/busybox", Mode: 0o755},
		{Path: "/usr/bin/sh", Link: "busybox"},
		{Path: "/bin", Link: "usr/bin"},
		{Path: "/etc/os-release", Data: []byte("ID=constellation-test\n")},
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/var"} {
		files = append(files, nodeimage.File{Path: d, Dir: true})
	}
	mkfs, err := nodeimage.MkfsFiles() // every node formats its new state disk at first boot
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, mkfs...)
	// The image has no Kubernetes, but its measurements are signed as every image's are, with the Kubernetes
	// version its manifest names: the one this project pins (no test here runs Kubernetes on it).
	manifest := &nodeimage.Manifest{Versions: nodeimage.Versions{Kubernetes: "v1.37.2"}}
	if err := nodeimage.WriteImage(context.Background(), files, outDir, manifest, nil); err != nil {
		t.Fatal(err)
	}
}

type cli struct {
	t   *testing.T
	bin string
	ws  string
}

func (c cli) run(args ...string) (string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append(args, "--workspace", c.ws)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return out.String(), code
}

func sysctls() string {
	var b strings.Builder
	for _, k := range []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward"} {
		raw, _ := os.ReadFile("/proc/sys/" + k)
		b.WriteString(k + "=" + strings.TrimSpace(string(raw)) + " ")
	}
	return b.String()
}

func TestMiniUpVerifyDown(t *testing.T) {
	requireMachine(t)
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	bootstrapper := goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/bootstrapper", "bootstrapper", "CGO_ENABLED=0")
	imageDir := t.TempDir()
	smallImage(t, bootstrapper, imageDir)
	hostBefore := sysctls()

	sig := signImage(t, imageDir)
	if out, code := c.run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workers", "1"}, sig...)...); code != 0 {
		t.Fatalf("config generate: %d\n%s", code, out)
	}
	// mini up verifies the measurements' signature again: a development build needs the flags again.
	if out, code := c.run(append([]string{"mini", "up", "--skip-init"}, sig[:2]...)...); code != 1 || !strings.Contains(out, "--allow-dev-signed") {
		t.Fatalf("mini up of a development-signed image without --allow-dev-signed: exit %d\n%s", code, out)
	}
	out, code := c.run(append([]string{"mini", "up", "--skip-init"}, sig...)...)
	t.Cleanup(func() { c.run("mini", "down") })
	if code != 0 {
		log, _ := os.ReadFile(filepath.Join(c.ws, "constellation-mini", "provider.log"))
		t.Fatalf("mini up: exit %d\n%s\nprovider log:\n%s", code, out, log)
	}
	for _, want := range []string{"measurements verified offline, DEVELOPMENT build", "measured boot", "control-plane-0 verified: control-plane-0", "worker-0 verified: worker-0", "Mini cluster up: 2 node(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("mini up output lacks %q:\n%s", want, out)
		}
	}

	// A second cluster is refused and changes nothing.
	if out, code := c.run(append([]string{"mini", "up", "--skip-init"}, sig...)...); code != 2 || !strings.Contains(out, "already running") {
		t.Fatalf("second mini up: exit %d\n%s", code, out)
	}

	// Only the operator who created the nodes can initialise the first one: apply kept the init secret in the
	// workspace (0600) and handed the provider its hash; a caller without it, or with a wrong one, is refused
	// as unauthenticated (a node that had found no hash in its metadata would refuse everything, differently).
	if info, err := os.Stat(filepath.Join(c.ws, "constellation-init-secret")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("the workspace's init secret: %v", err)
	}
	for _, secret := range [][]byte{nil, bytes.Repeat([]byte{1}, 32)} {
		if err := initWithoutAttestation(mini.NodeAddr(0).String()+":9000", secret); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Init without the init secret = %v, want Unauthenticated", err)
		}
	}

	// Any node can be attested at any time.
	out, code = c.run("verify", "--node-endpoint", mini.NodeAddr(1).String()+":9090", "-o", "json")
	var res struct {
		Node     string `json:"node"`
		Verified bool   `json:"verified"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.Verified || res.Node != "worker-0" {
		t.Fatalf("verify worker-0: exit %d\n%s", code, out)
	}

	// The same over gRPC.
	if out, code := c.run("verify", "--grpc", "--node-endpoint", mini.NodeAddr(0).String()+":9091"); code != 0 || !strings.Contains(out, "control-plane-0") {
		t.Fatalf("verify over gRPC: exit %d\n%s", code, out)
	}
	out, code = c.run("status")
	if code != 0 || strings.Count(out, "runs the configured image") != 2 || !strings.Contains(out, "Kubernetes not initialised") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}

	// Against a configuration that expects another node image, the same node fails, and the failure says
	// which image it runs.
	confPath := filepath.Join(c.ws, config.FileName)
	conf, err := config.Load(confPath)
	if err != nil {
		t.Fatal(err)
	}
	conf.Attestation.Measurements[4] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
	if err := conf.Write(confPath, true); err != nil {
		t.Fatal(err)
	}
	out, code = c.run("verify", "--node-endpoint", mini.NodeAddr(0).String()+":9090")
	if code != 1 || !strings.Contains(out, "PCR 4") || !strings.Contains(out, "constellation node image sha256:") {
		t.Fatalf("verify against another image: exit %d\n%s", code, out)
	}
	if out, code := c.run("status"); code != 1 || strings.Count(out, "FAILED") != 2 {
		t.Fatalf("status against another image: exit %d\n%s", code, out)
	}

	state, _, err := mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
	if err != nil {
		t.Fatal(err)
	}
	// terminate asks first; without a terminal to ask on it refuses and changes nothing.
	if out, code := c.run("terminate"); code != 2 || !strings.Contains(out, "--yes") || !state.DaemonAlive() {
		t.Fatalf("terminate without --yes: exit %d\n%s", code, out)
	}
	if out, code := c.run("terminate", "--yes"); code != 0 || !strings.Contains(out, "Cluster terminated") {
		t.Fatalf("terminate: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(confPath); err != nil {
		t.Fatal("terminate removed the configuration")
	}
	// Nothing is left: provider, node processes, swtpm, bridge, cgroups, mounts; sysctls as before.
	if state.DaemonAlive() {
		t.Error("provider still running")
	}
	for _, n := range state.Nodes {
		if _, err := os.Stat("/proc/" + strconv.Itoa(n.PID)); err == nil {
			t.Errorf("node %s still running", n.Name)
		}
	}
	if mini.NetworkInUse() {
		t.Error("node network left")
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/constellation"); !os.IsNotExist(err) {
		t.Error("cgroups left")
	}
	if raw, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(raw, []byte(c.ws)) {
		t.Error("mounts left")
	}
	if out, _ := exec.Command("pgrep", "-f", "swtpm socket.*"+c.ws).Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("swtpm processes left: %s", out)
	}
	if got := sysctls(); got != hostBefore {
		t.Errorf("host sysctls changed: before %s, after %s", hostBefore, got)
	}
}

// TestMiniUpAfterCrash kills the provider without warning, as a crash would, and checks that the next
// `mini up` removes the leftovers and boots a cluster whose nodes still attest (their TPMs, stopped
// uncleanly, are not locked out).
func TestMiniUpAfterCrash(t *testing.T) {
	requireMachine(t)
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	bootstrapper := goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/bootstrapper", "bootstrapper", "CGO_ENABLED=0")
	imageDir := t.TempDir()
	smallImage(t, bootstrapper, imageDir)
	sig := signImage(t, imageDir)
	if out, code := c.run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workers", "0"}, sig...)...); code != 0 {
		t.Fatalf("config generate: %d\n%s", code, out)
	}
	t.Cleanup(func() { c.run("mini", "down") })
	for round := range 4 {
		out, code := c.run(append([]string{"mini", "up", "--skip-init"}, sig...)...)
		if code != 0 {
			t.Fatalf("mini up (round %d): exit %d\n%s", round, code, out)
		}
		if round > 0 && !strings.Contains(out, "Cleaning up the leftovers") {
			t.Errorf("round %d: no cleanup of the crashed cluster:\n%s", round, out)
		}
		state, _, err := mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(state.DaemonPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for state.DaemonAlive() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if out, code := c.run("mini", "down"); code != 0 {
		t.Fatalf("mini down after a crash: exit %d\n%s", code, out)
	}
	if mini.NetworkInUse() {
		t.Error("node network left")
	}
}
