package keyservice

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
)

// A disk is bound to the first node that gets its key, for good, in the record every key service shares: a
// key service that did not make a binding (another one, or itself after a restart) refuses the disk to any
// other node all the same.
func TestAPIDiskBindings(t *testing.T) {
	ctx := context.Background()
	api := kubeapitest.New(t, DiskBindingsNamespace)
	first, second := NewAPIDiskBindings(api.Client(t)), NewAPIDiskBindings(api.Client(t))
	const disk = "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	if err := first.Bind(ctx, disk, "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := first.Bind(ctx, disk, "node-a"); err != nil {
		t.Fatalf("the owner again: %v", err)
	}
	if err := first.Bind(ctx, disk, "node-b"); !errors.Is(err, ErrDiskBound) {
		t.Fatalf("another node: %v, want ErrDiskBound", err)
	}
	// The attack on a key service that never saw the binding.
	if err := second.Bind(ctx, disk, "node-b"); !errors.Is(err, ErrDiskBound) {
		t.Fatalf("another node at a second key service: %v, want ErrDiskBound", err)
	}
	if err := second.Bind(ctx, disk, "node-a"); err != nil {
		t.Fatalf("the owner at a second key service: %v", err)
	}
	cm, ok := api.ConfigMap(t, DiskBindingsNamespace, "disk-"+disk)
	if !ok || !cm.Immutable || len(cm.Data) != 1 || cm.Data["node"] != "node-a" {
		t.Fatalf("recorded binding %+v (%v); want one immutable ConfigMap naming node-a", cm, ok)
	}
	for _, bad := range [][2]string{{"0B6C3A2E-6A64-4A6F-9D4E-3F1F3E6E2F11", "node-a"}, {"../x", "node-a"}, {disk[:35] + "2", ""}, {disk[:35] + "2", "Node_A"}} {
		if err := first.Bind(ctx, bad[0], bad[1]); err == nil {
			t.Errorf("Bind(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if n := api.Creates(t); n != 1 {
		t.Fatalf("%d bindings created, want 1", n)
	}

	// A binding object that is not what a key service writes (an administrator's edit) refuses the disk to
	// everyone rather than counting as no binding.
	const edited = "5d0e7c51-2b1e-4f3a-8c7d-9a0b1c2d3e4f"
	api.Put(t, DiskBindingsNamespace, "disk-"+edited, map[string]string{"node": "node-a", "other": "x"})
	if err := NewAPIDiskBindings(api.Client(t)).Bind(ctx, edited, "node-a"); err == nil || errors.Is(err, ErrDiskBound) || !strings.Contains(err.Error(), "not what a key service writes") {
		t.Fatalf("a malformed binding: %v", err)
	}
}

// Key services that bind the same new disk at once, each for another node: exactly one binding wins, and
// every key service agrees on it.
func TestAPIDiskBindingsFirstWriterWins(t *testing.T) {
	ctx := context.Background()
	api := kubeapitest.New(t, DiskBindingsNamespace)
	const disk = "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	nodes := []string{"node-a", "node-b", "node-c", "node-d", "node-e", "node-f", "node-g", "node-h"}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = NewAPIDiskBindings(api.Client(t)).Bind(ctx, disk, n) })
	}
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil && winner == "":
			winner = nodes[i]
		case err == nil:
			t.Fatalf("both %s and %s got the disk", winner, nodes[i])
		case !errors.Is(err, ErrDiskBound):
			t.Fatalf("%s: %v", nodes[i], err)
		}
	}
	if owner, ok, err := NewAPIDiskBindings(api.Client(t)).Owner(ctx, disk); err != nil || !ok || owner != winner {
		t.Fatalf("owner %q %v %v, want %q", owner, ok, err, winner)
	}
}

// The record of a key service before the shared one moves into it, once; a file that disagrees with the
// shared record stops the key service instead of deciding for it.
func TestMigrateDiskBindingsFile(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	const diskA, diskB = "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", "5d0e7c51-2b1e-4f3a-8c7d-9a0b1c2d3e4f"
	api := kubeapitest.New(t, DiskBindingsNamespace)
	b := NewAPIDiskBindings(api.Client(t))
	path := filepath.Join(t.TempDir(), "disk-bindings.json")
	if err := MigrateDiskBindingsFile(ctx, path, b, log); err != nil {
		t.Fatalf("no file: %v", err)
	}
	os.WriteFile(path, []byte(`{"version":1,"disks":{"`+diskA+`":"control-plane-0","`+diskB+`":"worker-0"}}`), 0o600)
	if err := MigrateDiskBindingsFile(ctx, path, b, log); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".migrated"); err != nil {
		t.Fatalf("the migrated file: %v", err)
	}
	if err := NewAPIDiskBindings(api.Client(t)).Bind(ctx, diskB, "worker-1"); !errors.Is(err, ErrDiskBound) {
		t.Fatalf("a migrated binding does not hold: %v", err)
	}
	os.WriteFile(path, []byte(`{"version":1,"disks":{"`+diskB+`":"worker-1"}}`), 0o600)
	if err := MigrateDiskBindingsFile(ctx, path, b, log); !errors.Is(err, ErrDiskBound) {
		t.Fatalf("a file that disagrees: %v, want ErrDiskBound", err)
	}
	for name, content := range map[string]string{
		"junk":          "{",
		"unknown field": `{"version":1,"disks":{},"x":1}`,
		"version":       `{"version":2,"disks":{}}`,
		"bad uuid":      `{"version":1,"disks":{"x":"node-a"}}`,
		"bad name":      `{"version":1,"disks":{"` + diskA + `":"A B"}}`,
		"trailing":      `{"version":1,"disks":{}} {}`,
		"disk twice":    `{"version":1,"disks":{"` + diskA + `":"node-a","` + diskA + `":"node-b"}}`,
	} {
		os.WriteFile(path, []byte(content), 0o600)
		if err := MigrateDiskBindingsFile(ctx, path, b, log); err == nil {
			t.Errorf("%s: record accepted", name)
		}
	}
}

func FuzzParseDiskBindings(f *testing.F) {
	f.Add([]byte(`{"version":1,"disks":{"0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11":"node-a"}}`))
	f.Add([]byte(`{"version":1,"disks":{}}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"disks":{"x":"y"}} `))
	f.Fuzz(func(t *testing.T, raw []byte) {
		disks, err := ParseDiskBindings(raw)
		if err != nil {
			return
		}
		for uuid, node := range disks {
			if !diskUUID.MatchString(uuid) || !nodeName.MatchString(node) {
				t.Fatalf("accepted binding %q -> %q", uuid, node)
			}
		}
	})
}
