package bootimage

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// minimalPE returns a small PE32+ image with one section, for unit and fuzz tests.
func minimalPE() []byte {
	img := make([]byte, 0x400)
	copy(img, "MZ")
	binary.LittleEndian.PutUint32(img[0x3c:], 0x80)
	copy(img[0x80:], "PE\x00\x00")
	coff := 0x84
	binary.LittleEndian.PutUint16(img[coff:], 0x8664)
	binary.LittleEndian.PutUint16(img[coff+2:], 1)    // sections
	binary.LittleEndian.PutUint16(img[coff+16:], 240) // optional header size
	opt := coff + 20
	binary.LittleEndian.PutUint16(img[opt:], 0x20b)
	binary.LittleEndian.PutUint32(img[opt+60:], 0x200) // SizeOfHeaders
	binary.LittleEndian.PutUint32(img[opt+108:], 16)   // data directories
	sec := opt + 240
	copy(img[sec:], ".text")
	binary.LittleEndian.PutUint32(img[sec+8:], 0x100)   // VirtualSize
	binary.LittleEndian.PutUint32(img[sec+12:], 0x1000) // VirtualAddress
	binary.LittleEndian.PutUint32(img[sec+16:], 0x200)  // SizeOfRawData
	binary.LittleEndian.PutUint32(img[sec+20:], 0x200)  // PointerToRawData
	for i := 0x200; i < 0x300; i++ {
		img[i] = byte(i)
	}
	return img
}

func TestAuthenticodeSkipsChecksumAndCoversTheRest(t *testing.T) {
	img := minimalPE()
	base, err := AuthenticodeSHA256(img)
	if err != nil {
		t.Fatal(err)
	}
	p, err := parsePE(img)
	if err != nil {
		t.Fatal(err)
	}
	skipped := map[int]bool{}
	for i := range 4 {
		skipped[p.checksumOff+i] = true
	}
	for i := range 8 {
		skipped[p.certDirOff+i] = true
	}
	for off := 0; off < len(img); off++ {
		mod := bytes.Clone(img)
		mod[off] ^= 0x80
		d, err := AuthenticodeSHA256(mod)
		switch {
		case err != nil:
			// A changed header the parser refuses: never the digest of the original.
		case skipped[off] && d != base:
			t.Fatalf("a change at %#x (checksum or certificate directory) changed the digest", off)
		case !skipped[off] && d == base:
			t.Fatalf("a change at %#x did not change the digest", off)
		}
	}
}

func TestParsePERefusesOutOfBounds(t *testing.T) {
	for name, mutate := range map[string]func([]byte) []byte{
		"truncated headers":       func(b []byte) []byte { return b[:0x180] },
		"no MZ":                   func(b []byte) []byte { b[0] = 'X'; return b },
		"PE offset past the end":  func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x3c:], 0xffffff00); return b },
		"section past the end":    func(b []byte) []byte { return b[:0x300] },
		"section in the headers":  func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x84+20+240+20:], 0x100); return b },
		"SizeOfHeaders too small": func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x84+20+60:], 0x100); return b },
		"too many sections":       func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x86:], 1000); return b },
		"too many data dirs":      func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x84+20+108:], 1<<30); return b },
		"unknown optional header": func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x84+20:], 0x107); return b },
		"certificates not at end": func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[0x84+20+112+32:], 0x10)
			binary.LittleEndian.PutUint32(b[0x84+20+112+36:], 8)
			return b
		},
		"raw size overflows": func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x84+20+240+16:], 0xffffffff); return b },
	} {
		if _, err := AuthenticodeSHA256(mutate(minimalPE())); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// sbsign (Debian package sbsigntool) appends a signature as a certificate table and updates the checksum and
// the certificate directory: exactly what the Authenticode digest leaves out.
func TestAuthenticodeUnchangedBySigning(t *testing.T) {
	if _, err := exec.LookPath("sbsign"); err != nil {
		t.Skip("sbsign not installed (Debian package sbsigntool)")
	}
	stub, err := os.ReadFile(DefaultStub)
	if err != nil {
		t.Skipf("no systemd-stub: %v", err)
	}
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test signer"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<33, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	in := write("stub.efi", stub)
	crt := write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	k := write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	out := filepath.Join(dir, "signed.efi")
	if msg, err := exec.Command("sbsign", "--key", k, "--cert", crt, "--output", out, in).CombinedOutput(); err != nil {
		t.Fatalf("sbsign: %v: %s", err, msg)
	}
	signed, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(signed, stub) {
		t.Fatal("sbsign did not change the image")
	}
	d, err := AuthenticodeSHA256(signed)
	if err != nil {
		t.Fatal(err)
	}
	// The signature (PKCS#7 SignedData in the certificate table) carries sbsign's image digest in the clear.
	p, err := parsePE(signed)
	if err != nil {
		t.Fatal(err)
	}
	certs := signed[len(signed)-int(p.certSize):]
	if p.certSize == 0 || !bytes.Contains(certs, d[:]) {
		t.Fatalf("the digest %x is not the one sbsign signed", d)
	}
	// sbsign pads the image to 8 bytes before it appends the signature; what it hashed is that image.
	padded := append(bytes.Clone(stub), make([]byte, (8-len(stub)%8)%8)...)
	if u, err := AuthenticodeSHA256(padded); err != nil || u != d {
		t.Fatalf("the unsigned image's digest %x (%v) is not the signed image's %x", u, err, d)
	}
}

func FuzzAuthenticode(f *testing.F) {
	f.Add(minimalPE())
	f.Add(minimalPE()[:0x200])
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, img []byte) {
		secs, err := PESections(img)
		if err != nil {
			return
		}
		if _, err := AuthenticodeSHA256(img); err != nil {
			t.Fatalf("the headers parse but the digest fails: %v", err)
		}
		seen := map[string]bool{}
		for _, s := range secs {
			if seen[s.Name] {
				continue // SectionData returns the first section of a name
			}
			seen[s.Name] = true
			data, ok, err := SectionData(img, s.Name)
			if s.VirtualSize > s.SizeOfRawData {
				if err == nil {
					t.Fatalf("section %q larger in memory than in the file: no error", s.Name)
				}
				continue
			}
			if !ok || err != nil || len(data) != int(s.VirtualSize) {
				t.Fatalf("section %q: %d bytes, %v, %v", s.Name, len(data), ok, err)
			}
		}
	})
}
