package mini

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Network is the private bridge that connects a cluster's nodes with each other and with the provider (the
// metadata service listens on the bridge address). Nothing routes from it to anywhere else.
type Network struct {
	Bridge  string       // interface name, at most 15 characters
	Gateway netip.Prefix // the provider's address on the bridge, e.g. 10.217.0.1/24
}

// MTU is the node network's MTU: jumbo frames, as cloud networks offer between instances (AWS VPCs: 9001).
// Nodes size their WireGuard tunnel and pod interfaces from it.
const MTU = 9000

// Up creates the bridge. It fails if the bridge already exists: a previous cluster's leftovers must be
// cleaned first.
func (n Network) Up() error {
	if err := run("ip", "link", "add", n.Bridge, "mtu", strconv.Itoa(MTU), "type", "bridge"); err != nil {
		return fmt.Errorf("creating bridge %s: %w", n.Bridge, err)
	}
	if err := run("ip", "addr", "add", n.Gateway.String(), "dev", n.Bridge); err != nil {
		return fmt.Errorf("configuring bridge %s: %w", n.Bridge, err)
	}
	if err := run("ip", "link", "set", n.Bridge, "up"); err != nil {
		return fmt.Errorf("configuring bridge %s: %w", n.Bridge, err)
	}
	return nil
}

// Down deletes the bridge; a missing bridge is not an error.
func (n Network) Down() error {
	if !linkExists(n.Bridge) {
		return nil
	}
	return run("ip", "link", "del", n.Bridge)
}

// cgroupHierarchies are the cgroup v1 hierarchies every node gets a subtree in.
var cgroupHierarchies = []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd"}

// cgroupRoot is the host cgroup path below which nodes live.
const cgroupRoot = "/sys/fs/cgroup"

// Sandbox is a running node sandbox.
type Sandbox struct {
	Name     string
	IP       netip.Addr
	PID      int
	HostLink string // the host end of the node's veth
	Cgroup   string // cgroup path relative to each hierarchy, e.g. constellation/node-0
	StateDir string

	// exited is closed once the first process has ended and been reaped by the provider that started it; then
	// exitErr says how it ended. Both are nil for a sandbox known only from a saved state (its provider died):
	// its PID may since belong to another process.
	exited   chan struct{}
	exitErr  error
	stopping atomic.Bool // set by Stop: the end of the first process is expected
	// netns is the node's network namespace, opened while its first process waited for the provider. The
	// provider configures the node's network through it, never through /proc/<PID>: while the first process
	// executes the node's init, the kernel briefly shows no namespaces for its PID.
	netns *os.File
}

// StartSandbox starts a node: fresh mount, network, UTS and IPC namespaces, its own cgroup subtree, a veth
// on the cluster bridge with address ip, and the node image as its root; then the node's first process runs.
// The sandbox outlives the calling process; Stop ends it.
func StartSandbox(n Network, spec bootSpec, ip netip.Addr, hostLink, cgroupParent string) (*Sandbox, error) {
	// The init stage runs with / as working directory: every host path must be absolute.
	for _, p := range []*string{&spec.Image, &spec.StateDir, &spec.TPMSocket, &spec.StateDisk, &spec.LoadedImages} {
		if *p == "" {
			continue // no state disk
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return nil, err
	}
	specPath := filepath.Join(spec.StateDir, "boot.json")
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(specPath, raw, 0o600); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	console, err := os.OpenFile(filepath.Join(spec.StateDir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyW.Close()
	cmd := exec.Command(exe)
	cmd.Env = []string{nodeInitEnv + "=" + specPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = console, console
	cmd.ExtraFiles = []*os.File{readyR}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Setsid:     true,
	}
	if err := cmd.Start(); err != nil {
		readyR.Close()
		return nil, fmt.Errorf("starting node %s: %w", spec.Name, err)
	}
	readyR.Close()
	sb := &Sandbox{Name: spec.Name, IP: ip, PID: cmd.Process.Pid, HostLink: hostLink, Cgroup: cgroupParent + "/" + spec.Name, StateDir: spec.StateDir, exited: make(chan struct{})}
	// The node is not our child in spirit: it keeps running after the CLI exits. Reap it if it dies while we
	// are still here, so it does not linger as a zombie, and keep how it ended for the errors that follow.
	go func() {
		sb.exitErr = cmd.Wait()
		if sb.exitErr == nil {
			sb.exitErr = errors.New("exit status 0")
		}
		close(sb.exited)
	}()
	fail := func(err error) (*Sandbox, error) {
		sb.Stop()
		return nil, fmt.Errorf("starting node %s: %w", spec.Name, err)
	}
	// The node waits for the ready pipe and executes nothing before: its PID names its namespaces reliably.
	if sb.netns, err = os.Open("/proc/" + strconv.Itoa(sb.PID) + "/ns/net"); err != nil {
		return fail(fmt.Errorf("opening the network namespace: %w", err))
	}
	if err := sb.joinCgroups(); err != nil {
		return fail(err)
	}
	if err := sb.wireNetwork(n); err != nil {
		return fail(err)
	}
	if err := readyW.Close(); err != nil { // lets the node continue its boot
		return fail(err)
	}
	return sb, nil
}

func (sb *Sandbox) joinCgroups() error {
	for _, h := range cgroupHierarchies {
		base := filepath.Join(cgroupRoot, h)
		if _, err := os.Stat(base); err != nil {
			continue
		}
		dir := filepath.Join(base, sb.Cgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		if h == "cpuset" {
			if err := initCpuset(base, sb.Cgroup); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(sb.PID)), 0o644); err != nil {
			return fmt.Errorf("moving node into cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// initCpuset gives every level of a new cpuset cgroup its parent's CPUs and memory nodes: a cpuset cgroup
// accepts tasks only once both are set.
func initCpuset(base, rel string) error {
	parent := base
	for _, part := range strings.Split(rel, "/") {
		cur := filepath.Join(parent, part)
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, _ := os.ReadFile(filepath.Join(cur, f)); len(bytes.TrimSpace(v)) > 0 {
				continue
			}
			pv, err := os.ReadFile(filepath.Join(parent, f))
			if err != nil {
				return fmt.Errorf("initialising cpuset %s: %w", cur, err)
			}
			if err := os.WriteFile(filepath.Join(cur, f), pv, 0o644); err != nil {
				return fmt.Errorf("initialising cpuset %s: %w", cur, err)
			}
		}
		parent = cur
	}
	return nil
}

func (sb *Sandbox) wireNetwork(n Network) error {
	peer := sb.HostLink + "n"
	for _, s := range [][]string{
		{"ip", "link", "add", sb.HostLink, "mtu", strconv.Itoa(MTU), "type", "veth", "peer", "name", peer, "mtu", strconv.Itoa(MTU)},
		{"ip", "link", "set", sb.HostLink, "master", n.Bridge, "up"},
		{"ip", "link", "set", peer, "netns", strconv.Itoa(sb.PID)},
	} {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("wiring network: %w", err)
		}
	}
	for _, s := range [][]string{
		{"link", "set", peer, "name", "eth0"},
		{"addr", "add", netip.PrefixFrom(sb.IP, n.Gateway.Bits()).String(), "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "lo", "up"},
	} {
		if err := sb.IPInNode(s...); err != nil {
			return fmt.Errorf("wiring network: %w", err)
		}
	}
	return nil
}

// IPInNode runs ip with args in the node's network namespace.
func (sb *Sandbox) IPInNode(args ...string) error {
	if sb.netns == nil {
		return fmt.Errorf("node %s: its network namespace is not open", sb.Name)
	}
	// nsenter enters the namespace through the descriptor it inherits as fd 3.
	cmd := exec.Command("nsenter", append([]string{"--net=/proc/self/fd/3", "ip"}, args...)...)
	cmd.ExtraFiles = []*os.File{sb.netns}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s in node %s: %w: %s", strings.Join(args, " "), sb.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Stop kills every process of the node (its whole cgroup subtree), removes its cgroups and its veth. The
// node's namespaces, mounts and loop device go away with its last process.
func (sb *Sandbox) Stop() error {
	sb.stopping.Store(true)
	var errs []error
	if err := killCgroup(filepath.Join(cgroupRoot, "pids", sb.Cgroup)); err != nil {
		errs = append(errs, err)
	}
	// The first process is in the cgroup and dead by now, unless it never got there. Kill it by its PID only
	// while that PID is certainly still its own: a reaped process's PID is soon another process's.
	if sb.exited != nil {
		select {
		case <-sb.exited:
		default:
			if err := syscall.Kill(sb.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, err)
			}
			<-sb.exited
		}
	} else if inCgroup(sb.PID, sb.Cgroup) {
		if err := syscall.Kill(sb.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
		waitGone(sb.PID)
	}
	// The container runtime also creates cgroups in the unified (v2) hierarchy.
	for _, h := range append(slices.Clone(cgroupHierarchies), "unified") {
		if err := removeCgroupTree(filepath.Join(cgroupRoot, h, sb.Cgroup)); err != nil {
			errs = append(errs, err)
		}
	}
	if linkExists(sb.HostLink) {
		if err := run("ip", "link", "del", sb.HostLink); err != nil {
			errs = append(errs, err)
		}
	}
	if sb.netns != nil {
		sb.netns.Close()
	}
	return errors.Join(errs...)
}

// Running reports whether the node's first process is alive.
func (sb *Sandbox) Running() bool {
	if sb.exited != nil {
		select {
		case <-sb.exited:
			return false
		default:
			return true
		}
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(sb.PID) + "/stat")
	return err == nil && !bytes.Contains(raw, []byte(") Z ")) && inCgroup(sb.PID, sb.Cgroup)
}

// Exited returns how the node's first process ended, or nil while it runs (or when this provider did not
// start it).
func (sb *Sandbox) Exited() error {
	if sb.exited == nil {
		return nil
	}
	select {
	case <-sb.exited:
		return sb.exitErr
	default:
		return nil
	}
}

// inCgroup reports whether process pid is in cgroup rel (or below it) of the pids hierarchy: whether a PID
// recorded for a node still belongs to one of the node's processes.
func inCgroup(pid int, rel string) bool {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		// hierarchy-ID:controllers:path
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !slices.Contains(strings.Split(f[1], ","), "pids") {
			continue
		}
		path := strings.TrimPrefix(f[2], "/")
		return path == rel || strings.HasPrefix(path, rel+"/")
	}
	return false
}

// killCgroup kills every process in a cgroup subtree until none is left, and waits until they have been
// reaped too (a killed process leaves its cgroup before its parent, or init, reaps it).
func killCgroup(dir string) error {
	seen := map[int]bool{}
	// A killed process that waits for I/O (a node writing through its encrypted state disk, whose loop device
	// writes back to the host) dies only when that I/O is done: give it time.
	deadline := time.Now().Add(killTimeout)
	for time.Now().Before(deadline) {
		pids := cgroupPIDs(dir)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			seen[p] = true
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pids := cgroupPIDs(dir); len(pids) > 0 {
		return fmt.Errorf("processes of %s survive SIGKILL for %s: %s", dir, killTimeout, describeProcesses(pids))
	}
	for range 500 {
		alive := 0
		for p := range seen {
			if _, err := os.Stat("/proc/" + strconv.Itoa(p)); err == nil {
				alive++
			}
		}
		if alive == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("killed processes of %s were not reaped", dir)
}

func cgroupPIDs(dir string) []int {
	var pids []int
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		raw, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(raw)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupTree removes a cgroup directory and its children, deepest first.
func removeCgroupTree(dir string) error {
	var dirs []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	slices.Reverse(dirs)
	var errs []error
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

func waitGone(pid int) {
	for range 250 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		// A zombie still answers signal 0; it is gone for our purposes once it has exited.
		if raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err != nil || bytes.Contains(raw, []byte(") Z ")) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// killTimeout bounds how long killed node processes may take to die.
const killTimeout = time.Minute

// describeProcesses names processes and their states, for an error message.
func describeProcesses(pids []int) string {
	var parts []string
	for _, p := range pids {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ...
		s := string(stat)
		if i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')'); i >= 0 && j > i && j+2 < len(s) {
			parts = append(parts, fmt.Sprintf("%d %s %c", p, s[i+1:j], s[j+2]))
		}
	}
	return strings.Join(parts, ", ")
}
