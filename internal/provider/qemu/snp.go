package qemu

import (
	"fmt"
	"io"
	"os"

	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
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
	// UKI is the disk image's unified kernel image, booted directly (-kernel, no -initrd, no -append) with
	// kernel-hashes=on: the firmware refuses a UKI whose digest is not the measured one.
	UKI string
	// VCPUType is QEMU's CPU model (-cpu).
	VCPUType string
	// GuestFeatures are the SEV features KVM enables in the VMSAs.
	GuestFeatures uint64
}

// Measurement computes the launch measurement of a machine launched as l: CPUs vCPUs of type l.VCPUType,
// l.Firmware as -bios, l.UKI as -kernel with kernel-hashes=on, no initrd and no command line (the UKI carries
// both).
func (l SNPLaunch) Measurement() ([launch.DigestSize]byte, error) {
	var none [launch.DigestSize]byte
	raw, err := readBounded(l.Firmware, launch.MaxFirmwareSize)
	if err != nil {
		return none, fmt.Errorf("the SEV-SNP firmware: %w", err)
	}
	fw, err := launch.ParseFirmware(raw)
	if err != nil {
		return none, fmt.Errorf("%s: %w", l.Firmware, err)
	}
	uki, err := os.ReadFile(l.UKI)
	if err != nil {
		return none, fmt.Errorf("the unified kernel image: %w", err)
	}
	kh, err := launch.NewKernelHashes(uki, nil, "")
	if err != nil {
		return none, err
	}
	m, err := launch.Measure(fw, launch.Launch{VCPUs: CPUs, VCPUType: l.VCPUType, GuestFeatures: l.GuestFeatures, KernelHashes: kh})
	if err != nil {
		return none, fmt.Errorf("%s: %w", l.Firmware, err)
	}
	return m, nil
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
