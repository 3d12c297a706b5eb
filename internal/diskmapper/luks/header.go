package luks

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
)

// The LUKS2 binary header (the on-disk format specification, "LUKS2 On-Disk Format", section 2): 4096 bytes,
// big-endian integers, followed by the JSON metadata area. The whole header area (binary header and JSON area)
// has hdr_size bytes; a second copy of it starts at offset hdr_size.
const (
	binaryHeaderSize = 4096

	offMagic       = 0
	offVersion     = 6
	offHdrSize     = 8
	offSeqID       = 16
	offLabel       = 24
	offChecksumAlg = 72
	offSalt        = 104
	offUUID        = 168
	offSubsystem   = 208
	offHdrOffset   = 256
	offPadding     = 264
	offChecksum    = 448
	offPadding4096 = 512

	lenLabel       = 48
	lenChecksumAlg = 32
	lenUUID        = 40
	lenSubsystem   = 48
	lenChecksum    = 64
)

var (
	magicPrimary   = []byte("LUKS\xba\xbe")
	magicSecondary = []byte("SKUL\xba\xbe")
)

// hdrSizes are the header area sizes the specification allows (16 KiB to 4 MiB).
var hdrSizes = []uint64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

// ErrNoHeader is returned for a disk that holds no LUKS2 header: a blank disk, or one whose header was wiped.
var ErrNoHeader = errors.New("the disk holds no LUKS2 header")

// Header is what this package reads from a LUKS2 header without libcryptsetup.
type Header struct {
	// UUID is the disk's UUID (lower case, 36 characters), by which its key is derived.
	UUID string
	// Label and Subsystem are the header's two free-text fields; this package keeps the disk's life-cycle
	// state in them (see State and ResetMarked).
	Label     string
	Subsystem string
	// SeqID is the header's sequence number: it grows with every header update.
	SeqID uint64
	// Size is the size of one header copy (binary header and JSON area) in bytes.
	Size uint64
	// Secondary is true if the header was read from the second copy (the first one was damaged).
	Secondary bool
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// cString returns the NUL-terminated string of a fixed-size field. The field must hold its terminator (the
// specification makes every string field NUL-terminated), everything after it must be zero, and the string
// must be printable ASCII.
func cString(field []byte, name string) (string, error) {
	n := bytes.IndexByte(field, 0)
	if n < 0 {
		return "", fmt.Errorf("LUKS2 header: the %s field (%d bytes) is not NUL-terminated", name, len(field))
	}
	for _, c := range field[n:] {
		if c != 0 {
			return "", fmt.Errorf("LUKS2 header: the %s field has bytes after its terminator", name)
		}
	}
	for _, c := range field[:n] {
		if c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("LUKS2 header: the %s field holds a non-printable byte %#x", name, c)
		}
	}
	return string(field[:n]), nil
}

// ParseHeader parses one copy of a LUKS2 header area: the 4096-byte binary header followed by its JSON area,
// hdr_size bytes in all. b may be longer (only hdr_size bytes are read); a shorter b is refused. It checks the
// magic (of either copy), the version (2), the header size (one the specification allows), the checksum
// algorithm (sha256, the only one this product writes) and the checksum over the whole area, the string
// fields and the UUID, the copy's offset, and that the JSON area holds one NUL-terminated JSON object.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < binaryHeaderSize {
		return Header{}, fmt.Errorf("LUKS2 header: %d bytes, need at least the %d-byte binary header", len(b), binaryHeaderSize)
	}
	var h Header
	switch magic := b[offMagic : offMagic+6]; {
	case bytes.Equal(magic, magicPrimary):
	case bytes.Equal(magic, magicSecondary):
		h.Secondary = true
	default:
		return Header{}, ErrNoHeader
	}
	if v := binary.BigEndian.Uint16(b[offVersion:]); v != 2 {
		return Header{}, fmt.Errorf("LUKS2 header: version %d, want 2 (LUKS1 and other versions are not state disks of this product)", v)
	}
	h.Size = binary.BigEndian.Uint64(b[offHdrSize:])
	if !slices.Contains(hdrSizes, h.Size) {
		return Header{}, fmt.Errorf("LUKS2 header: header size %d is not one the format allows (16 KiB to 4 MiB, a power of two)", h.Size)
	}
	if uint64(len(b)) < h.Size {
		return Header{}, fmt.Errorf("LUKS2 header: truncated: %d bytes, the header says it has %d", len(b), h.Size)
	}
	b = b[:h.Size]
	h.SeqID = binary.BigEndian.Uint64(b[offSeqID:])
	alg, err := cString(b[offChecksumAlg:offChecksumAlg+lenChecksumAlg], "checksum algorithm")
	if err != nil {
		return Header{}, err
	}
	if alg != "sha256" {
		return Header{}, fmt.Errorf("LUKS2 header: checksum algorithm %q; this product writes and reads only sha256", alg)
	}
	stored := b[offChecksum : offChecksum+lenChecksum]
	for _, c := range stored[sha256.Size:] {
		if c != 0 {
			return Header{}, errors.New("LUKS2 header: the checksum field has bytes after the 32-byte sha256 digest")
		}
	}
	sum := sha256.New()
	sum.Write(b[:offChecksum])
	sum.Write(make([]byte, lenChecksum))
	sum.Write(b[offChecksum+lenChecksum:])
	if !bytes.Equal(sum.Sum(nil), stored[:sha256.Size]) {
		return Header{}, errors.New("LUKS2 header: checksum mismatch (the header is damaged or was changed without updating it)")
	}
	wantOffset := uint64(0)
	if h.Secondary {
		wantOffset = h.Size
	}
	if off := binary.BigEndian.Uint64(b[offHdrOffset:]); off != wantOffset {
		return Header{}, fmt.Errorf("LUKS2 header: this copy says it is at offset %d, want %d", off, wantOffset)
	}
	if h.Label, err = cString(b[offLabel:offLabel+lenLabel], "label"); err != nil {
		return Header{}, err
	}
	if h.Subsystem, err = cString(b[offSubsystem:offSubsystem+lenSubsystem], "subsystem"); err != nil {
		return Header{}, err
	}
	if h.UUID, err = cString(b[offUUID:offUUID+lenUUID], "UUID"); err != nil {
		return Header{}, err
	}
	if !uuidPattern.MatchString(h.UUID) {
		return Header{}, fmt.Errorf("LUKS2 header: UUID %q is not a lower-case 8-4-4-4-12 hex UUID", h.UUID)
	}
	area := b[binaryHeaderSize:]
	n := bytes.IndexByte(area, 0)
	if n < 0 {
		return Header{}, errors.New("LUKS2 header: the JSON area is not NUL-terminated")
	}
	if n == 0 || area[0] != '{' || !json.Valid(area[:n]) {
		return Header{}, errors.New("LUKS2 header: the JSON area does not hold a JSON object")
	}
	return h, nil
}

// ReadHeader reads the LUKS2 header of a disk (a block device or an image file). Like libcryptsetup it reads
// the first copy and, if that one is damaged, the second one (at each offset the header size allows), and
// takes the valid copy with the higher sequence number. A disk without any LUKS2 magic gives ErrNoHeader.
func ReadHeader(device string) (Header, error) {
	f, err := os.Open(device)
	if err != nil {
		return Header{}, err
	}
	defer f.Close()
	read := func(off, n uint64) ([]byte, error) {
		b := make([]byte, n)
		m, err := f.ReadAt(b, int64(off))
		if errors.Is(err, io.EOF) {
			return b[:m], nil
		}
		return b[:m], err
	}
	readCopy := func(off uint64) (Header, error) {
		b, err := read(off, binaryHeaderSize)
		if err != nil {
			return Header{}, fmt.Errorf("reading %s: %w", device, err)
		}
		if len(b) < binaryHeaderSize {
			return Header{}, ErrNoHeader
		}
		magic := b[offMagic : offMagic+6]
		if !bytes.Equal(magic, magicPrimary) && !bytes.Equal(magic, magicSecondary) {
			return Header{}, ErrNoHeader
		}
		if size := binary.BigEndian.Uint64(b[offHdrSize:]); slices.Contains(hdrSizes, size) {
			if b, err = read(off, size); err != nil {
				return Header{}, fmt.Errorf("reading %s: %w", device, err)
			}
		}
		return ParseHeader(b)
	}
	primary, perr := readCopy(0)
	if perr == nil && primary.Secondary {
		perr = errors.New("LUKS2 header: the first copy carries the magic of the second one")
	}
	var secondary Header
	serr := ErrNoHeader
	for _, off := range hdrSizes {
		if perr == nil && off != primary.Size {
			continue
		}
		h, err := readCopy(off)
		if err == ErrNoHeader {
			continue
		}
		if err == nil && (!h.Secondary || h.Size != off) {
			err = fmt.Errorf("LUKS2 header: the copy at offset %d is not a valid second copy", off)
		}
		secondary, serr = h, err
		break
	}
	switch {
	case perr == nil && serr == nil:
		if secondary.SeqID > primary.SeqID {
			return secondary, nil
		}
		return primary, nil
	case perr == nil:
		return primary, nil
	case serr == nil:
		return secondary, nil
	case perr == ErrNoHeader && serr == ErrNoHeader:
		return Header{}, ErrNoHeader
	case perr != ErrNoHeader:
		return Header{}, fmt.Errorf("%s: %w", device, perr)
	default:
		return Header{}, fmt.Errorf("%s: first copy missing, second copy: %w", device, serr)
	}
}

// ReadUUID returns the UUID of the LUKS2 state disk (stored in plain text in its header), or ErrNoHeader for
// a blank disk. It needs no libcryptsetup.
func ReadUUID(device string) (string, error) {
	h, err := ReadHeader(device)
	if err != nil {
		return "", err
	}
	return h.UUID, nil
}
