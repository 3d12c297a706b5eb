package launch

import (
	"encoding/hex"
	"os"
	"testing"
)

func readFirmware(t testing.TB, name string) *Firmware {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := ParseFirmware(data)
	if err != nil {
		t.Fatal(err)
	}
	return fw
}

func emptyKernel(t testing.TB, cmdline string) *KernelHashes {
	t.Helper()
	kh, err := NewKernelHashes(nil, nil, cmdline)
	if err != nil {
		t.Fatal(err)
	}
	return kh
}

// TestPublishedVectors reproduces the SEV-SNP vectors of sev-snp-measure's tests (tests/test_guest.py) for
// the QEMU VMM type. Its kernel and initrd are /dev/null (empty files); "no kernel" is no direct boot.
func TestPublishedVectors(t *testing.T) {
	const amdsev, ovmfx64 = "ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"
	tests := map[string]struct {
		firmware string
		vcpus    int
		features uint64
		kernel   bool
		cmdline  string
		want     string
	}{
		"test_snp_default":                                      {amdsev, 1, 0x21, true, "console=ttyS0 loglevel=7", "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"},
		"test_snp_guest_feature_snp_only":                       {amdsev, 1, 0x1, true, "console=ttyS0 loglevel=7", "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"},
		"test_snp_ovmf_hash_gen_default":                        {amdsev, 1, 0x21, true, "", "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"},
		"test_snp_ovmf_hash_gen_feature_snp_only":               {amdsev, 1, 0x1, true, "", "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"},
		"test_snp_without_kernel_default":                       {amdsev, 1, 0x21, false, "", "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"},
		"test_snp_without_kernel_feature_snp_only":              {amdsev, 1, 0x1, false, "", "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"},
		"test_snp_with_multiple_vcpus_default":                  {amdsev, 4, 0x21, true, "", "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"},
		"test_snp_with_multiple_vcpus_feature_snp_only":         {amdsev, 4, 0x1, true, "", "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"},
		"test_snp_with_ovmfx64_without_default":                 {ovmfx64, 1, 0x21, false, "", "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"},
		"test_snp_with_ovmfx64_without_kernel_feature_snp_only": {ovmfx64, 1, 0x1, false, "", "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := Launch{VCPUs: tc.vcpus, VCPUType: "EPYC-v4", GuestFeatures: tc.features}
			if tc.kernel {
				l.KernelHashes = emptyKernel(t, tc.cmdline)
			}
			got, err := Measure(readFirmware(t, tc.firmware), l)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got[:]) != tc.want {
				t.Errorf("measurement %x, want %s", got, tc.want)
			}
		})
	}
}

// TestPublishedFirmwareDigest reproduces test_snp_ovmf_hash_full_default's digest of the firmware alone.
func TestPublishedFirmwareDigest(t *testing.T) {
	got := FirmwareDigest(readFirmware(t, "ovmf_AmdSev_suffix.bin"))
	const want = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
	if hex.EncodeToString(got[:]) != want {
		t.Errorf("firmware digest %x, want %s", got, want)
	}
}

// TestSignature reproduces test_vcpu_types.py.
func TestSignature(t *testing.T) {
	if got := Signature(14, 1, 2); got != 0x0e12 {
		t.Errorf("family 14: %#x, want 0xe12", got)
	}
	if got := Signature(23, 1, 2); got != 0x800f12 {
		t.Errorf("family 23: %#x, want 0x800f12", got)
	}
	if sig, err := VCPUSignature("EPYC-v4"); err != nil || sig != 0x800f12 {
		t.Errorf("EPYC-v4: %#x, %v", sig, err)
	}
}
