package guest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysBlock writes a /sys/class/block with the given whole disks (name -> read-only flag) and partitions.
func fakeSysBlock(t *testing.T, disks map[string]string, partitions ...string) string {
	t.Helper()
	dir := t.TempDir()
	for name, ro := range disks {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "ro"), []byte(ro+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range partitions {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
		for f, v := range map[string]string{"ro": "0", "partition": "1"} {
			if err := os.WriteFile(filepath.Join(dir, p, f), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// The state disk is the machine's one writable virtio disk: never the read-only boot disk or a partition.
func TestFindStateDisk(t *testing.T) {
	sys := fakeSysBlock(t, map[string]string{"vda": "1", "vdb": "0", "loop0": "0", "dm-0": "0"}, "vda1", "vda2")
	got, err := findStateDisk(context.Background(), sys)
	if err != nil || got != "/dev/vdb" {
		t.Fatalf("findStateDisk = %q, %v; want /dev/vdb", got, err)
	}
	// Two writable disks: the node does not guess which one holds its state.
	sys = fakeSysBlock(t, map[string]string{"vda": "1", "vdb": "0", "vdc": "0"})
	if got, err := findStateDisk(context.Background(), sys); err == nil || !strings.Contains(err.Error(), "2 writable virtio disks") {
		t.Fatalf("two writable disks: findStateDisk = %q, %v; want an error", got, err)
	}
}
