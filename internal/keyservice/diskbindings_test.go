package keyservice

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// A disk is bound to the first node that gets its key, for good: across restarts, and a record the key
// service cannot read stops it rather than let it forget the bindings.
func TestDiskBindings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir", "disk-bindings.json")
	b, err := OpenDiskBindings(path)
	if err != nil {
		t.Fatal(err)
	}
	const disk = "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	if err := b.Bind(disk, "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := b.Bind(disk, "node-a"); err != nil {
		t.Fatalf("the owner again: %v", err)
	}
	if err := b.Bind(disk, "node-b"); !errors.Is(err, ErrDiskBound) {
		t.Fatalf("another node: %v, want ErrDiskBound", err)
	}
	for _, bad := range [][2]string{{"0B6C3A2E-6A64-4A6F-9D4E-3F1F3E6E2F11", "node-a"}, {"../x", "node-a"}, {disk[:35] + "2", ""}, {disk[:35] + "2", "Node_A"}} {
		if err := b.Bind(bad[0], bad[1]); err == nil {
			t.Errorf("Bind(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("record file: %v %v", info, err)
	}
	again, err := OpenDiskBindings(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Bind(disk, "node-b"); !errors.Is(err, ErrDiskBound) {
		t.Fatalf("after a restart, another node: %v, want ErrDiskBound", err)
	}
	for name, content := range map[string]string{
		"junk":          "{",
		"unknown field": `{"version":1,"disks":{},"x":1}`,
		"version":       `{"version":2,"disks":{}}`,
		"bad uuid":      `{"version":1,"disks":{"x":"node-a"}}`,
		"bad name":      `{"version":1,"disks":{"` + disk + `":"A B"}}`,
		"trailing":      `{"version":1,"disks":{}} {}`,
		"disk twice":    `{"version":1,"disks":{"` + disk + `":"node-a","` + disk + `":"node-b"}}`,
	} {
		os.WriteFile(path, []byte(content), 0o600)
		if _, err := OpenDiskBindings(path); err == nil {
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
