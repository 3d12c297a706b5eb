package bootimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// kernelCache returns the Debian cloud kernel and its modules that scripts/qemu-kernel.sh unpacks.
func kernelCache(t *testing.T) (vmlinuz, modules string) {
	t.Helper()
	cache := os.Getenv("CONSTELLATION_QEMU_CACHE")
	if cache == "" {
		cache = "/var/cache/constellation/qemu"
	}
	vmlinuz, modules = filepath.Join(cache, "kernel", "vmlinuz"), filepath.Join(cache, "kernel", "modules")
	if _, err := os.Stat(vmlinuz); err != nil {
		t.Skipf("no kernel at %s: run scripts/qemu-kernel.sh (scripts/setup.sh does)", vmlinuz)
	}
	return vmlinuz, modules
}

// buildTools checks for the tools a disk image build runs (scripts/setup.sh installs them).
func buildTools(t *testing.T) {
	t.Helper()
	for tool, pkg := range map[string]string{"objcopy": "binutils", "mformat": "mtools", "veritysetup": "cryptsetup-bin", "mksquashfs": "squashfs-tools"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian package %s; scripts/setup.sh installs it)", tool, pkg)
		}
	}
	if _, err := os.Stat(DefaultStub); err != nil {
		t.Skipf("no systemd-stub at %s (Debian package systemd-boot-efi; scripts/setup.sh installs it)", DefaultStub)
	}
}

// goBuild builds a static program of this module.
func goBuild(t *testing.T, pkg, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/constellation-dev/constellation/"+pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, msg)
	}
}

// testRoot builds a small root filesystem image with first as /usr/bin/first and the extra files.
func testRoot(t *testing.T, dir, first string, extra map[string]string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"usr/bin", "etc", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"usr/bin/first": string(raw), "etc/os-release": "ID=constellation-test\n"}
	for k, v := range extra {
		files[k] = v
	}
	for name, content := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "root.squashfs")
	cmd := exec.Command("mksquashfs", tree, img, "-noappend", "-all-root", "-no-xattrs", "-reproducible",
		"-mkfs-time", "0", "-all-time", "0", "-quiet", "-no-progress")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	return img
}
