package launch

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// TestDebianOVMF parses the full-size OVMF images of Debian 12's package ovmf (2022.11), where installed:
// the 2 MiB builds (OvmfPkgX64) declare SEV metadata without a kernel hashes page, so they can launch an
// SEV-SNP guest but cannot measure a directly booted kernel; the 4 MiB build declares no SEV metadata.
func TestDebianOVMF(t *testing.T) {
	read := func(path string) []byte {
		raw, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			t.Skipf("%s not installed (Debian package ovmf)", path)
		}
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	fw, err := ParseFirmware(read("/usr/share/ovmf/OVMF.fd"))
	if err != nil {
		t.Fatal(err)
	}
	if fw.HasSection(SectionSNPKernelHashes) || !fw.HasSection(SectionSNPSecrets) || !fw.HasSection(SectionCPUID) {
		t.Errorf("sections %+v", fw.Sections)
	}
	l := Launch{VCPUs: 2, VCPUType: "EPYC-v4", GuestFeatures: FeatureSNPActive}
	if _, err := Measure(fw, l); err != nil {
		t.Errorf("without kernel hashes: %v", err)
	}
	l.KernelHashes = emptyKernel(t, "")
	if _, err := Measure(fw, l); err == nil || !strings.Contains(err.Error(), "no kernel hashes section") {
		t.Errorf("with kernel hashes: %v", err)
	}
	if _, err := ParseFirmware(read("/usr/share/OVMF/OVMF_CODE_4M.fd")); err == nil || !strings.Contains(err.Error(), "no SEV metadata entry") {
		t.Errorf("OVMF_CODE_4M.fd: %v", err)
	}
}
