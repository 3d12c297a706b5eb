package diskmapper

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/diskmapper/luks"
)

// A disk that is neither blank nor a state disk is refused and left as it was; a blank one is formatted, and a
// formatted one is found again with the same UUID.
func TestPrepare(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("state disks need root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
	}
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()

	used := filepath.Join(dir, "used.img")
	content := append(make([]byte, 4096), []byte("somebody's data")...)
	if err := os.WriteFile(used, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(used, 64<<20); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(used)
	if _, err := Prepare(ctx, used, log); err == nil || !strings.Contains(err.Error(), "refusing to format") {
		t.Fatalf("Prepare of a disk holding data: %v", err)
	}
	if after, _ := os.ReadFile(used); !bytes.Equal(before, after) {
		t.Fatal("a refused disk was changed")
	}

	if luks.Supported() == nil {
		t.Skip("this kernel has device-mapper: a blank disk becomes LUKS2 (the QEMU test of package luks covers it)")
	}
	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 64<<20); err != nil {
		t.Fatal(err)
	}
	sd, err := Prepare(ctx, blank, log)
	if err != nil {
		t.Fatal(err)
	}
	// Without device-mapper the disk is an ext4 filesystem with encryption.
	if sd.Backend != BackendFscrypt || sd.UUID == "" {
		t.Fatalf("Prepare of a blank disk: %+v", sd)
	}
	again, err := Prepare(ctx, blank, log)
	if err != nil || again.UUID != sd.UUID || again.Backend != BackendFscrypt {
		t.Fatalf("Prepare of the formatted disk: %+v, %v (first: %s)", again, err, sd.UUID)
	}
	if has, err := again.HasState(filepath.Join(dir, "mnt")); err != nil || has {
		t.Fatalf("HasState of a new disk: %v, %v", has, err)
	}
}
