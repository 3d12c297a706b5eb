package bootimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// MaxPEImage bounds the size of a PE/COFF image this package reads (a UKI with its kernel and initramfs).
const MaxPEImage = 1 << 30

// maxPESections bounds the section count (the PE/COFF specification allows 96).
const maxPESections = 96

// PESection is one section of a PE/COFF image.
type PESection struct {
	Name           string
	VirtualSize    uint32
	VirtualAddress uint32
	SizeOfRawData  uint32
	PointerToRaw   uint32
}

// peImage is a parsed PE/COFF image: the offsets the Authenticode digest skips and the section table.
type peImage struct {
	checksumOff   int // the optional header's CheckSum field
	certDirOff    int // the certificate table's data directory entry, or -1 when there is none
	certSize      uint32
	sizeOfHeaders int
	timestampOff  int
	sections      []PESection
}

func u16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

// parsePE reads the headers of a PE/COFF image strictly: every offset and size must lie within the image,
// the section table within the headers, and every section's raw data within the image after the headers.
func parsePE(img []byte) (*peImage, error) {
	if len(img) > MaxPEImage {
		return nil, fmt.Errorf("PE image of %d bytes is larger than %d", len(img), MaxPEImage)
	}
	if len(img) < 0x40 || img[0] != 'M' || img[1] != 'Z' {
		return nil, errors.New("not a PE/COFF image: no MZ header")
	}
	peOff := int(u32(img, 0x3c))
	if peOff < 0x40 || peOff > len(img)-24 || string(img[peOff:peOff+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("not a PE/COFF image: no PE signature at offset %#x", peOff)
	}
	coff := peOff + 4
	nSections := int(u16(img, coff+2))
	optSize := int(u16(img, coff+16))
	opt := coff + 20
	if nSections == 0 || nSections > maxPESections {
		return nil, fmt.Errorf("PE image with %d sections (1-%d)", nSections, maxPESections)
	}
	if opt+optSize > len(img) || optSize < 2 {
		return nil, fmt.Errorf("PE optional header of %d bytes runs past the image", optSize)
	}
	p := &peImage{checksumOff: opt + 64, certDirOff: -1, timestampOff: coff + 4}
	var nDirs, dirs int
	switch magic := u16(img, opt); magic {
	case 0x10b: // PE32
		if optSize < 96 {
			return nil, fmt.Errorf("PE32 optional header of %d bytes is too short", optSize)
		}
		nDirs, dirs = int(u32(img, opt+92)), opt+96
	case 0x20b: // PE32+
		if optSize < 112 {
			return nil, fmt.Errorf("PE32+ optional header of %d bytes is too short", optSize)
		}
		nDirs, dirs = int(u32(img, opt+108)), opt+112
	default:
		return nil, fmt.Errorf("PE optional header magic %#x is neither PE32 nor PE32+", magic)
	}
	if nDirs > 16 || dirs+8*nDirs > opt+optSize {
		return nil, fmt.Errorf("PE image with %d data directories that do not fit its optional header", nDirs)
	}
	const certDir = 4 // IMAGE_DIRECTORY_ENTRY_SECURITY
	if nDirs > certDir {
		p.certDirOff = dirs + 8*certDir
		p.certSize = u32(img, p.certDirOff+4)
		if certAddr := u32(img, p.certDirOff); p.certSize != 0 && (uint64(certAddr)+uint64(p.certSize) != uint64(len(img))) {
			return nil, errors.New("PE certificate table is not at the end of the image")
		}
	}
	p.sizeOfHeaders = int(u32(img, opt+60))
	table := opt + optSize
	if table+40*nSections > p.sizeOfHeaders || p.sizeOfHeaders > len(img) {
		return nil, fmt.Errorf("PE SizeOfHeaders %d does not cover the section table or runs past the image", p.sizeOfHeaders)
	}
	for i := range nSections {
		s := img[table+40*i : table+40*(i+1)]
		name := s[:8]
		if n := slices.Index(name, 0); n >= 0 {
			name = name[:n]
		}
		sec := PESection{
			Name: string(name), VirtualSize: u32(s, 8), VirtualAddress: u32(s, 12),
			SizeOfRawData: u32(s, 16), PointerToRaw: u32(s, 20),
		}
		if sec.SizeOfRawData > 0 {
			end := uint64(sec.PointerToRaw) + uint64(sec.SizeOfRawData)
			if int(sec.PointerToRaw) < p.sizeOfHeaders || end > uint64(len(img)) {
				return nil, fmt.Errorf("PE section %q: raw data %#x+%#x outside the image after the headers", sec.Name, sec.PointerToRaw, sec.SizeOfRawData)
			}
		}
		p.sections = append(p.sections, sec)
	}
	return p, nil
}

// PESections returns the section table of a PE/COFF image.
func PESections(img []byte) ([]PESection, error) {
	p, err := parsePE(img)
	if err != nil {
		return nil, err
	}
	return p.sections, nil
}

// AuthenticodeSHA256 returns the Authenticode digest (PE/COFF image hash, SHA-256) of a PE/COFF image, as
// UEFI firmware computes it to measure an image it starts (EV_EFI_BOOT_SERVICES_APPLICATION): the headers
// without the CheckSum field and the certificate table's directory entry, the sections' raw data in file
// order, then what follows them except the certificate table.
func AuthenticodeSHA256(img []byte) ([32]byte, error) {
	p, err := parsePE(img)
	if err != nil {
		return [32]byte{}, err
	}
	h := sha256.New()
	h.Write(img[:p.checksumOff])
	if p.certDirOff >= 0 {
		h.Write(img[p.checksumOff+4 : p.certDirOff])
		h.Write(img[p.certDirOff+8 : p.sizeOfHeaders])
	} else {
		h.Write(img[p.checksumOff+4 : p.sizeOfHeaders])
	}
	secs := slices.Clone(p.sections)
	slices.SortStableFunc(secs, func(a, b PESection) int { return int(int64(a.PointerToRaw) - int64(b.PointerToRaw)) })
	hashed := uint64(p.sizeOfHeaders)
	for _, s := range secs {
		if s.SizeOfRawData == 0 {
			continue
		}
		h.Write(img[s.PointerToRaw : uint64(s.PointerToRaw)+uint64(s.SizeOfRawData)])
		hashed += uint64(s.SizeOfRawData)
	}
	if size := uint64(len(img)); size > hashed {
		switch rest := size - hashed; {
		case rest > uint64(p.certSize):
			h.Write(img[hashed : size-uint64(p.certSize)])
		case rest < uint64(p.certSize):
			return [32]byte{}, errors.New("PE certificate table overlaps the hashed sections")
		}
	}
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

// SectionData returns the bytes of a section as they are in memory after loading: its first VirtualSize bytes
// of raw data. ok is false when the image has no such section. A section that is larger in memory than in the
// file (zero-filled by the loader) is refused: no section of a UKI is.
func SectionData(img []byte, name string) (data []byte, ok bool, err error) {
	p, err := parsePE(img)
	if err != nil {
		return nil, false, err
	}
	for _, s := range p.sections {
		if s.Name != name {
			continue
		}
		if s.VirtualSize > s.SizeOfRawData {
			return nil, false, fmt.Errorf("PE section %q is larger in memory (%d bytes) than in the file (%d bytes)", name, s.VirtualSize, s.SizeOfRawData)
		}
		return bytes.Clone(img[s.PointerToRaw : uint64(s.PointerToRaw)+uint64(s.VirtualSize)]), true, nil
	}
	return nil, false, nil
}

// normalizePE sets the COFF timestamp to zero and recomputes the optional header's CheckSum, so that an image
// built twice from the same inputs is the same.
func normalizePE(img []byte) error {
	p, err := parsePE(img)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(img[p.timestampOff:], 0)
	binary.LittleEndian.PutUint32(img[p.checksumOff:], 0)
	var sum uint64
	for i := 0; i+1 < len(img); i += 2 {
		sum += uint64(u16(img, i))
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(img)%2 == 1 {
		sum += uint64(img[len(img)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	binary.LittleEndian.PutUint32(img[p.checksumOff:], uint32(sum)+uint32(len(img)))
	return nil
}
