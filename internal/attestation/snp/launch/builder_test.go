package launch

import (
	"encoding/binary"
	"slices"
)

// testImage describes a synthetic OVMF image: a few pages of filler and OVMF's table at the end, with the SEV
// metadata inside the image.
type testImage struct {
	pages    int
	sections []Section
	resetEIP uint32
	noReset  bool
	hashGPA  uint32
	hashSize uint32
	noMeta   bool
	// extra entries, placed before the standard ones: GUID and data.
	extra []testEntry
}

type testEntry struct {
	g    guid
	data []byte
}

// amdSevLayout is the layout of the AmdSev build (the published fixture's sections).
func amdSevLayout() testImage {
	return testImage{
		pages: 2,
		sections: []Section{
			{0x800000, 0x9000, SectionSNPSecMem}, {0x80a000, 0x3000, SectionSNPSecMem},
			{0x80d000, 0x1000, SectionSNPSecrets}, {0x80e000, 0x1000, SectionCPUID},
			{0x80f000, 0x1000, SectionSVSMCAA}, {0x810000, 0x1000, SectionSNPKernelHashes},
			{0x811000, 0xf000, SectionSNPSecMem},
		},
		resetEIP: 0x80b004, hashGPA: 0x810c00, hashSize: 0x400,
	}
}

// build lays the image out: filler, then the SEV metadata at a fixed place in the last page, then the table
// ending 32 bytes before the end.
func (ti testImage) build() []byte {
	img := make([]byte, ti.pages*PageSize)
	for i := range img {
		img[i] = byte(i * 7)
	}
	le := binary.LittleEndian
	metaStart := len(img) - 2048
	meta := []byte("ASEV")
	meta = le.AppendUint32(meta, uint32(metadataHeaderSize+len(ti.sections)*sectionDescSize))
	meta = le.AppendUint32(meta, 1)
	meta = le.AppendUint32(meta, uint32(len(ti.sections)))
	for _, s := range ti.sections {
		meta = le.AppendUint32(meta, s.GPA)
		meta = le.AppendUint32(meta, s.Size)
		meta = le.AppendUint32(meta, uint32(s.Type))
	}
	copy(img[metaStart:], meta)

	entries := slices.Clone(ti.extra)
	if !ti.noMeta {
		entries = append(entries, testEntry{guidSEVMetadata, le.AppendUint32(nil, uint32(len(img)-metaStart))})
	}
	if ti.hashGPA != 0 {
		entries = append(entries, testEntry{guidHashTableRV, le.AppendUint32(le.AppendUint32(nil, ti.hashGPA), ti.hashSize)})
	}
	if !ti.noReset {
		entries = append(entries, testEntry{guidSEVESReset, le.AppendUint32(nil, ti.resetEIP)})
	}
	var table []byte
	for _, e := range entries {
		table = append(table, e.data...)
		table = le.AppendUint16(table, uint16(len(e.data)+tableEntryHeader))
		table = append(table, e.g[:]...)
	}
	table = le.AppendUint16(table, uint16(len(table)+tableEntryHeader))
	table = append(table, guidFooterTable[:]...)
	copy(img[len(img)-footerOffset-len(table):], table)
	return img
}
