package bootimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/nodeinit"
)

// Names of the disk image's parts.
const (
	ImageFile        = "node-image.raw"
	MeasurementsFile = "measurements-uefi.json"
	ManifestFile     = "node-image-uefi.json"
	RootPartition    = "constellation-root"
	ESPPartition     = "esp"

	// UKIFile is a copy of the image's UKI (EFI/BOOT/BOOTX64.EFI), for machines that boot it directly
	// (SEV-SNP machines, whose launch measurement covers it).
	UKIFile = "node-image.efi"
)

// DefaultKernelCmdline is the kernel command line before the root's parameters: the serial console, a quiet
// boot, and no reboot on a panic's behalf (the machine halts).
//
// no_timer_check skips the kernel's early check that the legacy timer's interrupt arrives through the IO-APIC
// within a few ticks: on an emulated machine whose host is busy (QEMU without KVM) the check can miss the tick
// and the kernel panics ("IO-APIC + timer doesn't work!"); a virtual machine's timer needs no such check.
const DefaultKernelCmdline = "console=ttyS0 quiet panic=-1 no_timer_check"

// Inputs are the parts of a bootable disk image.
type Inputs struct {
	Stub    string // systemd-stub (DefaultStub)
	Kernel  string // the kernel's EFI-stub image (vmlinuz)
	Modules string // the kernel's module tree (lib/modules/<version>)
	Init    string // the initramfs's init, a static program (cmd/node-init)
	// Root is the root filesystem image (squashfs); it is copied, not changed.
	Root string
	// KernelCmdline precedes the root's parameters on the kernel command line; DefaultKernelCmdline if empty.
	KernelCmdline string
	// FirstProcess is the node's first process and its arguments, run from the verified root.
	FirstProcess []string
	OSRelease    []byte
}

// Disk describes a built disk image.
type Disk struct {
	Digest       string         `json:"digest"` // sha256:<hex> of the raw image
	Size         int64          `json:"size"`
	UKI          string         `json:"uki"` // Authenticode SHA-256 of EFI/BOOT/BOOTX64.EFI
	Cmdline      string         `json:"cmdline"`
	Root         string         `json:"root"` // sha256:<hex> of the root filesystem image
	Events       []Event        `json:"events"`
	Measurements measurements.M `json:"measurements"`
}

func withoutEnv(env []string, names ...string) []string {
	out := env[:0:0]
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		keep := true
		for _, n := range names {
			keep = keep && name != n
		}
		if keep {
			out = append(out, e)
		}
	}
	return out
}

// Cmdline returns the kernel command line of a UKI booting root as verified by v.
func Cmdline(base string, v Verity, firstProcess []string) string {
	if base == "" {
		base = DefaultKernelCmdline
	}
	root := nodeinit.Root{Partition: RootPartition, DataBlocks: v.DataBlocks, HashStart: v.HashStart, RootHash: v.RootHash, Salt: v.Salt}
	return base + " " + root.Param() + " -- " + strings.Join(firstProcess, " ")
}

// BuildUKIFor builds the UKI of a disk image from its inputs and the root's verity parameters.
func BuildUKIFor(ctx context.Context, in Inputs, v Verity) ([]byte, string, error) {
	if len(in.FirstProcess) == 0 {
		return nil, "", fmt.Errorf("no first process for the node image")
	}
	for _, a := range in.FirstProcess {
		if a == "" || strings.ContainsAny(a, " \t\n\"") {
			return nil, "", fmt.Errorf("the first process's argument %q is empty or has blanks or quotes", a)
		}
	}
	stub, err := os.ReadFile(in.Stub)
	if err != nil {
		return nil, "", fmt.Errorf("reading the systemd-stub (Debian package systemd-boot-efi): %w", err)
	}
	kernel, err := os.ReadFile(in.Kernel)
	if err != nil {
		return nil, "", fmt.Errorf("reading the kernel (scripts/qemu-kernel.sh unpacks it): %w", err)
	}
	init, err := os.ReadFile(in.Init)
	if err != nil {
		return nil, "", fmt.Errorf("reading the initramfs's init: %w", err)
	}
	cmdline := Cmdline(in.KernelCmdline, v, in.FirstProcess)
	if len(cmdline) > nodeinit.MaxCmdline {
		return nil, "", fmt.Errorf("the kernel command line is %d bytes, more than %d", len(cmdline), nodeinit.MaxCmdline)
	}
	initrd, err := Initramfs(init, cmdline, in.Modules, InitrdModules)
	if err != nil {
		return nil, "", fmt.Errorf("the initramfs: %w", err)
	}
	osrel := in.OSRelease
	if len(osrel) == 0 {
		osrel = []byte("NAME=\"Constellation node\"\nID=constellation\n")
	}
	uki, err := BuildUKI(ctx, UKI{Stub: stub, Kernel: kernel, Initrd: initrd, Cmdline: cmdline, OSRel: osrel})
	return uki, cmdline, err
}

// Build writes the bootable raw disk image (GPT: an EFI system partition with the UKI as
// EFI/BOOT/BOOTX64.EFI, and the root filesystem with its dm-verity hash tree) to outDir/node-image.raw, its
// expected measurements to outDir/measurements-uefi.json, its description to outDir/node-image-uefi.json and a
// copy of the UKI to outDir/node-image.efi.
// The image depends on the inputs' content only.
func Build(ctx context.Context, in Inputs, outDir string) (*Disk, error) {
	rootPart := filepath.Join(outDir, "root-verity.part")
	espPart := filepath.Join(outDir, "esp.part")
	defer os.Remove(rootPart)
	defer os.Remove(espPart)
	rootDigest, err := copyFile(in.Root, rootPart)
	if err != nil {
		return nil, fmt.Errorf("copying the root filesystem: %w", err)
	}
	v, err := AppendVerity(ctx, rootPart)
	if err != nil {
		return nil, err
	}
	uki, cmdline, err := BuildUKIFor(ctx, in, v)
	if err != nil {
		return nil, err
	}
	espSize := (int64(len(uki))*11/10 + (4 << 20) + partitionAlign - 1) / partitionAlign * partitionAlign
	if err := MakeESP(ctx, espPart, espSize, uki); err != nil {
		return nil, err
	}
	d := &Disk{Cmdline: cmdline, Root: fmt.Sprintf("sha256:%x", rootDigest)}
	if d.Measurements, d.Events, err = ExpectedUEFI(uki); err != nil {
		return nil, err
	}
	ukiDigest, _ := AuthenticodeSHA256(uki)
	d.UKI = fmt.Sprintf("%x", ukiDigest)
	if err := os.WriteFile(filepath.Join(outDir, UKIFile), uki, 0o644); err != nil {
		return nil, err
	}
	image := filepath.Join(outDir, ImageFile)
	digest, size, err := writeDisk(image, espPart, rootPart)
	if err != nil {
		return nil, err
	}
	d.Digest, d.Size = fmt.Sprintf("sha256:%x", digest), size
	if err := writeJSON(filepath.Join(outDir, MeasurementsFile), d.Measurements); err != nil {
		return nil, err
	}
	return d, writeJSON(filepath.Join(outDir, ManifestFile), d)
}

// writeDisk writes the GPT disk image of the two partition images and returns its SHA-256 and size.
func writeDisk(image, esp, root string) ([32]byte, int64, error) {
	var digest [32]byte
	espDigest, espSize, err := digestFile(esp)
	if err != nil {
		return digest, 0, err
	}
	rootDigest, rootSize, err := digestFile(root)
	if err != nil {
		return digest, 0, err
	}
	alignUp := func(n int64) int64 { return (n + partitionAlign - 1) / partitionAlign * partitionAlign }
	espStart := int64(partitionAlign)
	rootStart := espStart + alignUp(espSize)
	total := rootStart + alignUp(rootSize) + partitionAlign
	parts := []GPTPartition{
		{Type: TypeESP, GUID: DerivedGUID("esp", espDigest), Name: ESPPartition,
			First: uint64(espStart / sectorSize), Sectors: uint64(alignUp(espSize) / sectorSize)},
		{Type: TypeRootX86_64, GUID: DerivedGUID("root", rootDigest), Name: RootPartition,
			First: uint64(rootStart / sectorSize), Sectors: uint64(alignUp(rootSize) / sectorSize), Attributes: AttrReadOnly},
	}
	primary, backup, err := gptTables(DerivedGUID("disk", espDigest, rootDigest), uint64(total/sectorSize), parts)
	if err != nil {
		return digest, 0, err
	}
	f, err := os.Create(image)
	if err != nil {
		return digest, 0, err
	}
	defer f.Close()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	var written int64
	put := func(r io.Reader, upTo int64) error {
		n, err := io.Copy(w, r)
		written += n
		if err != nil {
			return err
		}
		if written > upTo {
			return fmt.Errorf("disk image layout: %d bytes written past offset %d", written, upTo)
		}
		n, err = io.Copy(w, io.LimitReader(zeros{}, upTo-written))
		written += n
		return err
	}
	steps := []struct {
		src  func() (io.ReadCloser, error)
		upTo int64
	}{
		{func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(primary)), nil }, espStart},
		{func() (io.ReadCloser, error) { return os.Open(esp) }, rootStart},
		{func() (io.ReadCloser, error) { return os.Open(root) }, total - int64(len(backup))},
		{func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(backup)), nil }, total},
	}
	for _, s := range steps {
		r, err := s.src()
		if err != nil {
			return digest, 0, err
		}
		err = put(r, s.upTo)
		r.Close()
		if err != nil {
			return digest, 0, fmt.Errorf("writing %s: %w", image, err)
		}
	}
	h.Sum(digest[:0])
	return digest, total, f.Close()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func digestFile(path string) ([32]byte, int64, error) {
	var d [32]byte
	f, err := os.Open(path)
	if err != nil {
		return d, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	h.Sum(d[:0])
	return d, n, err
}

func copyFile(src, dst string) ([32]byte, error) {
	var d [32]byte
	in, err := os.Open(src)
	if err != nil {
		return d, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return d, err
	}
	defer out.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		return d, err
	}
	h.Sum(d[:0])
	return d, out.Close()
}

func writeJSON(path string, v any) error {
	raw, err := jsonMarshalIndent(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}
