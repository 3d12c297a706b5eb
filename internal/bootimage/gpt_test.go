package bootimage

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"
)

func TestGPTTables(t *testing.T) {
	const total = 8192
	parts := []GPTPartition{
		{Type: TypeESP, GUID: DerivedGUID("esp"), Name: ESPPartition, First: 2048, Sectors: 2048},
		{Type: TypeRootX86_64, GUID: DerivedGUID("root"), Name: RootPartition, First: 4096, Sectors: 2048, Attributes: AttrReadOnly},
	}
	primary, backup, err := gptTables(DerivedGUID("disk"), total, parts)
	if err != nil {
		t.Fatal(err)
	}
	if len(primary) != 34*sectorSize || len(backup) != 33*sectorSize {
		t.Fatalf("table sizes %d, %d", len(primary), len(backup))
	}
	if primary[510] != 0x55 || primary[511] != 0xaa || primary[446+4] != 0xee {
		t.Fatal("no protective MBR")
	}
	check := func(name string, h, entries []byte, my, alt, entryLBA uint64) {
		t.Helper()
		if string(h[:8]) != "EFI PART" {
			t.Fatalf("%s header: no signature", name)
		}
		hdr := bytes.Clone(h[:92])
		crc := binary.LittleEndian.Uint32(hdr[16:])
		clear(hdr[16:20])
		if crc32.ChecksumIEEE(hdr) != crc {
			t.Fatalf("%s header: CRC mismatch", name)
		}
		if binary.LittleEndian.Uint32(h[88:]) != crc32.ChecksumIEEE(entries) {
			t.Fatalf("%s header: entries CRC mismatch", name)
		}
		if got := [3]uint64{binary.LittleEndian.Uint64(h[24:]), binary.LittleEndian.Uint64(h[32:]), binary.LittleEndian.Uint64(h[72:])}; got != [3]uint64{my, alt, entryLBA} {
			t.Fatalf("%s header: my/alternate/entries LBA %v", name, got)
		}
	}
	entries := primary[2*sectorSize:]
	check("primary", primary[sectorSize:], entries, 1, total-1, 2)
	check("backup", backup[32*sectorSize:], backup[:32*sectorSize], total-1, 1, total-33)
	if !bytes.Equal(entries, backup[:32*sectorSize]) {
		t.Fatal("the backup entries differ")
	}
	// The ESP's type GUID as GPT stores it (mixed endian), as other tools write it.
	if want := []byte{0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b}; !bytes.Equal(entries[:16], want) {
		t.Fatalf("ESP type GUID stored as %x", entries[:16])
	}
	if binary.LittleEndian.Uint64(entries[128+48:]) != AttrReadOnly {
		t.Fatal("the root partition is not marked read-only")
	}
	for name, bad := range map[string][]GPTPartition{
		"overlap":       {parts[0], {Type: TypeESP, Name: "x", First: 3000, Sectors: 10}},
		"before usable": {{Type: TypeESP, Name: "x", First: 10, Sectors: 10}},
		"past usable":   {{Type: TypeESP, Name: "x", First: total - 20, Sectors: 10}},
		"long name":     {{Type: TypeESP, Name: "a-name-longer-than-thirty-six-characters", First: 2048, Sectors: 10}},
	} {
		if _, _, err := gptTables(DerivedGUID("disk"), total, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
