package bootimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// DefaultStub is Debian's systemd-stub (package systemd-boot-efi).
const DefaultStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// UKI are the parts of a unified kernel image.
type UKI struct {
	Stub    []byte // systemd-stub, a PE/COFF EFI application
	Kernel  []byte // the kernel's EFI-stub image (vmlinuz)
	Initrd  []byte
	Cmdline string
	OSRel   []byte
}

// BuildUKI joins stub, kernel, initramfs, command line and os-release into one PE/COFF image with objcopy,
// each part its own section placed after the stub's, and normalises the result (timestamp, checksum) so that
// it depends on the parts only.
func BuildUKI(ctx context.Context, u UKI) ([]byte, error) {
	if _, err := exec.LookPath("objcopy"); err != nil {
		return nil, fmt.Errorf("objcopy not found; install the Debian package binutils")
	}
	stub, err := parsePE(u.Stub)
	if err != nil {
		return nil, fmt.Errorf("the systemd-stub: %w", err)
	}
	var end uint64
	for _, s := range stub.sections {
		end = max(end, uint64(s.VirtualAddress)+uint64(max(s.VirtualSize, s.SizeOfRawData)))
	}
	dir, err := os.MkdirTemp("", "uki")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	const align = 0x10000
	vma := (end + align) &^ (align - 1)
	args := []string{}
	for _, s := range []struct {
		name string
		data []byte
	}{{".osrel", u.OSRel}, {".cmdline", []byte(u.Cmdline)}, {".linux", u.Kernel}, {".initrd", u.Initrd}} {
		if len(s.data) == 0 {
			return nil, fmt.Errorf("the UKI's %s section is empty", s.name)
		}
		f := filepath.Join(dir, s.name[1:])
		if err := os.WriteFile(f, s.data, 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--add-section", s.name+"="+f, "--change-section-vma", fmt.Sprintf("%s=%#x", s.name, vma))
		vma = (vma + uint64(len(s.data)) + align) &^ (align - 1)
	}
	stubFile, out := filepath.Join(dir, "stub.efi"), filepath.Join(dir, "uki.efi")
	if err := os.WriteFile(stubFile, u.Stub, 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "objcopy", append(args, stubFile, out)...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("objcopy: %w: %s", err, msg)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	if err := normalizePE(img); err != nil {
		return nil, fmt.Errorf("the UKI objcopy wrote: %w", err)
	}
	return img, nil
}
