package launch

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// PageSize is the size of a guest page, the unit of the launch measurement.
const PageSize = 4096

// fourGiB is where the firmware image ends in the guest's address space.
const fourGiB = 1 << 32

// MaxFirmwareSize bounds a firmware image. OVMF builds are 2 to 4 MiB; QEMU maps -bios images below 4 GiB.
const MaxFirmwareSize = 64 << 20

// ErrFirmware is matched by every error about a firmware image that cannot be measured.
var ErrFirmware = errors.New("firmware image cannot be measured for SEV-SNP")

// guid is a GUID in its binary (mixed-endian, as edk2 stores it) form.
type guid [16]byte

// mustGUID encodes a GUID string in edk2's binary form: the first three fields little-endian, the rest in
// the order of the text.
func mustGUID(s string) guid {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 || len(s) != 36 {
		panic("launch: invalid GUID constant " + s)
	}
	var g guid
	g[0], g[1], g[2], g[3] = h[3], h[2], h[1], h[0]
	g[4], g[5] = h[5], h[4]
	g[6], g[7] = h[7], h[6]
	copy(g[8:], h[8:])
	return g
}

func (g guid) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// GUIDs of OVMF's table at the end of the image (edk2 OvmfPkg/ResetVector).
var (
	guidFooterTable = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	guidHashTableRV = mustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	guidSEVESReset  = mustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	guidSEVMetadata = mustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
)

const (
	// footerOffset is how far before the end of the image the table ends: the last 32 bytes hold the reset
	// vector.
	footerOffset = 32
	// tableEntryHeader is the size of an entry's trailer: a 16-bit length and a GUID.
	tableEntryHeader = 2 + 16
	// metadataHeaderSize is the SEV metadata header: "ASEV", size, version, number of sections.
	metadataHeaderSize = 16
	// sectionDescSize is one section of the SEV metadata: GPA, size, type (32 bits each).
	sectionDescSize = 12
)

// SectionType is the type of a section of the SEV metadata (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
type SectionType uint32

// The section types this package knows. A firmware declaring another type is refused.
const (
	SectionSNPSecMem       SectionType = 1    // memory the firmware's SEC phase uses: zero pages
	SectionSNPSecrets      SectionType = 2    // the secrets page, filled by the secure processor
	SectionCPUID           SectionType = 3    // the CPUID page, filled by the hypervisor and checked by the secure processor
	SectionSVSMCAA         SectionType = 4    // the calling area of an SVSM: zero pages
	SectionSNPKernelHashes SectionType = 0x10 // the page that holds the kernel hashes table
)

func (t SectionType) String() string {
	switch t {
	case SectionSNPSecMem:
		return "SNP SEC memory"
	case SectionSNPSecrets:
		return "SNP secrets"
	case SectionCPUID:
		return "CPUID"
	case SectionSVSMCAA:
		return "SVSM calling area"
	case SectionSNPKernelHashes:
		return "SNP kernel hashes"
	}
	return fmt.Sprintf("unknown type %#x", uint32(t))
}

// Section is a section of the firmware's SEV metadata: guest memory that QEMU hands to the secure processor
// besides the firmware image.
type Section struct {
	GPA  uint32
	Size uint32
	Type SectionType
}

func (s Section) end() uint64 { return uint64(s.GPA) + uint64(s.Size) }

// Firmware is a parsed OVMF image for SEV-SNP.
type Firmware struct {
	data []byte
	// Sections are the sections of the SEV metadata, in the firmware's order (the order of measurement).
	Sections []Section
	// ResetEIP is the SEV-ES reset vector: where the vCPUs other than the first start.
	ResetEIP uint32
	// HashTableGPA and HashTableSize locate the kernel hashes table (zero if the firmware has none).
	HashTableGPA, HashTableSize uint32
}

// GPA is the guest-physical address where the image starts: it ends at 4 GiB.
func (f *Firmware) GPA() uint64 { return fourGiB - uint64(len(f.data)) }

// Size is the size of the image in bytes.
func (f *Firmware) Size() int { return len(f.data) }

// HasSection reports whether the SEV metadata declares a section of type t.
func (f *Firmware) HasSection(t SectionType) bool {
	for _, s := range f.Sections {
		if s.Type == t {
			return true
		}
	}
	return false
}

func firmwareErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFirmware, fmt.Sprintf(format, args...))
}

// ParseFirmware parses an OVMF image built for SEV-SNP. It keeps a reference to data, which the caller must
// not change afterwards. See the package documentation for what it checks.
func ParseFirmware(data []byte) (*Firmware, error) {
	switch {
	case len(data) == 0:
		return nil, firmwareErr("the image is empty")
	case len(data) > MaxFirmwareSize:
		return nil, firmwareErr("the image has %d bytes, more than the limit of %d", len(data), MaxFirmwareSize)
	case len(data)%PageSize != 0:
		return nil, firmwareErr("the image has %d bytes, not a multiple of the page size %d", len(data), PageSize)
	}
	table, err := parseFooterTable(data)
	if err != nil {
		return nil, err
	}
	f := &Firmware{data: data}
	meta, ok := table[guidSEVMetadata]
	if !ok {
		return nil, firmwareErr("the image's table has no SEV metadata entry (%s): it is not an OVMF build for SEV-SNP (use OvmfPkg/AmdSev/AmdSevX64.dsc)", guidSEVMetadata)
	}
	if f.Sections, err = parseMetadata(data, meta); err != nil {
		return nil, err
	}
	reset, ok := table[guidSEVESReset]
	if !ok {
		return nil, firmwareErr("the image's table has no SEV-ES reset block (%s)", guidSEVESReset)
	}
	if len(reset) < 4 {
		return nil, firmwareErr("the SEV-ES reset block entry has %d bytes of data, want at least 4", len(reset))
	}
	f.ResetEIP = binary.LittleEndian.Uint32(reset)
	if f.ResetEIP == 0 {
		return nil, firmwareErr("the SEV-ES reset vector is 0")
	}
	if ht, ok := table[guidHashTableRV]; ok {
		if len(ht) < 8 {
			return nil, firmwareErr("the kernel hashes table entry has %d bytes of data, want 8 (address and size)", len(ht))
		}
		f.HashTableGPA = binary.LittleEndian.Uint32(ht)
		f.HashTableSize = binary.LittleEndian.Uint32(ht[4:])
	}
	if err := f.checkSections(); err != nil {
		return nil, err
	}
	return f, nil
}

// parseFooterTable reads OVMF's GUIDed table. Its last entry, which ends 32 bytes before the end of the image,
// is the footer: its length covers the whole table. Each entry ends with its length (of data, length and
// GUID) and its GUID; entries are read from the end backwards.
func parseFooterTable(data []byte) (map[guid][]byte, error) {
	if len(data) < footerOffset+tableEntryHeader {
		return nil, firmwareErr("the image has %d bytes, too small for OVMF's table", len(data))
	}
	footerStart := len(data) - footerOffset - tableEntryHeader
	size, g := entryTrailer(data[footerStart : footerStart+tableEntryHeader])
	if g != guidFooterTable {
		return nil, firmwareErr("no OVMF table (GUID %s) %d bytes before the end of the image: not an OVMF build with SEV support", guidFooterTable, footerOffset)
	}
	if size < tableEntryHeader || size-tableEntryHeader > footerStart {
		return nil, firmwareErr("OVMF's table claims %d bytes; the image has room for %d", size, footerStart+tableEntryHeader)
	}
	rest := data[footerStart-(size-tableEntryHeader) : footerStart]
	table := map[guid][]byte{}
	for len(rest) > 0 {
		if len(rest) < tableEntryHeader {
			return nil, firmwareErr("OVMF's table has %d bytes left, less than an entry", len(rest))
		}
		n, g := entryTrailer(rest[len(rest)-tableEntryHeader:])
		if n < tableEntryHeader || n > len(rest) {
			return nil, firmwareErr("entry %s of OVMF's table claims %d bytes, %d are left", g, n, len(rest))
		}
		if _, dup := table[g]; dup || g == guidFooterTable {
			return nil, firmwareErr("OVMF's table has entry %s twice", g)
		}
		table[g] = rest[len(rest)-n : len(rest)-tableEntryHeader]
		rest = rest[:len(rest)-n]
	}
	return table, nil
}

func entryTrailer(b []byte) (int, guid) {
	return int(binary.LittleEndian.Uint16(b)), guid(b[2:18])
}

// maxSections bounds the SEV metadata. OVMF declares about half a dozen.
const maxSections = 64

// parseMetadata reads the SEV metadata that the entry points to (its offset from the end of the image).
func parseMetadata(data, entry []byte) ([]Section, error) {
	if len(entry) < 4 {
		return nil, firmwareErr("the SEV metadata entry has %d bytes of data, want at least 4", len(entry))
	}
	offset := uint64(binary.LittleEndian.Uint32(entry))
	if offset < metadataHeaderSize || offset > uint64(len(data)) {
		return nil, firmwareErr("the SEV metadata lies %d bytes before the end of a %d-byte image", offset, len(data))
	}
	start := uint64(len(data)) - offset
	h := data[start : start+metadataHeaderSize]
	if string(h[0:4]) != "ASEV" {
		return nil, firmwareErr("the SEV metadata has signature %q, want \"ASEV\"", h[0:4])
	}
	size := uint64(binary.LittleEndian.Uint32(h[4:]))
	version := binary.LittleEndian.Uint32(h[8:])
	count := uint64(binary.LittleEndian.Uint32(h[12:]))
	if version != 1 {
		return nil, firmwareErr("the SEV metadata has version %d, want 1", version)
	}
	if count == 0 || count > maxSections {
		return nil, firmwareErr("the SEV metadata declares %d sections, want 1 to %d", count, maxSections)
	}
	if size != metadataHeaderSize+count*sectionDescSize {
		return nil, firmwareErr("the SEV metadata claims %d bytes for %d sections, want %d", size, count, metadataHeaderSize+count*sectionDescSize)
	}
	if size > offset {
		return nil, firmwareErr("the SEV metadata (%d bytes) runs past the end of the image", size)
	}
	sections := make([]Section, count)
	for i := range sections {
		d := data[start+metadataHeaderSize+uint64(i)*sectionDescSize:]
		sections[i] = Section{
			GPA:  binary.LittleEndian.Uint32(d),
			Size: binary.LittleEndian.Uint32(d[4:]),
			Type: SectionType(binary.LittleEndian.Uint32(d[8:])),
		}
	}
	return sections, nil
}

// checkSections checks each section, that no two overlap, that none overlaps the firmware image, and that
// the kernel hashes table lies in the kernel hashes section.
func (f *Firmware) checkSections() error {
	for i, s := range f.Sections {
		switch s.Type {
		case SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSVSMCAA, SectionSNPKernelHashes:
		default:
			return firmwareErr("SEV metadata section %d has an unknown type %#x", i, uint32(s.Type))
		}
		if s.Size == 0 || s.GPA%PageSize != 0 || s.Size%PageSize != 0 {
			return firmwareErr("SEV metadata section %d (%s) at %#x, %#x bytes: not whole pages", i, s.Type, s.GPA, s.Size)
		}
		if (s.Type == SectionSNPSecrets || s.Type == SectionCPUID) && s.Size != PageSize {
			return firmwareErr("SEV metadata section %d (%s) has %#x bytes, want one page", i, s.Type, s.Size)
		}
		if s.end() > f.GPA() {
			return firmwareErr("SEV metadata section %d (%s) at %#x-%#x overlaps the firmware image at %#x-%#x", i, s.Type, s.GPA, s.end(), f.GPA(), uint64(fourGiB))
		}
		for j, o := range f.Sections[:i] {
			if uint64(s.GPA) < o.end() && uint64(o.GPA) < s.end() {
				return firmwareErr("SEV metadata sections %d (%s, %#x-%#x) and %d (%s, %#x-%#x) overlap", j, o.Type, o.GPA, o.end(), i, s.Type, s.GPA, s.end())
			}
		}
	}
	return nil
}

// hashesSection returns the kernel hashes section and the offset of the hashes table in it, checking that a
// table of n bytes fits in the area the firmware reserved and in the section's page.
func (f *Firmware) hashesSection(n int) (Section, int, error) {
	var found []Section
	for _, s := range f.Sections {
		if s.Type == SectionSNPKernelHashes {
			found = append(found, s)
		}
	}
	switch {
	case len(found) == 0:
		return Section{}, 0, firmwareErr("kernel hashes are requested, but the SEV metadata has no kernel hashes section: the firmware cannot verify a directly booted kernel (use an OvmfPkg/AmdSev build)")
	case len(found) > 1:
		return Section{}, 0, firmwareErr("the SEV metadata has %d kernel hashes sections, want one", len(found))
	}
	s := found[0]
	if s.Size != PageSize {
		return Section{}, 0, firmwareErr("the kernel hashes section has %#x bytes, want one page", s.Size)
	}
	if f.HashTableGPA == 0 {
		return Section{}, 0, firmwareErr("kernel hashes are requested, but the image's table locates no kernel hashes table (%s)", guidHashTableRV)
	}
	if f.HashTableSize < uint32(n) {
		return Section{}, 0, firmwareErr("the firmware reserves %d bytes for the kernel hashes table, QEMU writes %d", f.HashTableSize, n)
	}
	if f.HashTableGPA < s.GPA || uint64(f.HashTableGPA)+uint64(n) > s.end() {
		return Section{}, 0, firmwareErr("the kernel hashes table at %#x (%d bytes) is not inside the kernel hashes section at %#x-%#x", f.HashTableGPA, n, s.GPA, s.end())
	}
	return s, int(f.HashTableGPA - s.GPA), nil
}
