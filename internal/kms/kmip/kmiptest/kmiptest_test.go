package kmiptest

import (
	"errors"
	"net"
	"strings"
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
	return GroupSize(pgid)
}

func TestStopRestartNoLeak(t *testing.T) {
	s := start(t)
	pid := s.proc.cmd.Process.Pid
	t.Logf("pykmip-server runs as %d processes", groupSize(t, pid))
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
	if n := groupSize(t, pid); n != 0 {
		t.Fatalf("%d processes of the stopped server are still alive", n)
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
	if n := groupSize(t, pid); n != 0 {
		t.Fatalf("%d processes of the stopped server are still alive", n)
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
	t0 := time.Now()
	err = s.Restart(t.Context())
	t.Logf("restart failed after %v: %v", time.Since(t0), err)
	if err == nil {
		t.Fatal("Restart succeeded on a taken port")
	}
	if !strings.Contains(err.Error(), "failed during startup") || !strings.Contains(err.Error(), "failed to bind") {
		t.Fatalf("error lacks the cause from pykmip's log: %v", err)
	}
}
