// Package daemon is what the providers of local clusters (mini, qemu) share about their provider daemon: the
// record it keeps of its cluster in the provider directory (state.json: its process, the cluster's phase, the
// progress and the error of its boot), how the CLI starts a daemon and follows its boot until the cluster
// runs, and how it stops one. The nodes and whatever else a provider records are its own; it embeds [Status]
// in its state, so that the file's fields stay flat.
package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/atomicfile"
)

// Phases of a cluster.
const (
	PhaseBooting  = "booting"
	PhaseRunning  = "running"
	PhaseFailed   = "failed"
	PhaseStopping = "stopping"
)

// Status is the part of a provider's state that every provider keeps.
type Status struct {
	// DaemonPID is the provider daemon's process.
	DaemonPID int `json:"daemonPID"`
	// Phase is one of the Phase constants.
	Phase string `json:"phase"`
	// Error says why the boot failed (phase failed).
	Error string `json:"error,omitempty"`
	// Progress are the boot's steps so far, for the CLI to print.
	Progress []string `json:"progress"`
	// MetadataURL is where the nodes reach the provider's metadata service.
	MetadataURL string `json:"metadataURL"`
}

// StatePath is the state file of a provider directory.
func StatePath(dir string) string { return filepath.Join(dir, "state.json") }

// ReadState reads the state of the cluster in dir into a T; ok is false when there is none.
func ReadState[T any](dir string) (state T, ok bool, err error) {
	raw, err := os.ReadFile(StatePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return state, false, nil
	}
	if err != nil {
		return state, false, err
	}
	if err := json.Unmarshal(raw, &state); err != nil {
		return state, false, fmt.Errorf("reading %s: %w", StatePath(dir), err)
	}
	return state, true, nil
}

// WriteState replaces the state file of dir with state, atomically.
func WriteState(dir string, state any) error {
	raw, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(StatePath(dir), raw, 0o600)
}

// Alive reports whether the daemon of s still runs: its process exists and its command line holds marker (a
// process ID reused by another program does not count).
func (s Status) Alive(marker string) bool {
	if s.DaemonPID <= 0 {
		return false
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(s.DaemonPID) + "/cmdline")
	return err == nil && strings.Contains(string(raw), marker)
}

// Stop asks the daemon of s to tear its cluster down (SIGTERM) and waits until alive (the provider's
// [Status.Alive]) says it is gone; after wait, it kills it, waits for it to be gone and says so.
func Stop(s Status, alive func() bool, wait time.Duration) error {
	if !alive() {
		return nil
	}
	if err := syscall.Kill(s.DaemonPID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	deadline := time.Now().Add(wait)
	for alive() {
		if time.Now().After(deadline) {
			syscall.Kill(s.DaemonPID, syscall.SIGKILL)
			// SIGKILL is delivered asynchronously: the caller cleans up after us, so wait until the process is
			// really gone rather than racing its last moments.
			for gone := time.Now().Add(10 * time.Second); alive() && time.Now().Before(gone); {
				time.Sleep(10 * time.Millisecond)
			}
			if alive() {
				return fmt.Errorf("the provider (pid %d) did not stop within %s and is still there after SIGKILL; stop it by hand before cleaning up", s.DaemonPID, wait)
			}
			return fmt.Errorf("the provider (pid %d) did not stop within %s; killed it, cleaning up", s.DaemonPID, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// Start starts the provider daemon (exe with args) in its own session, its output in dir/provider.log, and
// follows its boot: it prints each progress line to out as the daemon records it (read reads the daemon's
// state; ok false while there is none), and returns once the cluster runs. If the boot fails or the daemon
// exits first, it returns an error that names the log; what is the cluster's name in those messages ("the
// cluster", "the machines").
func Start(out io.Writer, dir, exe string, args []string, what string, read func() (Status, bool)) error {
	logPath := filepath.Join(dir, "provider.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	daemon := exec.Command(exe, args...)
	daemon.Stdout, daemon.Stderr = logFile, logFile
	daemon.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	inheritNothing()
	err = daemon.Start()
	logFile.Close()
	if err != nil {
		return fmt.Errorf("starting the provider: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	fmt.Fprintf(out, "Provider started (pid %d, log %s)\n", daemon.Process.Pid, logPath)
	printed := 0
	for {
		if s, ok := read(); ok {
			for ; printed < len(s.Progress); printed++ {
				fmt.Fprintf(out, "  %s\n", s.Progress[printed])
			}
			switch s.Phase {
			case PhaseRunning:
				return nil
			case PhaseFailed:
				<-exited
				return fmt.Errorf("booting %s failed: %s (see %s)", what, s.Error, logPath)
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the provider stopped while booting %s: %v (see %s)", what, err, logPath)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// inheritNothing marks every descriptor of this process beyond stdin, stdout and stderr close-on-exec. Go
// opens its own files that way, but a descriptor this process inherited open (a lock a wrapper such as
// flock(1) holds for the command it runs) would otherwise pass to the daemon, which outlives the command and
// would hold that lock for as long as the cluster runs.
func inheritNothing() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
