package luks

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms"
)

// Headers written by Format and SetKey in the QEMU test's guest (both 16 KiB copies each):
//
//   - testdata/luks2-integrity-initialised.bin: a node's state disk after its first boot (diskmapper.Prepare
//     and Unlock, that is Format and SetKey with the key testDeriver derives for its UUID): keyslot 1, the
//     parameter token.
//   - testdata/luks2-integrity-new.bin: a disk formatted and never given its key (one keyslot, no token).
const (
	initialisedFixture = "testdata/luks2-integrity-initialised.bin"
	newFixture         = "testdata/luks2-integrity-new.bin"
)

// testDeriver derives disk keys as the QEMU test's guest does.
func testDeriver(t testing.TB) *kms.Deriver {
	t.Helper()
	d, err := kms.NewDeriver(&kms.MasterSecret{Key: bytes.Repeat([]byte{0x42}, kms.MasterKeySize), Salt: bytes.Repeat([]byte{0x24}, kms.MasterSaltSize)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// jsonArea returns the JSON metadata of the first header copy in b, and the copy's size.
func jsonArea(t testing.TB, b []byte) ([]byte, uint64) {
	t.Helper()
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	area := b[binaryHeaderSize:h.Size]
	return bytes.Clone(area[:bytes.IndexByte(area, 0)]), h.Size
}

func readFixture(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseMetadataOfFormat(t *testing.T) {
	for _, tc := range []struct {
		path    string
		hasMAC  bool
		keyslot int
	}{{initialisedFixture, true, 1}, {newFixture, false, 0}} {
		t.Run(tc.path, func(t *testing.T) {
			b := readFixture(t, tc.path)
			h, err := ParseHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			js, size := jsonArea(t, b)
			m, err := ParseMetadata(js, size)
			if err != nil {
				t.Fatalf("ParseMetadata of a header Format wrote: %v\n%s", err, js)
			}
			if len(m.Keyslots) != 1 || m.Keyslots[0] != tc.keyslot || m.DataOffset != 16<<20 || (m.MAC != nil) != tc.hasMAC {
				t.Fatalf("%+v", m)
			}
			// The second copy holds the same.
			js2, _ := jsonArea(t, b[size:])
			if _, err := ParseMetadata(js2, size); err != nil {
				t.Fatal(err)
			}
			key, err := testDeriver(t).DiskKey(h.UUID)
			if err != nil {
				t.Fatal(err)
			}
			err = m.VerifyMAC(h.UUID, key)
			if tc.hasMAC != (err == nil) {
				t.Fatalf("VerifyMAC with the disk's key: %v", err)
			}
			if tc.hasMAC {
				wrong := bytes.Clone(key)
				wrong[0] ^= 1
				if err := m.VerifyMAC(h.UUID, wrong); !errors.Is(err, ErrBadParameters) {
					t.Fatalf("VerifyMAC with another key: %v", err)
				}
				if err := m.VerifyMAC(strings.Replace(h.UUID, h.UUID[:1], "0", 1), key); !errors.Is(err, ErrBadParameters) && h.UUID[0] != '0' {
					t.Fatalf("VerifyMAC for another UUID: %v", err)
				}
			}
		})
	}
}

// mutate decodes the JSON metadata, lets change alter it and encodes it again.
func mutate(t *testing.T, js []byte, change func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	change(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func obj(m map[string]any, path ...string) map[string]any {
	for _, p := range path {
		m = m[p].(map[string]any)
	}
	return m
}

// Every header a host can write that differs from what Format writes in a parameter that matters is refused.
func TestParseMetadataRefuses(t *testing.T) {
	good, size := jsonArea(t, readFixture(t, initialisedFixture))
	ks := func(m map[string]any) map[string]any {
		for _, v := range obj(m, "keyslots") {
			return v.(map[string]any)
		}
		t.Fatal("no keyslot")
		return nil
	}
	for _, tc := range []struct {
		name   string
		change func(m map[string]any)
		want   string
	}{
		{"cipher_null segment without integrity", func(m map[string]any) {
			s := obj(m, "segments", "0")
			s["encryption"] = "cipher_null-ecb"
			delete(s, "integrity")
		}, `segment encryption is "cipher_null-ecb"`},
		{"cipher_null segment with integrity", func(m map[string]any) { obj(m, "segments", "0")["encryption"] = "cipher_null-ecb" }, "segment encryption"},
		{"no integrity", func(m map[string]any) { delete(obj(m, "segments", "0"), "integrity") }, "no integrity protection"},
		{"other integrity", func(m map[string]any) { obj(m, "segments", "0", "integrity")["type"] = "crc32c" }, `segment integrity is "crc32c"`},
		{"journal encryption", func(m map[string]any) {
			obj(m, "segments", "0", "integrity")["journal_encryption"] = "cipher_null"
		}, "journal_encryption"},
		{"other cipher mode", func(m map[string]any) { obj(m, "segments", "0")["encryption"] = "aes-cbc-essiv:sha256" }, "segment encryption"},
		{"512-byte sectors", func(m map[string]any) { obj(m, "segments", "0")["sector_size"] = 512 }, "sector_size is 512, want 4096"},
		{"iv tweak", func(m map[string]any) { obj(m, "segments", "0")["iv_tweak"] = "8" }, "iv_tweak"},
		{"fixed segment size", func(m map[string]any) { obj(m, "segments", "0")["size"] = "4096" }, "segment size"},
		{"segment flags", func(m map[string]any) { obj(m, "segments", "0")["flags"] = []string{"backup-previous"} }, `unknown field "flags"`},
		{"data offset moved", func(m map[string]any) { obj(m, "segments", "0")["offset"] = "8388608" }, "the segment starts at 8388608"},
		{"two segments", func(m map[string]any) {
			s := obj(m, "segments")
			second := map[string]any{}
			for k, v := range obj(s, "0") {
				second[k] = v
			}
			second["encryption"] = "cipher_null-ecb"
			s["1"] = second
		}, "2 segments, want 1"},
		{"segment not 0", func(m map[string]any) {
			s := obj(m, "segments")
			s["1"] = s["0"]
			delete(s, "0")
		}, "not segment 0"},
		{"linear segment", func(m map[string]any) { obj(m, "segments", "0")["type"] = "linear" }, "segment type"},
		{"keyring token", func(m map[string]any) {
			obj(m, "tokens")["1"] = map[string]any{"type": "luks2-keyring", "keyslots": []string{}, "key_description": "x"}
		}, `unknown field "key_description"`},
		{"second token", func(m map[string]any) { obj(m, "tokens")["1"] = obj(m, "tokens", "0") }, "2 tokens"},
		{"no token key", func(m map[string]any) { delete(obj(m, "tokens", "0"), "type") }, "not this product's parameter token"},
		{"foreign token in place of ours", func(m map[string]any) {
			obj(m, "tokens")["0"] = map[string]any{"type": "systemd-tpm2", "keyslots": []string{"1"}}
		}, "not this product's parameter token"},
		{"parameter token bound to a keyslot", func(m map[string]any) { obj(m, "tokens", "0")["keyslots"] = []string{"1"} }, "not this product's parameter token"},
		{"parameter token with an extra field", func(m map[string]any) { obj(m, "tokens", "0")["x"] = 1 }, `unknown field "x"`},
		{"short MAC", func(m map[string]any) { obj(m, "tokens", "0")["mac"] = "AAAA" }, "parameter MAC is not 32 bytes"},
		{"requirements", func(m map[string]any) {
			obj(m, "config")["requirements"] = map[string]any{"mandatory": []string{"online-reencrypt-v2"}}
		}, `unknown field "requirements"`},
		{"persistent flags", func(m map[string]any) { obj(m, "config")["flags"] = []string{"allow-discards"} }, `unknown field "flags"`},
		{"other json size", func(m map[string]any) { obj(m, "config")["json_size"] = "28672" }, "config.json_size"},
		{"keyslot area encryption cipher_null", func(m map[string]any) { obj(ks(m), "area")["encryption"] = "cipher_null-ecb" }, "area encryption"},
		{"keyslot area encryption cbc", func(m map[string]any) { obj(ks(m), "area")["encryption"] = "aes-cbc-essiv:sha256" }, "area encryption"},
		{"keyslot area key size", func(m map[string]any) { obj(ks(m), "area")["key_size"] = 32 }, "area key_size is 32, want 64"},
		{"keyslot key size", func(m map[string]any) { ks(m)["key_size"] = 64 }, "key_size is 64, want 96"},
		{"keyslot kdf argon2id", func(m map[string]any) { obj(ks(m), "kdf")["type"] = "argon2id" }, "kdf type"},
		{"keyslot af stripes", func(m map[string]any) { obj(ks(m), "af")["stripes"] = 1 }, "af stripes is 1"},
		{"keyslot area outside the keyslots area", func(m map[string]any) { obj(ks(m), "area")["offset"] = "16777216" }, "is not a 385024-byte area inside"},
		{"keyslot priority", func(m map[string]any) { ks(m)["priority"] = 2 }, `unknown field "priority"`},
		{"reencrypt keyslot", func(m map[string]any) { ks(m)["type"] = "reencrypt" }, "type is \"reencrypt\""},
		{"no keyslot", func(m map[string]any) {
			m["keyslots"] = map[string]any{}
			obj(m, "digests", "0")["keyslots"] = []string{}
		}, "0 keyslots"},
		{"digest of another segment", func(m map[string]any) { obj(m, "digests", "0")["segments"] = []string{"1"} }, "the digest is for segments"},
		{"digest not for the keyslot", func(m map[string]any) { obj(m, "digests", "0")["keyslots"] = []string{"7"} }, "the digest is for keyslots [7]"},
		{"two digests", func(m map[string]any) { obj(m, "digests")["1"] = obj(m, "digests", "0") }, "2 digests"},
		{"top-level field", func(m map[string]any) { m["x_constellation"] = "hi" }, `unknown field "x_constellation"`},
		{"no config", func(m map[string]any) { delete(m, "config") }, "lacks one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := mutate(t, good, tc.change)
			_, err := ParseMetadata(js, size)
			if !errors.Is(err, ErrBadParameters) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseMetadata = %v, want an error containing %q\n%s", err, tc.want, js)
			}
		})
	}
	// Text a JSON parser may read otherwise than Go's.
	for _, tc := range []struct{ name, js, want string }{
		{"duplicate key", strings.Replace(string(good), `"segments":{`, `"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"cipher_null-ecb","sector_size":4096},`, 1), `key "0" twice`},
		{"data after the object", string(good) + ` {}`, "data after its object"},
		{"integrity under a key only Go folds to it", strings.Replace(string(good), `"integrity":{`, `"Integrity":{`, 1), `key "Integrity"`},
		{"encryption twice, differently spelt", strings.Replace(string(good), `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"cipher_null-ecb","ENCRYPTION":"aes-xts-plain64","sector_size"`, 1), `key "ENCRYPTION"`},
		{"Kelvin sign", strings.Replace(string(good), `"key_size":96`, `"Key_size":96`, 1), "keys are lower-case"},
		{"NUL in a segment id", strings.Replace(string(good), `"segments":{"0"`, `"segments":{"0\u0000"`, 1), "keys are lower-case"},
		{"deep nesting", strings.Replace(string(good), `"tokens":{`, `"tokens":{"9":[[[[[[[[]]]]]]]],`, 1), "nests deeper"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMetadata([]byte(tc.js), size)
			if !errors.Is(err, ErrBadParameters) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseMetadata = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// A header that passes the strict check but differs in what the MAC covers (here: another volume key's
// digest, which a host could pair with a keyslot of its own) does not verify under the disk key.
func TestParamsMACCoversTheVolumeKeyAndLayout(t *testing.T) {
	b := readFixture(t, initialisedFixture)
	h, _ := ParseHeader(b)
	good, size := jsonArea(t, b)
	key, _ := testDeriver(t).DiskKey(h.UUID)
	for name, change := range map[string]func(m map[string]any){
		"digest": func(m map[string]any) {
			obj(m, "digests", "0")["digest"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
		},
		"digest salt": func(m map[string]any) {
			obj(m, "digests", "0")["salt"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
		},
		"digest iterations": func(m map[string]any) { obj(m, "digests", "0")["iterations"] = 1001 },
	} {
		t.Run(name, func(t *testing.T) {
			m, err := ParseMetadata(mutate(t, good, change), size)
			if err != nil {
				t.Fatalf("the changed header should pass the strict check: %v", err)
			}
			if err := m.VerifyMAC(h.UUID, key); !errors.Is(err, ErrBadParameters) {
				t.Fatalf("VerifyMAC = %v", err)
			}
		})
	}
}

// FuzzParseMetadata: whatever ParseMetadata accepts, a lenient parser that keeps the last of duplicate keys
// (as another JSON parser might) reads as one aes-xts-plain64 segment with hmac(sha256) integrity and
// keyslots in aes-xts-plain64 areas.
func FuzzParseMetadata(f *testing.F) {
	for _, p := range []string{initialisedFixture, newFixture} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		js, _ := jsonArea(f, b)
		f.Add(js)
		f.Add(bytes.Replace(js, []byte(`"aes-xts-plain64"`), []byte(`"cipher_null-ecb"`), 1))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		m, err := ParseMetadata(js, 16<<10)
		if err != nil {
			if !errors.Is(err, ErrBadParameters) {
				t.Fatalf("an error that does not wrap ErrBadParameters: %v", err)
			}
			return
		}
		// A lenient reading, case-sensitive like libcryptsetup's, the last of duplicate keys kept.
		var root map[string]any
		if err := json.Unmarshal(js, &root); err != nil {
			t.Fatalf("accepted, but does not parse leniently: %v", err)
		}
		get := func(m any, path ...string) any {
			for _, p := range path {
				o, ok := m.(map[string]any)
				if !ok {
					return nil
				}
				m = o[p]
			}
			return m
		}
		segs, _ := get(root, "segments").(map[string]any)
		if len(segs) != 1 || get(segs, "0", "encryption") != metaEncryption || get(segs, "0", "sector_size") != float64(sectorSize) ||
			get(segs, "0", "integrity", "type") != metaIntegrity || get(segs, "0", "integrity", "journal_encryption") != "none" {
			t.Fatalf("accepted a header whose segments read leniently as %v", segs)
		}
		slots, _ := get(root, "keyslots").(map[string]any)
		if len(slots) != len(m.Keyslots) {
			t.Fatalf("accepted %d keyslots, the lenient parser reads %d", len(m.Keyslots), len(slots))
		}
		for id, ks := range slots {
			if get(ks, "area", "encryption") != metaEncryption || get(ks, "key_size") != float64(metaKeyslotKeySize) {
				t.Fatalf("accepted keyslot %s: %v", id, ks)
			}
		}
		if cfg, _ := get(root, "config").(map[string]any); len(cfg) != 2 {
			t.Fatalf("accepted config %v", cfg)
		}
	})
}

// sealCopies writes js into the JSON area of both header copies of b and recomputes their checksums, as a host
// that rewrites a header does.
func sealCopies(t testing.TB, b, js []byte) []byte {
	t.Helper()
	b = bytes.Clone(b)
	size := binary.BigEndian.Uint64(b[offHdrSize:])
	for _, off := range []uint64{0, size} {
		c := b[off : off+size]
		clear(c[binaryHeaderSize:])
		copy(c[binaryHeaderSize:], js)
		reseal(c)
	}
	return b
}
