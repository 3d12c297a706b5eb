package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ownerEnv marks every process a run of this package starts (the CLI, and the provider daemons the CLI
// leaves running) with the pid of the test binary. A run killed on its timeout runs no cleanup: its clusters'
// daemons live on, in their own sessions, holding the machine's one node network, and every later run would
// fail on them. The next run finds them by the mark and stops them.
const ownerEnv = "CONSTELLATION_E2E_OWNER"

func TestMain(m *testing.M) {
	os.Setenv(ownerEnv, strconv.Itoa(os.Getpid()))
	os.Exit(m.Run())
}

// stopOrphans stops what earlier, dead runs of this package left running: marked processes whose run has
// ended and whose parent is not one of them (the daemons; they stop their nodes and remove their networks
// themselves). A run that is still alive keeps its processes. Call it holding the provider's test lock.
func stopOrphans(t *testing.T) {
	t.Helper()
	marked := map[int]int{} // pid -> the run's pid
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if owner, ok := strings.CutPrefix(string(kv), ownerEnv+"="); ok {
				if o, err := strconv.Atoi(owner); err == nil {
					marked[pid] = o
				}
			}
		}
	}
	var orphans []int
	for pid, owner := range marked {
		if owner == os.Getpid() || runAlive(owner) {
			continue
		}
		if _, parentMarked := marked[parentPID(pid)]; parentMarked {
			continue
		}
		orphans = append(orphans, pid)
	}
	for _, pid := range orphans {
		cmd, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		t.Logf("stopping pid %d (%s), left running by a killed run of these tests", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
		syscall.Kill(pid, syscall.SIGTERM)
	}
	// A daemon powers its nodes off and removes its network before it exits; give it the time it needs.
	deadline := time.Now().Add(3 * time.Minute)
	for _, pid := range orphans {
		for syscall.Kill(pid, 0) == nil && !zombie(pid) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil && !zombie(pid) {
			t.Logf("pid %d did not stop within 3 minutes; killing it", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// runAlive reports whether pid is a live run of a test binary (not a process that reused the pid).
func runAlive(pid int) bool {
	exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
	return err == nil && strings.HasSuffix(strings.TrimSuffix(exe, " (deleted)"), ".test")
}

// parentPID is pid's parent from /proc/pid/stat (0 when unknown).
func parentPID(pid int) int {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses: parse after the last ')'.
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// zombie reports whether pid has exited and waits for its parent to reap it.
func zombie(pid int) bool {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}

// What a killed run left is stopped; what a live run (this one) runs is not.
func TestStopOrphans(t *testing.T) {
	dead := startMarked(t, "true", "")
	if err := dead.Wait(); err != nil {
		t.Fatal(err)
	}
	orphan := startMarked(t, "sleep", strconv.Itoa(dead.Process.Pid))
	ours := startMarked(t, "sleep", strconv.Itoa(os.Getpid()))
	stopOrphans(t)
	if err := orphan.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("the dead run's process: %v, want it terminated", err)
	}
	if syscall.Kill(ours.Process.Pid, 0) != nil || zombie(ours.Process.Pid) {
		t.Error("this run's own process was stopped")
	}
}

// startMarked starts name (sleep: for an hour) marked as started by the run owner ("" keeps this run's mark).
func startMarked(t *testing.T, name, owner string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name)
	if name == "sleep" {
		cmd.Args = append(cmd.Args, "3600")
	}
	if owner != "" {
		cmd.Env = append(os.Environ(), ownerEnv+"="+owner)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}
