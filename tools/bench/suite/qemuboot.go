package suite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

func init() {
	register(Suite{Names: []string{"qemu-image-boot"}, Run: runQEMUImageBoot})
}

// runQEMUImageBoot boots a UEFI disk image (the node image's format, with a small root whose first process
// reports and powers off) under QEMU with TCG, OVMF and swtpm, and reports the time from starting QEMU to
// the first process on the verified root.
func runQEMUImageBoot(ctx context.Context) ([]Result, error) {
	if err := bootimage.QEMUPrerequisites(); err != nil {
		return nil, err
	}
	uefi := nodeimage.DefaultUEFIInputs()
	dir, err := os.MkdirTemp("", "bench-qemu-boot-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	uefi.Init = filepath.Join(dir, "node-init")
	tree := filepath.Join(dir, "root")
	first := filepath.Join(tree, "usr/bin/first")
	for _, d := range []string{"usr/bin", "etc", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "etc/os-release"), []byte("ID=constellation-bench\n"), 0o644); err != nil {
		return nil, err
	}
	for pkg, out := range map[string]string{"./cmd/node-init": uefi.Init, "./test/uefiguest": first} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building %s: %w: %s", pkg, err, msg)
		}
	}
	root := filepath.Join(dir, "root.squashfs")
	if err := nodeimage.MakeSquashfs(ctx, tree, root); err != nil {
		return nil, err
	}
	if _, err := bootimage.Build(ctx, bootimage.Inputs{Stub: uefi.Stub, Kernel: uefi.Kernel, Modules: uefi.Modules,
		Init: uefi.Init, Root: root, FirstProcess: []string{"/usr/bin/first"}}, dir); err != nil {
		return nil, err
	}
	b, err := bootimage.BootQEMU(ctx, filepath.Join(dir, bootimage.ImageFile), dir)
	if err != nil {
		return nil, err
	}
	line, ok := b.Find("RESULT first-process")
	if !ok {
		return nil, errors.New("the first process did not run; console:\n" + b.Console)
	}
	return []Result{{"qemu-image-boot", line.At.Seconds(), "s"}}, nil
}
