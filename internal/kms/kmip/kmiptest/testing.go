package kmiptest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// StartForTest starts a server for t and stops it when t ends. Without pykmip-server installed the test is
// skipped with a note saying how to install it.
func StartForTest(t testing.TB) *Server {
	t.Helper()
	return StartForTestWithIPs(t)
}

// StartForTestWithIPs is StartForTest with further addresses in the server certificate (see StartWithIPs).
func StartForTestWithIPs(t testing.TB, ips ...net.IP) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := StartWithIPs(ctx, t.TempDir(), ips...)
	if errors.Is(err, ErrNotInstalled) {
		t.Skipf("%v; run scripts/setup.sh", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	return srv
}
