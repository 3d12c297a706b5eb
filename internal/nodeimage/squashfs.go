package nodeimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// MakeSquashfs builds a squashfs image of the tree at root, reproducibly: owner root, time zero, no extended
// attributes, entries in sorted order. The result depends only on the tree's content.
func MakeSquashfs(ctx context.Context, root, image string) error {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		return fmt.Errorf("mksquashfs not found; install the Debian package squashfs-tools (scripts/setup.sh does)")
	}
	if err := os.Remove(image); err != nil && !os.IsNotExist(err) {
		return err
	}
	cmd := exec.CommandContext(ctx, "mksquashfs", root, image,
		"-noappend", "-all-root", "-no-xattrs", "-reproducible",
		"-mkfs-time", "0", "-all-time", "0",
		"-comp", "gzip", "-b", "1M", "-no-progress", "-quiet")
	cmd.Env = withoutEnv(os.Environ(), "SOURCE_DATE_EPOCH") // the flags above set every timestamp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mksquashfs: %w: %s", err, out)
	}
	return nil
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, name+"=") {
			out = append(out, e)
		}
	}
	return out
}
