package launch

import (
	"fmt"
)

// MaxVCPUs bounds the vCPU count of a launch (KVM's limit for an SEV-SNP guest is far lower in practice).
const MaxVCPUs = 512

// Guest features (SEV_FEATURES of the VMSA) that a QEMU/KVM host may enable.
const (
	// FeatureSNPActive is set for every SEV-SNP guest.
	FeatureSNPActive uint64 = 1 << 0
	// FeatureDebugSwap is set by host kernels that swap the debug registers for the guest (Linux 6.6 to
	// 6.9 enabled it by default unless kvm_amd.debug_swap=0).
	FeatureDebugSwap uint64 = 1 << 5
)

// Launch describes how QEMU starts the guest, besides its firmware.
type Launch struct {
	// VCPUs is the number of vCPUs (-smp): one VMSA each.
	VCPUs int
	// VCPUType is the QEMU CPU model (-cpu), one of VCPUTypes.
	VCPUType string
	// GuestFeatures are the VMSA's SEV_FEATURES; they must include FeatureSNPActive.
	GuestFeatures uint64
	// KernelHashes, if set, are the digests of a direct boot with kernel-hashes=on. Nil means no direct
	// boot: the kernel hashes section is measured as zero pages.
	KernelHashes *KernelHashes
}

// Measure computes the launch measurement of a guest that QEMU starts with firmware fw as l describes.
func Measure(fw *Firmware, l Launch) ([DigestSize]byte, error) {
	var c chain
	if fw == nil {
		return c, fmt.Errorf("no firmware")
	}
	if l.VCPUs < 1 || l.VCPUs > MaxVCPUs {
		return c, fmt.Errorf("%d vCPUs: want 1 to %d", l.VCPUs, MaxVCPUs)
	}
	sig, err := VCPUSignature(l.VCPUType)
	if err != nil {
		return c, err
	}
	if l.GuestFeatures&FeatureSNPActive == 0 {
		return c, fmt.Errorf("guest features %#x lack SNPActive (bit 0), which every SEV-SNP guest has", l.GuestFeatures)
	}
	c.normalPages(fw.GPA(), fw.data)
	if err := measureSections(&c, fw, l.KernelHashes); err != nil {
		return c, err
	}
	bsp := vmsaPage(bspResetEIP, sig, l.GuestFeatures)
	ap := vmsaPage(fw.ResetEIP, sig, l.GuestFeatures)
	c.vmsa(bsp)
	for i := 1; i < l.VCPUs; i++ {
		c.vmsa(ap)
	}
	return c, nil
}

// measureSections folds the sections of the SEV metadata in the firmware's order, as QEMU hands them over.
func measureSections(c *chain, fw *Firmware, kh *KernelHashes) error {
	var (
		hashesPage []byte
		hashes     Section
	)
	if kh != nil {
		table := kh.table()
		s, off, err := fw.hashesSection(len(table))
		if err != nil {
			return err
		}
		hashes, hashesPage = s, make([]byte, PageSize)
		copy(hashesPage[off:], table)
	}
	for _, s := range fw.Sections {
		switch s.Type {
		case SectionSNPSecMem, SectionSVSMCAA:
			c.contentless(pageZero, uint64(s.GPA), uint64(s.Size))
		case SectionSNPSecrets:
			c.contentless(pageSecrets, uint64(s.GPA), PageSize)
		case SectionCPUID:
			c.contentless(pageCPUID, uint64(s.GPA), PageSize)
		case SectionSNPKernelHashes:
			if hashesPage != nil && s == hashes {
				c.normalPages(uint64(s.GPA), hashesPage)
			} else {
				c.contentless(pageZero, uint64(s.GPA), uint64(s.Size))
			}
		default:
			return firmwareErr("SEV metadata section of unknown type %#x", uint32(s.Type))
		}
	}
	return nil
}

// FirmwareDigest is the launch digest after the firmware image alone (sev-snp-measure's "OVMF hash"), from
// which a measurement can be computed without the image.
func FirmwareDigest(fw *Firmware) [DigestSize]byte {
	var c chain
	c.normalPages(fw.GPA(), fw.data)
	return c
}
