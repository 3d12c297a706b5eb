package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
)

// addConfidentialFlags adds the flags of a confidential QEMU configuration to config generate.
func addConfidentialFlags(cmd *cobra.Command) {
	cmd.Flags().String("confidential", "", "qemu: launch the machines as confidential VMs: sev-snp (AMD SEV-SNP guests on an SEV-SNP host, attestation variant qemu-sev-snp)")
	cmd.Flags().String("snp-firmware", qemu.DefaultSNPFirmware, "sev-snp: OVMF built for SEV-SNP with kernel hashes (edk2 OvmfPkg/AmdSev), from which the launch measurement is computed")
	cmd.Flags().String("uki", "", "sev-snp: the disk image's unified kernel image, whose kernel, initrd and command line the machines boot directly (default: "+bootimage.UKIFile+" in --image-dir)")
	cmd.Flags().String("vcpu-type", qemu.DefaultSNPVCPUType, "sev-snp: QEMU CPU model of the machines; the launch measurement depends on it")
	cmd.Flags().Uint64("guest-features", config.DefaultSNPGuestFeatures, "sev-snp: the SEV features the host's KVM enables (0x1: SNPActive; 0x21 on host kernels that enable DebugSwap)")
	cmd.Flags().String("snp-policy", "", "sev-snp: file (YAML or JSON) with the platform part of the SEV-SNP policy (minimumTCB per product, minimumFirmware, allow* flags, crlDir, vcekCacheDir); the launch measurement is computed and added")
}

// generateQEMUSNP computes the SEV-SNP part of a QEMU configuration: the launch inputs (the firmware, its
// digest, the image's UKI, vCPU type, guest features) and the SEV-SNP policy, the platform part read from
// --snp-policy with the computed launch measurement. image are the disk image's verified signed
// measurements: the UKI must be the one they describe.
func generateQEMUSNP(cmd *cobra.Command, imageDir string, image measurements.M) (*config.QEMUSNP, *config.SNP, [launch.DigestSize]byte, error) {
	var none [launch.DigestSize]byte
	flag := func(name string) string { v, _ := cmd.Flags().GetString(name); return v }
	features, _ := cmd.Flags().GetUint64("guest-features")
	if features == 0 {
		features = config.DefaultSNPGuestFeatures
	}
	uki := flag("uki")
	if uki == "" {
		uki = filepath.Join(imageDir, bootimage.UKIFile)
	}
	l := qemu.SNPLaunch{Firmware: flag("snp-firmware"), UKI: uki, VCPUType: flag("vcpu-type"), GuestFeatures: features}
	for _, p := range []*string{&l.Firmware, &l.UKI} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, nil, none, badInput("%w", err)
		}
		*p = abs
	}
	policyPath := flag("snp-policy")
	if policyPath == "" {
		return nil, nil, none, badInput("--confidential sev-snp needs --snp-policy: a file with the platform part of the SEV-SNP policy (at least minimumTCB per accepted product, and crlDir or allowMissingCRL); the launch measurement is computed and added to it")
	}
	raw, err := os.ReadFile(policyPath)
	if err != nil {
		return nil, nil, none, badInput("reading the SEV-SNP policy: %w", err)
	}
	var policy config.SNP
	if err := yaml.UnmarshalStrict(raw, &policy); err != nil {
		return nil, nil, none, badInput("%s: %w", policyPath, err)
	}
	if len(policy.Measurements) > 0 {
		return nil, nil, none, badInput("%s lists measurements: the launch measurement is computed from the firmware, the UKI and the machine definition; remove them", policyPath)
	}
	if policy.HostData != nil {
		return nil, nil, none, badInput("%s sets hostData: on qemu-sev-snp, HOST_DATA names each node (the provider launches every machine with its own), so one fixed value would refuse every node but one; remove it", policyPath)
	}
	for _, dir := range []*string{&policy.CRLDir, &policy.VCEKCacheDir} {
		if *dir == "" {
			continue
		}
		abs, err := filepath.Abs(config.RelativeTo(policyPath, *dir))
		if err != nil {
			return nil, nil, none, badInput("%w", err)
		}
		*dir = abs
	}
	if err := checkUKI(l.UKI, image); err != nil {
		return nil, nil, none, err
	}
	fwDigest, err := measuredboot.DigestFile(l.Firmware)
	if err != nil {
		return nil, nil, none, badInput("the SEV-SNP firmware: %w (install OVMF built for SEV-SNP with kernel hashes, edk2 OvmfPkg/AmdSev, or pass --snp-firmware)", err)
	}
	m, err := l.Measurement()
	if err != nil {
		return nil, nil, none, badInput("%w", err)
	}
	policy.Measurements = []snp.HexBytes{bytes.Clone(m[:])}
	return &config.QEMUSNP{
		Firmware: l.Firmware, FirmwareDigest: fmt.Sprintf("sha256:%x", fwDigest), UKI: l.UKI, VCPUType: l.VCPUType, GuestFeatures: features,
	}, &policy, m, nil
}

// checkUKI checks that the UKI file is the one the disk image's signed measurements describe: its PCR 4
// (Authenticode digest) and PCR 11 (sections) values are theirs.
func checkUKI(path string, image measurements.M) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return badInput("reading the unified kernel image: %w (build the image with 'make node-image' or pass --uki)", err)
	}
	got, _, err := bootimage.ExpectedUEFI(raw)
	if err != nil {
		return badInput("%s: %w", path, err)
	}
	for _, idx := range []uint32{bootimage.PCRBootChain, bootimage.PCRKernelImage} {
		want, ok := image[idx]
		if !ok || got[idx].Expected != want.Expected {
			return checkFailed(fmt.Errorf("the unified kernel image %s is not the one of the disk image: its PCR %d is %x, the image's signed measurements say %x", path, idx, got[idx].Expected, want.Expected))
		}
	}
	return nil
}

// snpLaunchOf returns the SEV-SNP launch of a QEMU configuration (nil without one), its paths resolved.
func snpLaunchOf(c *config.Config, confPath string) *qemu.SNPLaunch {
	q := c.Provider.QEMU
	if q == nil || q.Confidential != config.ConfidentialSEVSNP || q.SNP == nil {
		return nil
	}
	return &qemu.SNPLaunch{
		Firmware: config.RelativeTo(confPath, q.SNP.Firmware), UKI: config.RelativeTo(confPath, q.SNP.UKI),
		VCPUType: q.SNP.VCPUType, GuestFeatures: q.SNP.Features(),
	}
}

// verifySNPLaunch re-verifies, before a command uses them, the SEV-SNP launch inputs of a configuration: the
// firmware is the one whose digest the configuration recorded, the UKI is the disk image's (image are its
// verified signed measurements), and the policy accepts exactly the launch measurement they give.
func verifySNPLaunch(c *config.Config, confPath string, image measurements.M) error {
	l := snpLaunchOf(c, confPath)
	if l == nil || c.Attestation.SNP == nil {
		return badInput("%s configures confidential: sev-snp without launch inputs or SEV-SNP policy", confPath)
	}
	digest, err := measuredboot.DigestFile(l.Firmware)
	if err != nil {
		return badInput("the SEV-SNP firmware: %w", err)
	}
	if got := fmt.Sprintf("sha256:%x", digest); got != c.Provider.QEMU.SNP.FirmwareDigest {
		return checkFailed(fmt.Errorf("the SEV-SNP firmware %s has digest %s, the configuration was generated for %s; write it again with 'constellation config generate qemu --confidential sev-snp --force'", l.Firmware, got, c.Provider.QEMU.SNP.FirmwareDigest))
	}
	if err := checkUKI(l.UKI, image); err != nil {
		return err
	}
	m, err := l.Measurement()
	if err != nil {
		return badInput("%w", err)
	}
	if ms := c.Attestation.SNP.Measurements; len(ms) != 1 || !bytes.Equal(ms[0], m[:]) {
		return checkFailed(fmt.Errorf("the SEV-SNP measurements of %s are not the launch measurement %x of its firmware, UKI and machines; write them again with 'constellation config generate qemu --confidential sev-snp --force'", confPath, m))
	}
	return nil
}
