package kmiptest

import (
	"context"
	"errors"
	"testing"
	"time"
)

// StartForTest starts a server for t and stops it when t ends. Without pykmip-server installed the test is
// skipped with a note saying how to install it.
func StartForTest(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := Start(ctx, t.TempDir())
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
