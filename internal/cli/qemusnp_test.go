package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
)

const snpFixtures = "../attestation/snp/launch/testdata/"

// testUKI builds a UKI with objcopy from Debian's systemd-stub (which also serves as its kernel: any PE).
func testUKI(t *testing.T, cmdline string) []byte {
	t.Helper()
	stub, err := os.ReadFile("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
	if err != nil {
		t.Skipf("systemd-stub not installed (%v); run scripts/setup.sh", err)
	}
	uki, err := bootimage.BuildUKI(context.Background(), bootimage.UKI{Stub: stub, Kernel: stub, Initrd: []byte("initrd"), Cmdline: cmdline, OSRel: []byte("ID=test\n")})
	if err != nil {
		t.Fatal(err)
	}
	return uki
}

// snpImageDir writes a disk image directory whose signed measurements are those of uki, with the UKI, an
// SEV-SNP firmware and a platform policy; it returns the directory and the signature flags.
func snpImageDir(t *testing.T, uki []byte) (dir string, sig []string) {
	t.Helper()
	dir = t.TempDir()
	m, _, err := bootimage.ExpectedUEFI(uki)
	if err != nil {
		t.Fatal(err)
	}
	rawMeas, _ := json.Marshal(m)
	write(t, filepath.Join(dir, bootimage.MeasurementsFile), rawMeas)
	rawDisk, _ := json.Marshal(bootimage.Disk{Digest: uefiDigest, Measurements: m})
	write(t, filepath.Join(dir, bootimage.ManifestFile), rawDisk)
	write(t, filepath.Join(dir, bootimage.UKIFile), uki)
	for _, fw := range []string{"ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"} {
		raw, err := os.ReadFile(snpFixtures + fw)
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, fw), raw)
	}
	write(t, filepath.Join(dir, "snp-policy.yaml"), []byte("minimumTCB:\n  Milan: {bootloader: 3, tee: 0, snp: 8, microcode: 115}\nallowMissingCRL: true\nvcekCacheDir: vcek\n"))
	sig = signImage(t, imageDirWithUEFI(t)) // starts the test log and writes the development root
	signFile(t, testLog.key.Key, dir, bootimage.MeasurementsFile, uefiDigest, attestation.QEMUVTPM.Name)
	return dir, sig
}

// config generate qemu --confidential sev-snp computes the launch measurement of the machines from the
// firmware, the image's UKI, the vCPU count and type and the guest features, and writes it into the SEV-SNP
// policy of a qemu-sev-snp configuration.
func TestGenerateQEMUSNP(t *testing.T) {
	uki := testUKI(t, "console=ttyS0 roothash=ab")
	dir, sig := snpImageDir(t, uki)
	ws := t.TempDir()
	generate := func(extra ...string) (string, string, int) {
		args := []string{"config", "generate", "qemu", "--image-dir", dir, "--workspace", ws, "--force", "--confidential", "sev-snp",
			"--snp-firmware", filepath.Join(dir, "ovmf_AmdSev_suffix.bin"), "--snp-policy", filepath.Join(dir, "snp-policy.yaml"), "--vcpu-type", "EPYC-Milan"}
		return run(append(append(args, sig...), extra...)...)
	}
	out, errOut, code := generate()
	if code != 0 {
		t.Fatalf("config generate: exit %d: %s", code, errOut)
	}
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	// The expected measurement, computed here from the same inputs.
	raw, err := os.ReadFile(snpFixtures + "ovmf_AmdSev_suffix.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw, err := launch.ParseFirmware(raw)
	if err != nil {
		t.Fatal(err)
	}
	// The machines boot the UKI's kernel (here the stub itself), initrd and command line.
	stub, err := os.ReadFile("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
	if err != nil {
		t.Fatal(err)
	}
	kh, err := launch.NewKernelHashes(stub, []byte("initrd"), "console=ttyS0 roothash=ab")
	if err != nil {
		t.Fatal(err)
	}
	want, err := launch.Measure(fw, launch.Launch{VCPUs: qemu.CPUs, VCPUType: "EPYC-Milan", GuestFeatures: 1, KernelHashes: kh})
	if err != nil {
		t.Fatal(err)
	}
	q := c.Provider.QEMU
	if c.Attestation.Variant != attestation.QEMUSEVSNP.Name || q.Confidential != "sev-snp" || q.SNP == nil || c.Attestation.SNP == nil ||
		len(c.Attestation.SNP.Measurements) != 1 || !bytes.Equal(c.Attestation.SNP.Measurements[0], want[:]) || len(c.Attestation.Measurements) != 0 {
		t.Fatalf("configuration %+v %+v, want the measurement %x", c.Attestation, q.SNP, want)
	}
	if c.Attestation.SNP.VCEKCacheDir != filepath.Join(dir, "vcek") {
		t.Errorf("the VCEK cache %q is not resolved relative to the policy file", c.Attestation.SNP.VCEKCacheDir)
	}
	if c.Attestation.SNP.MinimumTCB == nil || !c.Attestation.SNP.AllowMissingCRL {
		t.Errorf("the platform policy was not taken over: %+v", c.Attestation.SNP.Policy)
	}
	if !strings.Contains(out, "expected launch measurement") {
		t.Errorf("output: %s", out)
	}
	// Another vCPU type gives another measurement.
	if _, errOut, code := generate("--vcpu-type", "EPYC-Genoa"); code != 0 {
		t.Fatalf("EPYC-Genoa: %s", errOut)
	}
	if c2, err := config.Load(filepath.Join(ws, config.FileName)); err != nil || bytes.Equal(c2.Attestation.SNP.Measurements[0], want[:]) {
		t.Errorf("the vCPU type did not change the measurement (%v)", err)
	}

	otherUKI := filepath.Join(t.TempDir(), "other.efi")
	write(t, otherUKI, testUKI(t, "console=ttyS0 roothash=cd init=/bin/sh"))
	policyWithMeasurement := filepath.Join(t.TempDir(), "p.yaml")
	write(t, policyWithMeasurement, []byte("measurements: ['"+strings.Repeat("00", 48)+"']\nminimumTCB:\n  Milan: {bootloader: 3, tee: 0, snp: 8, microcode: 115}\nallowMissingCRL: true\n"))
	policyWithHostData := filepath.Join(t.TempDir(), "p.yaml")
	write(t, policyWithHostData, []byte("hostData: '"+strings.Repeat("ab", 32)+"'\nminimumTCB:\n  Milan: {bootloader: 3, tee: 0, snp: 8, microcode: 115}\nallowMissingCRL: true\n"))
	for name, tc := range map[string]struct {
		flags []string
		want  string
	}{
		"hostData in the policy":         {[]string{"--snp-policy", policyWithHostData}, "sets hostData"},
		"firmware without kernel hashes": {[]string{"--snp-firmware", filepath.Join(dir, "ovmf_OvmfX64_suffix.bin")}, "no kernel hashes section"},
		"no firmware file":               {[]string{"--snp-firmware", filepath.Join(t.TempDir(), "missing.fd")}, "the SEV-SNP firmware"},
		"a UKI of another image":         {[]string{"--uki", otherUKI}, "is not the one of the disk image"},
		"unknown vCPU type":              {[]string{"--vcpu-type", "host"}, `vCPU type "host" is not known`},
		"no SNPActive":                   {[]string{"--guest-features", "0x20"}, "SNPActive"},
		"no platform policy":             {[]string{"--snp-policy", ""}, "needs --snp-policy"},
		"measurements in the policy":     {[]string{"--snp-policy", policyWithMeasurement}, "remove them"},
		"unknown technology":             {[]string{"--confidential", "sgx"}, `--confidential "sgx"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := generate(tc.flags...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want an error containing %q:\n%s", code, tc.want, errOut)
			}
		})
	}
}

// apply of an SEV-SNP configuration re-verifies its launch inputs offline: a host that swaps the firmware or
// the UKI in the workspace, or edits the measurement, gets nothing launched; on a host that cannot launch
// SEV-SNP guests, apply refuses before it creates anything.
func TestApplyReverifiesTheSNPLaunch(t *testing.T) {
	uki := testUKI(t, "console=ttyS0 roothash=ab")
	dir, sig := snpImageDir(t, uki)
	ws := t.TempDir()
	firmware := filepath.Join(dir, "ovmf_AmdSev_suffix.bin")
	args := append([]string{"config", "generate", "qemu", "--image-dir", dir, "--workspace", ws, "--confidential", "sev-snp",
		"--snp-firmware", firmware, "--snp-policy", filepath.Join(dir, "snp-policy.yaml")}, sig...)
	if _, errOut, code := run(args...); code != 0 {
		t.Fatalf("config generate: %s", errOut)
	}
	stopTestLog(t)
	confPath := filepath.Join(ws, config.FileName)
	genuineConf, _ := os.ReadFile(confPath)
	genuineFW, _ := os.ReadFile(firmware)
	ukiPath := filepath.Join(dir, bootimage.UKIFile)
	tests := map[string]struct {
		edit    func()
		wantErr string
	}{
		"one byte of the firmware": {func() {
			fw := bytes.Clone(genuineFW)
			fw[10] ^= 1
			write(t, firmware, fw)
		}, "has digest"},
		"another UKI": {func() { write(t, ukiPath, testUKI(t, "console=ttyS0 roothash=ab init=/bin/sh")) }, "is not the one of the disk image"},
		"another measurement": {func() {
			c, err := config.Load(confPath)
			if err != nil {
				t.Fatal(err)
			}
			c.Attestation.SNP.Measurements[0][0] ^= 1
			if err := c.Write(confPath, true); err != nil {
				t.Fatal(err)
			}
		}, "are not the launch measurement"},
		"another vCPU type": {func() {
			c, err := config.Load(confPath)
			if err != nil {
				t.Fatal(err)
			}
			c.Provider.QEMU.SNP.VCPUType = "EPYC-Genoa"
			if err := c.Write(confPath, true); err != nil {
				t.Fatal(err)
			}
		}, "are not the launch measurement"},
	}
	if err := (qemu.SNPHost{}).Check(); err != nil {
		tests["a host without SEV-SNP"] = struct {
			edit    func()
			wantErr string
		}{func() {}, "this host cannot launch SEV-SNP guests"}
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			write(t, confPath, genuineConf)
			write(t, firmware, genuineFW)
			write(t, ukiPath, uki)
			tc.edit()
			_, errOut, code := run(append([]string{"apply", "--workspace", ws}, sig...)...)
			if code == 0 || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, want an error containing %q:\n%s", code, tc.wantErr, errOut)
			}
			for _, f := range []string{qemuDirName, InitSecretFile} {
				if _, err := os.Stat(filepath.Join(ws, f)); !os.IsNotExist(err) {
					t.Errorf("%s was created before the refusal (%v)", f, err)
				}
			}
		})
	}
}

// The provider daemon gets the configured SEV-SNP launch, its paths resolved relative to the workspace, and
// the policy's measurements.
func TestQEMUSpecSNP(t *testing.T) {
	ws := t.TempDir()
	c := &config.Config{Provider: config.Provider{QEMU: &config.QEMU{
		ControlPlanes: 1, Image: "node-image.raw", Confidential: config.ConfidentialSEVSNP,
		SNP: &config.QEMUSNP{Firmware: "fw/OVMF.amdsev.fd", UKI: "/images/node-image.efi", VCPUType: "EPYC-Genoa"},
	}}, Attestation: config.Attestation{Variant: attestation.QEMUSEVSNP.Name, SNP: &config.SNP{}}}
	c.Attestation.SNP.Measurements = append(c.Attestation.SNP.Measurements, bytes.Repeat([]byte{3}, 48))
	cmd := newQEMUCmd().Commands()[0]
	spec, err := qemuSpec(c, ws, cmd)
	if err != nil {
		t.Fatal(err)
	}
	want := qemu.SNPLaunch{Firmware: filepath.Join(ws, "fw/OVMF.amdsev.fd"), UKI: "/images/node-image.efi", VCPUType: "EPYC-Genoa", GuestFeatures: 1}
	if spec.SNP == nil || *spec.SNP != want || len(spec.SNPMeasurements) != 1 || !bytes.Equal(spec.SNPMeasurements[0], bytes.Repeat([]byte{3}, 48)) {
		t.Fatalf("spec %+v %+v, want %+v", spec, spec.SNP, want)
	}
	c.Provider.QEMU.Confidential, c.Provider.QEMU.SNP = "", nil
	if spec, err := qemuSpec(c, ws, cmd); err != nil || spec.SNP != nil {
		t.Errorf("a machine without SEV-SNP: %+v, %v", spec.SNP, err)
	}
}
