// Package qemutest serialises the tests that run a QEMU provider: one provider's network (its namespace, its
// veth and address range) exists once per machine, and `go test ./...` runs the packages with such tests in
// parallel.
package qemutest

import (
	"os"
	"syscall"
	"testing"
)

// lockPath is the lock every test that starts a QEMU provider holds while it runs.
const lockPath = "/tmp/constellation-qemu-provider.lock"

// LockProvider waits until no other test runs a QEMU provider on this machine, and holds the lock until the
// test ends.
func LockProvider(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("opening %s: %v", lockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("locking %s: %v", lockPath, err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}
