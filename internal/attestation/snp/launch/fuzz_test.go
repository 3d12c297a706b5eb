package launch

import (
	"errors"
	"os"
	"testing"
)

// FuzzParseFirmware checks that ParseFirmware never panics on any image, that everything it accepts obeys
// the rules it promises (page-aligned sections of known types below the firmware, not overlapping), and that
// an accepted image can be measured, with and without kernel hashes, without panicking.
func FuzzParseFirmware(f *testing.F) {
	for _, name := range []string{"ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(amdSevLayout().build())
	noHashes := amdSevLayout()
	noHashes.hashGPA = 0
	f.Add(noHashes.build())
	f.Add(make([]byte, PageSize))
	kh, err := NewKernelHashes([]byte("kernel"), nil, "console=ttyS0")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fw, err := ParseFirmware(data)
		if err != nil {
			if fw != nil || !errors.Is(err, ErrFirmware) {
				t.Fatalf("error %v with firmware %v", err, fw)
			}
			return
		}
		if len(data)%PageSize != 0 || len(fw.Sections) == 0 || fw.ResetEIP == 0 {
			t.Fatalf("accepted %d bytes, %d sections, reset %#x", len(data), len(fw.Sections), fw.ResetEIP)
		}
		for i, s := range fw.Sections {
			if s.Size == 0 || s.GPA%PageSize != 0 || s.Size%PageSize != 0 || s.end() > fw.GPA() {
				t.Fatalf("accepted section %d %+v", i, s)
			}
			for _, o := range fw.Sections[:i] {
				if uint64(s.GPA) < o.end() && uint64(o.GPA) < s.end() {
					t.Fatalf("accepted overlapping sections %+v and %+v", o, s)
				}
			}
		}
		if _, err := Measure(fw, Launch{VCPUs: 2, VCPUType: "EPYC-v4", GuestFeatures: FeatureSNPActive}); err != nil {
			t.Fatalf("accepted firmware cannot be measured: %v", err)
		}
		if _, err := Measure(fw, Launch{VCPUs: 2, VCPUType: "EPYC-v4", GuestFeatures: FeatureSNPActive, KernelHashes: kh}); err != nil && !errors.Is(err, ErrFirmware) {
			t.Fatalf("kernel hashes: %v", err)
		}
	})
}
