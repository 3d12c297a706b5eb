package bootimage

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unicode/utf16"
)

const (
	sectorSize     = 512
	gptEntries     = 128
	gptEntrySize   = 128
	gptEntrySecs   = gptEntries * gptEntrySize / sectorSize // 32
	partitionAlign = 1 << 20
)

// GUID is a GPT GUID in its textual byte order.
type GUID [16]byte

// Partition types of the Discoverable Partitions Specification.
var (
	TypeESP        = mustGUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
	TypeRootX86_64 = mustGUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
)

func mustGUID(s string) GUID {
	var g GUID
	var hexDigits []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			hexDigits = append(hexDigits, s[i])
		}
	}
	if len(hexDigits) != 32 {
		panic("bad GUID " + s)
	}
	for i := range 16 {
		var b byte
		if _, err := fmt.Sscanf(string(hexDigits[2*i:2*i+2]), "%02x", &b); err != nil {
			panic(err)
		}
		g[i] = b
	}
	return g
}

// String formats the GUID as 8-4-4-4-12 hex digits.
func (g GUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", g[0:4], g[4:6], g[6:8], g[8:10], g[10:16])
}

// mixedEndian returns the GUID as GPT stores it: the first three fields little-endian.
func (g GUID) mixedEndian() []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], binary.BigEndian.Uint32(g[0:]))
	binary.LittleEndian.PutUint16(b[4:], binary.BigEndian.Uint16(g[4:]))
	binary.LittleEndian.PutUint16(b[6:], binary.BigEndian.Uint16(g[6:]))
	copy(b[8:], g[8:])
	return b
}

// DerivedGUID returns a version 4 (random-format) GUID derived from a label and content digests, so that a
// disk image built twice from the same content carries the same GUIDs.
func DerivedGUID(label string, digests ...[32]byte) GUID {
	h := sha256.New()
	h.Write([]byte("constellation gpt guid\x00" + label + "\x00"))
	for _, d := range digests {
		h.Write(d[:])
	}
	var g GUID
	copy(g[:], h.Sum(nil))
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g
}

// GPTPartition is one partition of a disk image, in sectors.
type GPTPartition struct {
	Type, GUID GUID
	Name       string
	First      uint64 // first sector
	Sectors    uint64
	Attributes uint64
}

// AttrReadOnly is the Discoverable Partitions Specification's read-only flag (bit 60).
const AttrReadOnly = 1 << 60

// gptTables returns the primary (protective MBR, header, entries: sectors 0-33) and the backup (entries,
// header: the disk's last 33 sectors) partition tables of a disk of total sectors.
func gptTables(disk GUID, total uint64, parts []GPTPartition) (primary, backup []byte, err error) {
	if len(parts) > gptEntries {
		return nil, nil, errors.New("too many partitions")
	}
	firstUsable, lastUsable := uint64(2+gptEntrySecs), total-2-gptEntrySecs
	entries := make([]byte, gptEntries*gptEntrySize)
	for i, p := range parts {
		last := p.First + p.Sectors - 1
		if p.Sectors == 0 || p.First < firstUsable || last > lastUsable {
			return nil, nil, fmt.Errorf("partition %q (sectors %d-%d) outside the usable sectors %d-%d", p.Name, p.First, last, firstUsable, lastUsable)
		}
		if i > 0 && p.First <= parts[i-1].First+parts[i-1].Sectors-1 {
			return nil, nil, fmt.Errorf("partition %q overlaps the one before it", p.Name)
		}
		e := entries[i*gptEntrySize:]
		copy(e[0:], p.Type.mixedEndian())
		copy(e[16:], p.GUID.mixedEndian())
		binary.LittleEndian.PutUint64(e[32:], p.First)
		binary.LittleEndian.PutUint64(e[40:], last)
		binary.LittleEndian.PutUint64(e[48:], p.Attributes)
		name := utf16.Encode([]rune(p.Name))
		if len(name) > 36 {
			return nil, nil, fmt.Errorf("partition name %q longer than 36 UTF-16 units", p.Name)
		}
		for j, c := range name {
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
	}
	entriesCRC := crc32.ChecksumIEEE(entries)
	header := func(my, alternate, entryLBA uint64) []byte {
		h := make([]byte, sectorSize)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], my)
		binary.LittleEndian.PutUint64(h[32:], alternate)
		binary.LittleEndian.PutUint64(h[40:], firstUsable)
		binary.LittleEndian.PutUint64(h[48:], lastUsable)
		copy(h[56:], disk.mixedEndian())
		binary.LittleEndian.PutUint64(h[72:], entryLBA)
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	mbr := make([]byte, sectorSize)
	p := mbr[446:]
	p[1], p[2], p[3] = 0x00, 0x02, 0x00 // CHS of sector 1
	p[4] = 0xee                         // GPT protective
	p[5], p[6], p[7] = 0xff, 0xff, 0xff
	binary.LittleEndian.PutUint32(p[8:], 1)
	binary.LittleEndian.PutUint32(p[12:], uint32(min(total-1, 0xffffffff)))
	mbr[510], mbr[511] = 0x55, 0xaa
	primary = append(append(mbr, header(1, total-1, 2)...), entries...)
	backup = append(append([]byte{}, entries...), header(total-1, 1, total-1-gptEntrySecs)...)
	return primary, backup, nil
}
