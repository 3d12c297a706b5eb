package kmiptest

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/kms/kmip"
)

func start(t *testing.T) *Server {
	t.Helper()
	t0 := time.Now()
	s, err := Start(t.Context(), t.TempDir())
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pykmip-server accepting mutual TLS %v after Start", time.Since(t0))
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// groupSize counts the live processes in process group pgid.
func groupSize(t *testing.T, pgid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			n++
		}
	}
	return n
}

func TestStopRestartNoLeak(t *testing.T) {
	s := start(t)
	pid := s.proc.cmd.Process.Pid
	if n := groupSize(t, pid); n < 2 {
		t.Logf("pykmip-server runs as %d process(es)", n)
	}
	c, err := kmip.New(s.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kek, err := c.CreateKEK(t.Context(), "kek") // leaves a connection open, which delays pykmip's own shutdown
	if err != nil {
		t.Fatal(err)
	}

	endpoint := s.Endpoint
	if err := s.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if s.Endpoint != endpoint {
		t.Fatalf("restarted on %s, want %s", s.Endpoint, endpoint)
	}
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process group %d of the stopped server still exists (kill: %v)", pid, err)
	}
	if _, err := c.Wrap(t.Context(), kek, []byte("secret"), nil); err != nil {
		t.Fatalf("KEK lost across restart: %v", err)
	}

	pid = s.proc.cmd.Process.Pid
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process group %d of the stopped server still exists (kill: %v)", pid, err)
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	s := start(t)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", s.Endpoint) // take the port
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = s.Restart(t.Context())
	if err == nil {
		t.Fatal("Restart succeeded on a taken port")
	}
	if !strings.Contains(err.Error(), "exited during startup") || !strings.Contains(err.Error(), "failed to bind") {
		t.Fatalf("error lacks the cause from pykmip's log: %v", err)
	}
}
