package mini

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Removing a provider directory deletes the nodes' state disks, and never deletes through a mount that is
// still below the directory (a node's root or state disk that outlived it): it refuses instead.
func TestRemoveRefusesMounts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "constellation mini") // a space: mountinfo escapes it
	disk := filepath.Join(dir, "nodes", "worker-0", stateDiskName)
	if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := StateDisks(dir); len(got) != 1 || got[0] != disk {
		t.Fatalf("StateDisks = %v", got)
	}
	if os.Geteuid() == 0 {
		mnt := filepath.Join(dir, "nodes", "worker-0", "sandbox")
		if err := os.MkdirAll(mnt, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
		kept := filepath.Join(mnt, "kept")
		if err := os.WriteFile(kept, nil, 0o600); err != nil {
			unix.Unmount(mnt, 0)
			t.Fatal(err)
		}
		err := Remove(dir)
		_, statErr := os.Stat(kept)
		if uerr := unix.Unmount(mnt, 0); uerr != nil {
			t.Fatal(uerr)
		}
		if err == nil || statErr != nil {
			t.Fatalf("Remove with a mount below: %v; the mounted file: %v", err, statErr)
		}
	}
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the directory is still there: %v", err)
	}
	if err := Remove(dir); err != nil {
		t.Fatalf("removing what is gone: %v", err)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/tab\011x`: "/tab\tx", `/plain`: "/plain", `/end\04`: `/end\04`, `/back\134slash`: `/back\slash`} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
