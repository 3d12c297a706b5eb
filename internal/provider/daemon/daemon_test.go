package daemon

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type testState struct {
	Status
	Nodes []string `json:"nodes"`
}

func TestStateRoundTripKeepsTheFileFlat(t *testing.T) {
	dir := t.TempDir()
	if _, ok, err := ReadState[testState](dir); ok || err != nil {
		t.Fatalf("ReadState of an empty directory: ok %v, err %v", ok, err)
	}
	want := testState{Status: Status{DaemonPID: 7, Phase: PhaseRunning, Progress: []string{"a"}, MetadataURL: "http://10.0.0.1"}, Nodes: []string{"n"}}
	if err := WriteState(dir, want); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(StatePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`"phase": "running"`)) || bytes.Contains(raw, []byte(`"Status"`)) {
		t.Fatalf("state file is not flat:\n%s", raw)
	}
	got, ok, err := ReadState[testState](dir)
	if err != nil || !ok || got.Phase != PhaseRunning || got.DaemonPID != 7 || len(got.Nodes) != 1 {
		t.Fatalf("ReadState: %+v, %v, %v", got, ok, err)
	}
	if err := os.WriteFile(StatePath(dir), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadState[testState](dir); err == nil || !strings.Contains(err.Error(), StatePath(dir)) {
		t.Fatalf("a broken state file: %v, want an error naming it", err)
	}
}

func TestAliveNeedsTheMarker(t *testing.T) {
	s := Status{DaemonPID: os.Getpid()}
	if !s.Alive("daemon.test") {
		t.Error("this test process does not count as alive with its own name as marker")
	}
	if s.Alive("no-such-provider") {
		t.Error("a process whose command line lacks the marker counts as the provider (a reused process ID)")
	}
	if (Status{}).Alive("") {
		t.Error("a state without a process counts as alive")
	}
}

// script is a provider daemon: a shell that writes the states in order.
func script(dir string, states ...string) []string {
	var b strings.Builder
	for _, s := range states {
		b.WriteString("printf '%s' '" + s + "' > " + StatePath(dir) + ".new && mv " + StatePath(dir) + ".new " + StatePath(dir) + "; sleep 0.3; ")
	}
	return []string{"-c", b.String() + "sleep 0.5"}
}

func TestStartFollowsTheBoot(t *testing.T) {
	dir := t.TempDir()
	read := func() (Status, bool) {
		s, ok, _ := ReadState[testState](dir)
		return s.Status, ok
	}
	var out bytes.Buffer
	err := Start(&out, dir, "/bin/sh", script(dir,
		`{"phase":"booting","progress":["first"]}`,
		`{"phase":"running","progress":["first","second"]}`), "the cluster", read)
	if err != nil {
		t.Fatalf("Start: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "  first\n  second\n") {
		t.Errorf("progress not printed in order:\n%s", out.String())
	}

	dir = t.TempDir()
	out.Reset()
	err = Start(&out, dir, "/bin/sh", script(dir, `{"phase":"failed","error":"no bridge","progress":["first"]}`), "the cluster", read)
	if err == nil || !strings.Contains(err.Error(), "no bridge") || !strings.Contains(err.Error(), "provider.log") {
		t.Fatalf("a failed boot: %v, want its error and the log", err)
	}

	dir = t.TempDir()
	err = Start(&out, dir, "/bin/sh", []string{"-c", "exit 3"}, "the machines", read)
	if err == nil || !strings.Contains(err.Error(), "stopped while booting the machines") {
		t.Fatalf("a daemon that exits: %v", err)
	}
}

func TestStopWaitsAndKills(t *testing.T) {
	// start runs script in a shell and returns once the shell has run it up to "echo ready".
	start := func(script string) (Status, func() bool) {
		cmd := exec.Command("sh", "-c", script)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		var done atomic.Bool
		go func() { cmd.Wait(); done.Store(true) }()
		t.Cleanup(func() { cmd.Process.Kill() })
		return Status{DaemonPID: cmd.Process.Pid}, func() bool { return !done.Load() }
	}
	s, alive := start("echo ready; exec sleep 60")
	if err := Stop(s, alive, time.Minute); err != nil || alive() {
		t.Fatalf("stopping a daemon that ends at SIGTERM: %v (alive %v)", err, alive())
	}
	s, alive = start("trap '' TERM; echo ready; sleep 60")
	if err := Stop(s, alive, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed it") || alive() {
		t.Fatalf("stopping a daemon that ignores SIGTERM: %v (alive %v), want it killed and said so", err, alive())
	}
	if err := Stop(Status{DaemonPID: 1 << 30}, func() bool { return false }, time.Second); err != nil {
		t.Fatalf("stopping a daemon that is gone: %v", err)
	}
}

// A descriptor the command inherited open (flock(1)'s lock on a file, for one) must not pass to the daemon:
// the daemon outlives the command and would hold the lock for the cluster's lifetime.
func TestStartPassesNoInheritedDescriptor(t *testing.T) {
	dir := t.TempDir()
	inherited, err := syscall.Open(filepath.Join(dir, "lock"), syscall.O_CREAT|syscall.O_RDWR, 0o600) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(inherited)
	fds := filepath.Join(dir, "fds")
	script := "ls /proc/self/fd > " + fds + "; printf '%s' '{\"phase\":\"running\"}' > " + StatePath(dir) + "; sleep 0.5"
	read := func() (Status, bool) {
		s, ok, _ := ReadState[testState](dir)
		return s.Status, ok
	}
	if err := Start(io.Discard, dir, "/bin/sh", []string{"-c", script}, "the cluster", read); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(fds)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range strings.Fields(string(got)) {
		if fd == strconv.Itoa(inherited) {
			t.Errorf("the daemon holds the inherited descriptor %d (its descriptors: %s)", inherited, strings.Join(strings.Fields(string(got)), " "))
		}
	}
}
