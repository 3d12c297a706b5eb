package bootimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// fatEpoch is the time of every file and directory on the ESP: 1980-01-01, the FAT epoch.
const fatEpoch = 315532800

// espVolumeID is the ESP's FAT volume serial number, fixed for reproducibility.
const espVolumeID = "c0ffee11"

// MakeESP writes an EFI system partition image of size bytes to path: a FAT filesystem made with mtools
// (no mount) holding uki as EFI/BOOT/BOOTX64.EFI, the removable-media boot path of x86-64 UEFI firmware. The
// volume ID and every timestamp are fixed, so the image depends on uki and size only.
func MakeESP(ctx context.Context, path string, size int64, uki []byte) error {
	for _, tool := range []string{"mformat", "mmd", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found; install the Debian package mtools (scripts/setup.sh does)", tool)
		}
	}
	if size%(1<<20) != 0 || size < int64(len(uki))+(4<<20) {
		return fmt.Errorf("ESP size %d is not whole MiB above the UKI's %d bytes", size, len(uki))
	}
	dir, err := os.MkdirTemp("", "esp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "BOOTX64.EFI")
	if err := os.WriteFile(src, uki, 0o644); err != nil {
		return err
	}
	epoch := time.Unix(fatEpoch, 0)
	if err := os.Chtimes(src, epoch, epoch); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	env := append(withoutEnv(os.Environ(), "SOURCE_DATE_EPOCH", "MTOOLSRC"), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", fatEpoch), "MTOOLS_SKIP_CHECK=1")
	// 64 heads, 32 sectors per track: 1 MiB cylinders.
	for _, args := range [][]string{
		{"mformat", "-i", path, "-N", espVolumeID, "-v", "ESP", "-T", fmt.Sprint(size / 512), "-h", "64", "-s", "32", "::"},
		{"mmd", "-i", path, "::/EFI", "::/EFI/BOOT"},
		{"mcopy", "-i", path, "-m", src, "::/EFI/BOOT/BOOTX64.EFI"},
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", args[0], err, out)
		}
	}
	return nil
}
