package config

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
)

func validQEMU() *Config {
	return &Config{
		Version:  Version,
		Provider: Provider{QEMU: &QEMU{ControlPlanes: 1, Image: "node-image.raw", ImageDigest: "sha256:" + strings.Repeat("cd", 32)}},
		Attestation: Attestation{Variant: "qemu-vtpm", Measurements: measurements.M{
			0: {Expected: measurements.Digest{9}}, 4: {Expected: measurements.Digest{1}}, 11: {Expected: measurements.Digest{2}}, 12: {}, 13: {},
		}},
	}
}

func TestQEMURoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := validQEMU().Write(path, false); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Provider.QEMU == nil || got.Provider.Mini != nil || got.ImagePath(path) != filepath.Join(filepath.Dir(path), "node-image.raw") {
		t.Fatalf("round trip: %+v", got.Provider)
	}
}

// A QEMU configuration is refused with every problem named: the provider's fields, a variant its machines
// cannot present, and a policy that does not pin the UEFI scheme's image PCRs.
func TestQEMUProblems(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(*Config)
		want   []string
	}{
		"counts":  {func(c *Config) { c.Provider.QEMU.ControlPlanes, c.Provider.QEMU.Workers = 0, 9 }, []string{"provider.qemu.controlPlanes", "provider.qemu.workers"}},
		"image":   {func(c *Config) { c.Provider.QEMU.Image, c.Provider.QEMU.ImageDigest = "", "sha256:x" }, []string{"provider.qemu.image:", "provider.qemu.imageDigest"}},
		"machine": {func(c *Config) { c.Provider.QEMU.MemoryMiB, c.Provider.QEMU.Accelerator = 512, "hvf" }, []string{"provider.qemu.memoryMiB", "provider.qemu.accelerator"}},
		"two":     {func(c *Config) { c.Provider.Mini = valid().Provider.Mini }, []string{"both mini and qemu"}},
		"mini variant": {func(c *Config) {
			c.Attestation = valid().Attestation
		}, []string{"present only qemu-vtpm evidence", "not mini-vtpm"}},
		"UKI PCR missing": {func(c *Config) { delete(c.Attestation.Measurements, 11) }, []string{"attestation.measurements", "PCR 11 missing"}},
		"ESP PCR warn-only": {func(c *Config) {
			c.Attestation.Measurements[12] = measurements.Measurement{WarnOnly: true}
		}, []string{"attestation.measurements", "PCR 12 warn-only"}},
	} {
		t.Run(name, func(t *testing.T) {
			c := validQEMU()
			tc.change(c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
	// A mini configuration whose policy is of the UEFI scheme is refused too: mini nodes have a PCR 8.
	c := valid()
	c.Attestation.Measurements = validQEMU().Attestation.Measurements
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "PCR 8 missing") {
		t.Errorf("mini with a UEFI policy: %v", err)
	}
}

func validQEMUSNP() *Config {
	c := validQEMU()
	c.Provider.QEMU.Confidential = ConfidentialSEVSNP
	c.Provider.QEMU.SNP = &QEMUSNP{Firmware: "OVMF.amdsev.fd", FirmwareDigest: "sha256:" + strings.Repeat("ab", 32), UKI: "node-image.efi", VCPUType: "EPYC-Milan"}
	c.Attestation = Attestation{Variant: "qemu-sev-snp", SNP: &SNP{Policy: snp.Policy{
		Measurements:    []snp.HexBytes{bytes.Repeat([]byte{1}, 48)},
		MinimumTCB:      map[snp.Product]snp.TCB{snp.Milan: {Bootloader: 3, SNP: 8, Microcode: 115}},
		AllowMissingCRL: true,
	}}}
	return c
}

func TestQEMUSNPRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := validQEMUSNP().Write(path, false); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	q := got.Provider.QEMU
	if q.Confidential != ConfidentialSEVSNP || q.SNP == nil || q.SNP.VCPUType != "EPYC-Milan" || q.SNP.Features() != 1 {
		t.Fatalf("round trip: %+v %+v", q, q.SNP)
	}
	if RelativeTo(path, q.SNP.UKI) != filepath.Join(filepath.Dir(path), "node-image.efi") || RelativeTo(path, "/abs") != "/abs" {
		t.Errorf("paths are not resolved relative to the configuration")
	}
}

// A confidential QEMU configuration is refused with every problem named.
func TestQEMUSNPProblems(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(*Config)
		want   []string
	}{
		"unknown technology":               {func(c *Config) { c.Provider.QEMU.Confidential = "tdx" }, []string{`provider.qemu.confidential: "tdx"`}},
		"vTPM variant":                     {func(c *Config) { c.Attestation = validQEMU().Attestation }, []string{"present qemu-sev-snp evidence", "not qemu-vtpm"}},
		"SNP variant without SNP machines": {func(c *Config) { c.Provider.QEMU.Confidential, c.Provider.QEMU.SNP = "", nil }, []string{"present only qemu-vtpm evidence", "not qemu-sev-snp"}},
		"SNP section without SNP":          {func(c *Config) { c.Provider.QEMU.Confidential = "" }, []string{"provider.qemu.snp: set, but"}},
		"no launch inputs":                 {func(c *Config) { c.Provider.QEMU.SNP = nil }, []string{"provider.qemu.snp: confidential: sev-snp needs"}},
		"empty launch inputs": {func(c *Config) { c.Provider.QEMU.SNP = &QEMUSNP{GuestFeatures: 0x20} }, []string{
			"provider.qemu.snp.firmware:", "provider.qemu.snp.firmwareDigest", "provider.qemu.snp.uki", `provider.qemu.snp.vcpuType: vCPU type "" is not known`, "lacks SNPActive",
		}},
		"unknown vCPU type": {func(c *Config) { c.Provider.QEMU.SNP.VCPUType = "host" }, []string{`vCPU type "host" is not known`}},
		"emulated":          {func(c *Config) { c.Provider.QEMU.Accelerator = "tcg" }, []string{"only under KVM"}},
		"no measurement":    {func(c *Config) { c.Attestation.SNP.Measurements = nil }, []string{"attestation.snp"}},
		"fixed HOST_DATA":   {func(c *Config) { c.Attestation.SNP.HostData = make([]byte, 32) }, []string{"attestation.snp.hostData: on qemu-sev-snp, HOST_DATA names each node"}},
	} {
		t.Run(name, func(t *testing.T) {
			c := validQEMUSNP()
			tc.change(c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}
