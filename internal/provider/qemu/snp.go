package qemu

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
	"github.com/constellation-dev/constellation/internal/bootimage"
)

// DefaultSNPFirmware is where distributions install OVMF built for SEV-SNP with kernel hashes (edk2
// OvmfPkg/AmdSev/AmdSevX64.dsc). Debian 12's package ovmf does not ship it: its OVMF.fd and OVMF_CODE.fd
// declare SEV metadata but no kernel hashes page, and its OVMF_CODE_4M.fd no SEV metadata at all.
const DefaultSNPFirmware = "/usr/share/OVMF/OVMF.amdsev.fd"

// DefaultSNPVCPUType is the QEMU CPU model of SEV-SNP machines unless the configuration names another: the
// oldest EPYC model, which every SEV-SNP host (Milan and later) can run.
const DefaultSNPVCPUType = "EPYC-v4"

// SNPGuestPolicy is the SEV-SNP guest policy of the machines: ABI 0.0, SMT allowed (bit 16), the reserved
// bit 17 set, no migration agent (bit 18 clear), no debugging (bit 19 clear).
const SNPGuestPolicy = 0x30000

// SNPLaunch is how the provider launches SEV-SNP machines: what their launch measurement covers.
type SNPLaunch struct {
	// Firmware is the OVMF image for SEV-SNP with kernel hashes (-bios).
	Firmware string
	// UKI is the disk image's unified kernel image. The machines boot its kernel (.linux, as -kernel), initrd
	// (.initrd, as -initrd) and command line (.cmdline, as -append) directly with kernel-hashes=on: the
	// firmware refuses any whose digest is not the measured one.
	UKI string
	// VCPUType is QEMU's CPU model (-cpu).
	VCPUType string
	// GuestFeatures are the SEV features KVM enables in the VMSAs.
	GuestFeatures uint64
}

// snpBoot is what QEMU boots an SEV-SNP machine from: the firmware, the files of the UKI's kernel and initrd
// (none if the UKI has no initrd), its command line, and the CPU model.
type snpBoot struct {
	Firmware, Kernel, Initrd, Cmdline, VCPUType string
}

// ukiParts are the kernel, initrd and command line of a UKI.
type ukiParts struct {
	kernel, initrd []byte
	cmdline        string
}

// readUKIParts reads the kernel (.linux, required), initrd (.initrd) and command line (.cmdline, without
// trailing NUL bytes) of a UKI file.
func readUKIParts(path string) (*ukiParts, error) {
	uki, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("the unified kernel image: %w", err)
	}
	var p ukiParts
	kernel, ok, err := bootimage.SectionData(uki, ".linux")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !ok || len(kernel) == 0 {
		return nil, fmt.Errorf("%s: the unified kernel image has no .linux section", path)
	}
	p.kernel = kernel
	if p.initrd, _, err = bootimage.SectionData(uki, ".initrd"); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cmdline, _, err := bootimage.SectionData(uki, ".cmdline")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p.cmdline = string(bytes.TrimRight(cmdline, "\x00"))
	return &p, nil
}

// measure computes the launch measurement of a machine that boots parts with the firmware and CPU model of l
// and CPUs vCPUs.
func (l SNPLaunch) measure(p *ukiParts) ([launch.DigestSize]byte, error) {
	var none [launch.DigestSize]byte
	raw, err := readBounded(l.Firmware, launch.MaxFirmwareSize)
	if err != nil {
		return none, fmt.Errorf("the SEV-SNP firmware: %w", err)
	}
	fw, err := launch.ParseFirmware(raw)
	if err != nil {
		return none, fmt.Errorf("%s: %w", l.Firmware, err)
	}
	kh, err := launch.NewKernelHashes(p.kernel, p.initrd, p.cmdline)
	if err != nil {
		return none, fmt.Errorf("%s: %w", l.UKI, err)
	}
	m, err := launch.Measure(fw, launch.Launch{VCPUs: CPUs, VCPUType: l.VCPUType, GuestFeatures: l.GuestFeatures, KernelHashes: kh})
	if err != nil {
		return none, fmt.Errorf("%s: %w", l.Firmware, err)
	}
	return m, nil
}

// Measurement computes the launch measurement of a machine launched as l: CPUs vCPUs of type l.VCPUType,
// l.Firmware as -bios, and the kernel, initrd and command line of l.UKI with kernel-hashes=on.
func (l SNPLaunch) Measurement() ([launch.DigestSize]byte, error) {
	p, err := readUKIParts(l.UKI)
	if err != nil {
		return [launch.DigestSize]byte{}, err
	}
	return l.measure(p)
}

// prepare writes the UKI's kernel and initrd into dir and returns what QEMU boots and its launch
// measurement, computed from the same bytes.
func (l SNPLaunch) prepare(dir string) (snpBoot, [launch.DigestSize]byte, error) {
	var none [launch.DigestSize]byte
	p, err := readUKIParts(l.UKI)
	if err != nil {
		return snpBoot{}, none, err
	}
	m, err := l.measure(p)
	if err != nil {
		return snpBoot{}, none, err
	}
	b := snpBoot{Firmware: l.Firmware, Kernel: filepath.Join(dir, "snp-kernel"), Cmdline: p.cmdline, VCPUType: l.VCPUType}
	if len(p.initrd) > 0 {
		b.Initrd = filepath.Join(dir, "snp-initrd")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return snpBoot{}, none, err
	}
	if err := os.WriteFile(b.Kernel, p.kernel, 0o600); err != nil {
		return snpBoot{}, none, err
	}
	if b.Initrd != "" {
		if err := os.WriteFile(b.Initrd, p.initrd, 0o600); err != nil {
			return snpBoot{}, none, err
		}
	}
	return b, m, nil
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return raw, nil
}
