package launch

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseSyntheticFirmware(t *testing.T) {
	fw, err := ParseFirmware(amdSevLayout().build())
	if err != nil {
		t.Fatal(err)
	}
	want := amdSevLayout()
	if len(fw.Sections) != len(want.sections) || fw.ResetEIP != want.resetEIP || fw.HashTableGPA != want.hashGPA || fw.HashTableSize != want.hashSize {
		t.Fatalf("parsed %+v", fw)
	}
	for i := range fw.Sections {
		if fw.Sections[i] != want.sections[i] {
			t.Errorf("section %d: %+v, want %+v", i, fw.Sections[i], want.sections[i])
		}
	}
	if fw.GPA() != 1<<32-2*PageSize {
		t.Errorf("GPA %#x", fw.GPA())
	}
}

// TestParseFixtureSections checks the published AmdSev fixture parses into the layout the synthetic builder
// copies.
func TestParseFixtureSections(t *testing.T) {
	fw := readFirmware(t, "ovmf_AmdSev_suffix.bin")
	want := amdSevLayout()
	for i := range want.sections {
		if i >= len(fw.Sections) || fw.Sections[i] != want.sections[i] {
			t.Fatalf("sections %+v, want %+v", fw.Sections, want.sections)
		}
	}
	if fw.ResetEIP != want.resetEIP || fw.HashTableGPA != want.hashGPA || fw.HashTableSize != want.hashSize {
		t.Errorf("reset %#x, hashes %#x/%#x", fw.ResetEIP, fw.HashTableGPA, fw.HashTableSize)
	}
}

func TestParseFirmwareRefuses(t *testing.T) {
	le := binary.LittleEndian
	withSections := func(s ...Section) []byte {
		ti := amdSevLayout()
		ti.sections = s
		return ti.build()
	}
	secmem := func(gpa, size uint32) Section { return Section{gpa, size, SectionSNPSecMem} }
	mutate := func(f func(b []byte)) []byte {
		b := amdSevLayout().build()
		f(b)
		return b
	}
	metaStart := 2*PageSize - 2048
	footer := 2*PageSize - footerOffset - tableEntryHeader
	tests := map[string]struct {
		data []byte
		want string
	}{
		"empty":                         {nil, "empty"},
		"not whole pages":               {make([]byte, PageSize+1), "not a multiple of the page size"},
		"too large":                     {make([]byte, MaxFirmwareSize+PageSize), "limit"},
		"no table":                      {make([]byte, PageSize), "no OVMF table"},
		"no SEV metadata":               {func() []byte { ti := amdSevLayout(); ti.noMeta = true; return ti.build() }(), "no SEV metadata entry"},
		"no reset block":                {func() []byte { ti := amdSevLayout(); ti.noReset = true; return ti.build() }(), "no SEV-ES reset block"},
		"zero reset vector":             {func() []byte { ti := amdSevLayout(); ti.resetEIP = 0; return ti.build() }(), "reset vector is 0"},
		"table beyond image":            {mutate(func(b []byte) { le.PutUint16(b[footer:], 0xffff) }), "claims 65535 bytes"},
		"table shorter than its footer": {mutate(func(b []byte) { le.PutUint16(b[footer:], tableEntryHeader-1) }), "claims 17 bytes"},
		"truncated table": {mutate(func(b []byte) {
			// The footer claims 10 bytes more than its entries: the walk meets a partial entry.
			le.PutUint16(b[footer:], le.Uint16(b[footer:])+10)
		}), "less than an entry"},
		"entry longer than the table": {mutate(func(b []byte) {
			le.PutUint16(b[footer-tableEntryHeader:], 0x4000) // the last entry before the footer: the reset block
		}), "claims 16384 bytes"},
		"entry shorter than its trailer": {mutate(func(b []byte) { le.PutUint16(b[footer-tableEntryHeader:], 3) }), "claims 3 bytes"},
		"duplicate entry": {func() []byte {
			ti := amdSevLayout()
			ti.extra = []testEntry{{guidSEVESReset, le.AppendUint32(nil, 0x1000)}}
			return ti.build()
		}(), "twice"},
		"short reset entry": {func() []byte {
			ti := amdSevLayout()
			ti.noReset = true
			ti.extra = []testEntry{{guidSEVESReset, []byte{1, 2}}}
			return ti.build()
		}(), "want at least 4"},
		"short hashes entry": {func() []byte {
			ti := amdSevLayout()
			ti.hashGPA = 0
			ti.extra = []testEntry{{guidHashTableRV, []byte{1, 2, 3, 4}}}
			return ti.build()
		}(), "want 8"},
		"metadata beyond image": {func() []byte {
			ti := amdSevLayout()
			ti.noMeta = true
			ti.extra = []testEntry{{guidSEVMetadata, le.AppendUint32(nil, 3*PageSize)}}
			return ti.build()
		}(), "bytes before the end"},
		"metadata in the last bytes": {func() []byte {
			ti := amdSevLayout()
			ti.noMeta = true
			ti.extra = []testEntry{{guidSEVMetadata, le.AppendUint32(nil, 8)}}
			return ti.build()
		}(), "bytes before the end"},
		"metadata signature":    {mutate(func(b []byte) { b[metaStart] = 'X' }), "signature"},
		"metadata version":      {mutate(func(b []byte) { le.PutUint32(b[metaStart+8:], 2) }), "version 2"},
		"metadata size":         {mutate(func(b []byte) { le.PutUint32(b[metaStart+4:], 0x1000) }), "claims 4096 bytes"},
		"no sections":           {withSections(), "declares 0 sections"},
		"too many sections":     {mutate(func(b []byte) { le.PutUint32(b[metaStart+12:], 1<<30) }), "declares 1073741824 sections"},
		"unknown section type":  {withSections(Section{0x800000, 0x1000, 7}), "unknown type 0x7"},
		"unaligned section":     {withSections(secmem(0x800800, 0x1000)), "not whole pages"},
		"partial page section":  {withSections(secmem(0x800000, 0x800)), "not whole pages"},
		"empty section":         {withSections(secmem(0x800000, 0)), "not whole pages"},
		"two-page secrets":      {withSections(Section{0x800000, 0x2000, SectionSNPSecrets}), "want one page"},
		"two-page CPUID":        {withSections(Section{0x800000, 0x2000, SectionCPUID}), "want one page"},
		"overlapping sections":  {withSections(secmem(0x800000, 0x3000), Section{0x802000, 0x1000, SectionSNPSecrets}), "overlap"},
		"same page twice":       {withSections(Section{0x800000, 0x1000, SectionCPUID}, Section{0x800000, 0x1000, SectionSNPSecrets}), "overlap"},
		"section over firmware": {withSections(secmem(0xffffe000, 0x1000)), "overlaps the firmware image"},
		"section past 4 GiB":    {withSections(secmem(0xfffff000, 0xfffff000)), "overlaps the firmware image"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			fw, err := ParseFirmware(tc.data)
			if err == nil {
				t.Fatalf("accepted: %+v", fw)
			}
			if !errors.Is(err, ErrFirmware) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one matching ErrFirmware and containing %q", err, tc.want)
			}
		})
	}
}

// TestMetadataPastTheEnd points the metadata entry 16 bytes before the end of the image: the header fits, its
// sections do not.
func TestMetadataPastTheEnd(t *testing.T) {
	le := binary.LittleEndian
	ti := amdSevLayout()
	ti.noMeta = true
	ti.pages = 2
	ti.extra = []testEntry{{guidSEVMetadata, le.AppendUint32(nil, 16)}}
	b := ti.build()
	h := []byte("ASEV")
	h = le.AppendUint32(h, metadataHeaderSize+sectionDescSize)
	h = le.AppendUint32(h, 1)
	h = le.AppendUint32(h, 1)
	copy(b[len(b)-16:], h)
	if _, err := ParseFirmware(b); err == nil || !strings.Contains(err.Error(), "runs past the end") {
		t.Fatalf("error %v, want the metadata running past the end", err)
	}
}

func TestKernelHashesNeedTheFirmwareSection(t *testing.T) {
	kh := emptyKernel(t, "")
	launch := Launch{VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: FeatureSNPActive, KernelHashes: kh}
	// The standard OvmfPkgX64 build declares no kernel hashes section (test_snp_with_ovmfx64_and_kernel_should_fail).
	if _, err := Measure(readFirmware(t, "ovmf_OvmfX64_suffix.bin"), launch); err == nil || !strings.Contains(err.Error(), "no kernel hashes section") {
		t.Errorf("OvmfX64 with kernel hashes: %v", err)
	}
	for name, change := range map[string]func(*testImage){
		"no table entry":       func(ti *testImage) { ti.hashGPA = 0 },
		"table too small":      func(ti *testImage) { ti.hashSize = 100 },
		"table outside":        func(ti *testImage) { ti.hashGPA = 0x80f000 },
		"table across the end": func(ti *testImage) { ti.hashGPA = 0x810fc0 },
		"two sections": func(ti *testImage) {
			ti.sections = append(ti.sections, Section{0x820000, 0x1000, SectionSNPKernelHashes})
		},
		"two-page section": func(ti *testImage) {
			ti.sections[5].Size = 0x2000
			ti.sections[6].GPA = 0x812000
			ti.sections[6].Size = 0xe000
		},
	} {
		t.Run(name, func(t *testing.T) {
			ti := amdSevLayout()
			change(&ti)
			fw, err := ParseFirmware(ti.build())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Measure(fw, launch); !errors.Is(err, ErrFirmware) {
				t.Errorf("measured with kernel hashes: %v", err)
			}
			noKernel := launch
			noKernel.KernelHashes = nil
			if _, err := Measure(fw, noKernel); err != nil {
				t.Errorf("without kernel hashes: %v", err)
			}
		})
	}
}

func TestMeasureRefuses(t *testing.T) {
	fw := readFirmware(t, "ovmf_AmdSev_suffix.bin")
	for name, tc := range map[string]struct {
		l    Launch
		want string
	}{
		"unknown vCPU type": {Launch{VCPUs: 1, VCPUType: "host", GuestFeatures: 1}, `vCPU type "host" is not known`},
		"no vCPU type":      {Launch{VCPUs: 1, GuestFeatures: 1}, `vCPU type "" is not known`},
		"no vCPUs":          {Launch{VCPUs: 0, VCPUType: "EPYC-v4", GuestFeatures: 1}, "0 vCPUs"},
		"too many vCPUs":    {Launch{VCPUs: MaxVCPUs + 1, VCPUType: "EPYC-v4", GuestFeatures: 1}, "vCPUs"},
		"no SNPActive":      {Launch{VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: FeatureDebugSwap}, "SNPActive"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Measure(fw, tc.l); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Measure(nil, Launch{VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: 1}); err == nil {
		t.Error("measured without firmware")
	}
	if _, err := NewKernelHashes(nil, nil, "root=x\x00init=/evil"); err == nil {
		t.Error("accepted a command line with a NUL byte")
	}
}

// TestEveryInputChangesTheMeasurement changes each input of a launch once and checks that the measurement
// changes: every byte of the firmware image (or the image is refused), the kernel, initrd and command line,
// the vCPU count, the vCPU type and the guest features.
func TestEveryInputChangesTheMeasurement(t *testing.T) {
	data, err := os.ReadFile("testdata/ovmf_AmdSev_suffix.bin")
	if err != nil {
		t.Fatal(err)
	}
	kernel, initrd, cmdline := []byte("a kernel"), []byte("an initrd"), "console=ttyS0 root=/dev/vda"
	base := func() Launch {
		kh, err := NewKernelHashes(kernel, initrd, cmdline)
		if err != nil {
			t.Fatal(err)
		}
		return Launch{VCPUs: 2, VCPUType: "EPYC-Milan", GuestFeatures: FeatureSNPActive, KernelHashes: kh}
	}
	measure := func(data []byte, l Launch) ([DigestSize]byte, error) {
		fw, err := ParseFirmware(data)
		if err != nil {
			return [DigestSize]byte{}, err
		}
		return Measure(fw, l)
	}
	want, err := measure(data, base())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[DigestSize]byte]string{want: "the reference launch"}
	check := func(name string, got [DigestSize]byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("%s: measurement %x equals the one of %s", name, got, prev)
		}
		seen[got] = name
	}
	withKernel := func(k, i []byte, c string) Launch {
		l := base()
		l.KernelHashes, err = NewKernelHashes(k, i, c)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for name, l := range map[string]Launch{
		"one byte of the kernel":  withKernel([]byte("A kernel"), initrd, cmdline),
		"one byte of the initrd":  withKernel(kernel, []byte("An initrd"), cmdline),
		"one byte of the cmdline": withKernel(kernel, initrd, "console=ttyS0 root=/dev/vdb"),
		"a longer cmdline":        withKernel(kernel, initrd, cmdline+" init=/bin/sh"),
		"no initrd":               withKernel(kernel, nil, cmdline),
		"no direct boot":          func() Launch { l := base(); l.KernelHashes = nil; return l }(),
		"one vCPU more":           func() Launch { l := base(); l.VCPUs++; return l }(),
		"one vCPU less":           func() Launch { l := base(); l.VCPUs--; return l }(),
		"another vCPU type":       func() Launch { l := base(); l.VCPUType = "EPYC-Genoa"; return l }(),
		"debug swap":              func() Launch { l := base(); l.GuestFeatures |= FeatureDebugSwap; return l }(),
	} {
		got, err := measure(data, l)
		check(name, got, err)
	}
	refused := 0
	for i := range data {
		flipped := append([]byte(nil), data...)
		flipped[i] ^= 0x01
		got, err := measure(flipped, base())
		if err != nil {
			if !errors.Is(err, ErrFirmware) {
				t.Fatalf("byte %d: %v", i, err)
			}
			refused++
			continue
		}
		if got == want {
			t.Fatalf("byte %d of the firmware changed, the measurement did not", i)
		}
	}
	t.Logf("%d of %d one-byte changes of the firmware are refused, the others all change the measurement", refused, len(data))
}
