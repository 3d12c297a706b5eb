package launch

import "testing"

// BenchmarkMeasure measures a 4 MiB firmware image (the size of OVMF builds) with kernel hashes and 2 vCPUs.
func BenchmarkMeasure(b *testing.B) {
	ti := amdSevLayout()
	ti.pages = 1024
	data := ti.build()
	kh := emptyKernel(b, "console=ttyS0")
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		fw, err := ParseFirmware(data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Measure(fw, Launch{VCPUs: 2, VCPUType: "EPYC-v4", GuestFeatures: FeatureSNPActive, KernelHashes: kh}); err != nil {
			b.Fatal(err)
		}
	}
}
