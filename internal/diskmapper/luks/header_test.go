package luks

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms"
)

// testdata/luks2-header.bin: both 16 KiB header copies of a disk formatted by `cryptsetup luksFormat --type
// luks2 --label constellation-initialised` (cryptsetup 2.6.1).
const (
	fixtureUUID = "1d8119ee-d256-4a16-b3bb-d63e5130a5cc"
	fixtureSize = 16 << 10
)

func fixture(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/luks2-header.bin")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reseal recomputes the checksum of one header copy after a test changed it, so that the check under test,
// not the checksum, is what refuses it.
func reseal(b []byte) []byte {
	size := binary.BigEndian.Uint64(b[offHdrSize:])
	if size > uint64(len(b)) {
		size = uint64(len(b))
	}
	clear(b[offChecksum : offChecksum+lenChecksum])
	sum := sha256.Sum256(b[:size])
	copy(b[offChecksum:], sum[:])
	return b
}

func TestParseHeaderFixture(t *testing.T) {
	b := fixture(t)
	h, err := ParseHeader(b[:fixtureSize])
	if err != nil {
		t.Fatal(err)
	}
	if h.UUID != fixtureUUID || h.Label != LabelInitialised || h.Subsystem != "" || h.Size != fixtureSize || h.Secondary {
		t.Fatalf("primary: %+v", h)
	}
	if h.State() != StateInitialised || h.ResetMarked() {
		t.Fatalf("state %v, reset %v", h.State(), h.ResetMarked())
	}
	s, err := ParseHeader(b[fixtureSize:])
	if err != nil {
		t.Fatal(err)
	}
	if s.UUID != fixtureUUID || !s.Secondary || s.SeqID != h.SeqID {
		t.Fatalf("secondary: %+v", s)
	}
}

// Every damaged or malformed header is refused with an error that says what is wrong.
func TestParseHeaderRefuses(t *testing.T) {
	good := fixture(t)[:fixtureSize]
	for _, tc := range []struct {
		name   string
		change func(b []byte) []byte
		want   string
	}{
		{"empty", func(b []byte) []byte { return nil }, "need at least the 4096-byte binary header"},
		{"short binary header", func(b []byte) []byte { return b[:4095] }, "need at least"},
		{"truncated JSON area", func(b []byte) []byte { return b[:fixtureSize-1] }, "truncated: 16383 bytes, the header says it has 16384"},
		{"no magic", func(b []byte) []byte { b[0] = 'X'; return b }, "no LUKS2 header"},
		{"LUKS1", func(b []byte) []byte { b[offVersion+1] = 1; return reseal(b) }, "version 1, want 2"},
		{"header size not allowed", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offHdrSize:], 16<<10+512)
			return reseal(b)
		}, "header size 16896 is not one the format allows"},
		{"huge header size", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offHdrSize:], 1<<63)
			return b
		}, "is not one the format allows"},
		{"header size larger than the data", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offHdrSize:], 32<<10)
			return b
		}, "truncated"},
		{"flipped bit in the JSON area", func(b []byte) []byte { b[binaryHeaderSize+10] ^= 1; return b }, "checksum mismatch"},
		{"flipped bit in the UUID", func(b []byte) []byte { b[offUUID] ^= 1; return b }, "checksum mismatch"},
		{"checksum tail", func(b []byte) []byte { b[offChecksum+40] = 1; return b }, "bytes after the 32-byte sha256 digest"},
		{"other checksum algorithm", func(b []byte) []byte {
			copy(b[offChecksumAlg:], "sha1\x00\x00")
			return reseal(b)
		}, `checksum algorithm "sha1"`},
		{"unterminated checksum algorithm", func(b []byte) []byte {
			copy(b[offChecksumAlg:], bytes.Repeat([]byte{'a'}, lenChecksumAlg))
			return reseal(b)
		}, "checksum algorithm field (32 bytes) is not NUL-terminated"},
		{"unterminated label", func(b []byte) []byte {
			copy(b[offLabel:], bytes.Repeat([]byte{'a'}, lenLabel))
			return reseal(b)
		}, "label field (48 bytes) is not NUL-terminated"},
		{"bytes after the label", func(b []byte) []byte { b[offLabel+lenLabel-1] = 'x'; return reseal(b) }, "label field has bytes after its terminator"},
		{"non-printable subsystem", func(b []byte) []byte { b[offSubsystem] = 0x07; return reseal(b) }, "subsystem field holds a non-printable byte"},
		{"upper-case UUID", func(b []byte) []byte { b[offUUID+1] = 'D'; return reseal(b) }, "is not a lower-case 8-4-4-4-12 hex UUID"},
		{"short UUID", func(b []byte) []byte { b[offUUID+35] = 0; return reseal(b) }, "is not a lower-case"},
		{"wrong copy offset", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offHdrOffset:], 4096)
			return reseal(b)
		}, "this copy says it is at offset 4096, want 0"},
		{"unterminated JSON area", func(b []byte) []byte {
			for i := binaryHeaderSize; i < len(b); i++ {
				if b[i] == 0 {
					b[i] = ' '
				}
			}
			return reseal(b)
		}, "JSON area is not NUL-terminated"},
		{"empty JSON area", func(b []byte) []byte { clear(b[binaryHeaderSize:]); return reseal(b) }, "does not hold a JSON object"},
		{"JSON area not an object", func(b []byte) []byte {
			clear(b[binaryHeaderSize:])
			copy(b[binaryHeaderSize:], `["keyslots"]`)
			return reseal(b)
		}, "does not hold a JSON object"},
		{"broken JSON", func(b []byte) []byte { b[binaryHeaderSize+1] = '}'; return reseal(b) }, "does not hold a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseHeader(tc.change(bytes.Clone(good)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func writeImage(t *testing.T, b []byte, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadHeaderCopies(t *testing.T) {
	good := fixture(t)
	t.Run("blank disk", func(t *testing.T) {
		if _, err := ReadUUID(writeImage(t, nil, 1<<20)); !errors.Is(err, ErrNoHeader) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("tiny disk", func(t *testing.T) {
		if _, err := ReadUUID(writeImage(t, nil, 100)); !errors.Is(err, ErrNoHeader) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("both copies", func(t *testing.T) {
		if u, err := ReadUUID(writeImage(t, good, 1<<20)); err != nil || u != fixtureUUID {
			t.Fatalf("%s, %v", u, err)
		}
	})
	t.Run("damaged first copy", func(t *testing.T) {
		b := bytes.Clone(good)
		b[binaryHeaderSize+5] ^= 0x40
		h, err := ReadHeader(writeImage(t, b, 1<<20))
		if err != nil || h.UUID != fixtureUUID || !h.Secondary {
			t.Fatalf("%+v, %v", h, err)
		}
	})
	t.Run("first copy wiped", func(t *testing.T) {
		b := bytes.Clone(good)
		clear(b[:fixtureSize])
		h, err := ReadHeader(writeImage(t, b, 1<<20))
		if err != nil || !h.Secondary {
			t.Fatalf("%+v, %v", h, err)
		}
	})
	t.Run("newer second copy", func(t *testing.T) {
		b := bytes.Clone(good)
		binary.BigEndian.PutUint64(b[fixtureSize+offSeqID:], 99)
		copy(b[fixtureSize+offLabel:], LabelNew+"\x00\x00\x00\x00\x00\x00\x00\x00")
		reseal(b[fixtureSize:])
		h, err := ReadHeader(writeImage(t, b, 1<<20))
		if err != nil || h.SeqID != 99 || h.Label != LabelNew {
			t.Fatalf("%+v, %v", h, err)
		}
	})
	t.Run("both copies damaged", func(t *testing.T) {
		b := bytes.Clone(good)
		b[binaryHeaderSize+5] ^= 0x40
		b[fixtureSize+binaryHeaderSize+5] ^= 0x40
		if _, err := ReadHeader(writeImage(t, b, 1<<20)); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("disk ends inside the header", func(t *testing.T) {
		if _, err := ReadHeader(writeImage(t, good[:8192], 8192)); err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("secondary magic in the first copy", func(t *testing.T) {
		b := bytes.Clone(good)
		copy(b, magicSecondary)
		if _, err := ReadHeader(writeImage(t, b[:fixtureSize], 1<<20)); err == nil {
			t.Fatal("a second copy at offset 0 was taken")
		}
	})
}

// The parser reads what cryptsetup writes: a disk formatted by the cryptsetup tool (no device-mapper
// needed without integrity) has the UUID, label and subsystem cryptsetup reports.
func TestReadHeaderOfCryptsetup(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("cryptsetup not installed (Debian package cryptsetup-bin; scripts/setup.sh installs it)")
	}
	img := writeImage(t, nil, 20<<20)
	key := make([]byte, KeySize)
	rand.Read(key)
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--label", LabelNew, "--subsystem", SubsystemReset, "--luks2-metadata-size", "64k", "-q", "--key-file", keyFile, img},
		{"config", "--label", LabelInitialised, "--subsystem", SubsystemReset, img},
	} {
		if out, err := exec.Command("cryptsetup", args...).CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup %v: %v %s", args, err, out)
		}
		out, err := exec.Command("cryptsetup", "luksUUID", img).Output()
		if err != nil {
			t.Fatal(err)
		}
		h, err := ReadHeader(img)
		if err != nil {
			t.Fatal(err)
		}
		if h.UUID != strings.TrimSpace(string(out)) || h.Size != 64<<10 || !h.ResetMarked() {
			t.Fatalf("header %+v, cryptsetup says UUID %s", h, out)
		}
		if args[0] == "config" && h.State() != StateInitialised {
			t.Fatalf("after relabelling: %v", h.State())
		}
	}
}

func TestResetDecision(t *testing.T) {
	u := fixtureUUID
	for _, tc := range []struct {
		h    Header
		wipe bool
		want string
	}{
		{Header{UUID: u, Label: LabelNew}, false, ""},
		{Header{UUID: u, Label: LabelInitialised}, false, ""},
		{Header{UUID: u, Label: "other"}, false, ""},
		{Header{UUID: u, Label: LabelNew, Subsystem: SubsystemReset}, true, ""},
		{Header{UUID: u, Label: LabelInitialised, Subsystem: SubsystemReset}, false, "was initialised"},
		{Header{UUID: u, Label: "", Subsystem: SubsystemReset}, false, "is not this product's"},
	} {
		wipe, err := resetDecision(tc.h)
		if wipe != tc.wipe || (tc.want == "") != (err == nil) || err != nil && (!strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrResetRefused)) {
			t.Errorf("%+v: wipe %v, %v", tc.h, wipe, err)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	good := fixture(f)
	f.Add(good[:fixtureSize])
	f.Add(good[fixtureSize:])
	f.Add(good[:binaryHeaderSize])
	f.Add([]byte("LUKS\xba\xbe\x00\x02"))
	small := bytes.Clone(good[:fixtureSize])
	clear(small[binaryHeaderSize:])
	copy(small[binaryHeaderSize:], "{}")
	f.Add(reseal(small))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		if uint64(len(b)) < h.Size || !uuidPattern.MatchString(h.UUID) || len(h.Label) >= lenLabel || len(h.Subsystem) >= lenSubsystem {
			t.Fatalf("accepted an inconsistent header: %+v from %d bytes", h, len(b))
		}
		sum := sha256.New()
		sum.Write(b[:offChecksum])
		sum.Write(make([]byte, lenChecksum))
		sum.Write(b[offChecksum+lenChecksum : h.Size])
		if !bytes.Equal(sum.Sum(nil), b[offChecksum:offChecksum+sha256.Size]) {
			t.Fatal("accepted a header whose checksum does not match")
		}
	})
}

func TestKeySizeIsTheDiskKeySize(t *testing.T) {
	if KeySize != kms.DiskKeySize {
		t.Fatalf("KeySize %d, kms.DiskKeySize %d", KeySize, kms.DiskKeySize)
	}
}
