package vtpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"testing"
)

// buildQuote encodes a TPMS_ATTEST quote over SHA-256 PCRs 0-23.
func buildQuote(extra, digest []byte) []byte {
	var b bytes.Buffer
	w := func(v any) { _ = binary.Write(&b, binary.BigEndian, v) }
	w(uint32(tpmGeneratedValue))
	w(uint16(tpmSTAttestQuote))
	w(uint16(34)) // qualified signer: SHA-256 name
	w(uint16(tpmAlgSHA256))
	b.Write(make([]byte, 32))
	w(uint16(len(extra)))
	b.Write(extra)
	w(uint64(1234)) // clock
	w(uint32(1))    // reset count
	w(uint32(2))    // restart count
	w(uint8(1))     // safe
	w(uint64(42))   // firmware version
	w(uint32(1))    // one selection
	w(uint16(tpmAlgSHA256))
	w(uint8(3))
	b.Write([]byte{0xff, 0xff, 0xff})
	w(uint16(len(digest)))
	b.Write(digest)
	return b.Bytes()
}

func TestParseQuote(t *testing.T) {
	extra := bytes.Repeat([]byte{1}, 32)
	digest := bytes.Repeat([]byte{2}, 32)
	raw := buildQuote(extra, digest)
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatalf("ParseQuote: %v", err)
	}
	if !bytes.Equal(q.ExtraData, extra) || !bytes.Equal(q.PCRDigest, digest) || q.Clock != 1234 || q.RestartCount != 2 || !q.Safe {
		t.Fatalf("unexpected quote %+v", q)
	}
	if len(q.Selection) != 1 || len(q.Selection[0].PCRs) != 24 || q.Selection[0].PCRs[23] != 23 {
		t.Fatalf("unexpected selection %+v", q.Selection)
	}

	for i := range len(raw) {
		if _, err := ParseQuote(raw[:i]); err == nil {
			t.Fatalf("prefix of %d bytes accepted", i)
		}
	}
	mutations := map[string]struct {
		in      []byte
		wantErr string
	}{
		"trailing data": {append(bytes.Clone(raw), 0), "trailing"},
		"wrong magic":   {append([]byte{0xff, 0x54, 0x43, 0x48}, raw[4:]...), "magic"},
		"wrong type":    {append(append(bytes.Clone(raw[:4]), 0x80, 0x17), raw[6:]...), "type"},
	}
	for name, tc := range mutations {
		if _, err := ParseQuote(tc.in); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: ParseQuote = %v, want error containing %q", name, err, tc.wantErr)
		}
	}
}

func TestVerifySignatureECDSA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	quote := buildQuote(nil, nil)
	digest := sha256.Sum256(quote)
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	var sig bytes.Buffer
	w := func(v any) { _ = binary.Write(&sig, binary.BigEndian, v) }
	w(uint16(tpmAlgECDSA))
	w(uint16(tpmAlgSHA256))
	w(uint16(len(r.Bytes())))
	sig.Write(r.Bytes())
	w(uint16(len(s.Bytes())))
	sig.Write(s.Bytes())
	if err := VerifySignature(&key.PublicKey, quote, sig.Bytes()); err != nil {
		t.Fatalf("VerifySignature: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := VerifySignature(&other.PublicKey, quote, sig.Bytes()); err == nil {
		t.Fatal("signature verified with another key")
	}
	if err := VerifySignature(&key.PublicKey, append(bytes.Clone(quote), 0), sig.Bytes()); err == nil {
		t.Fatal("signature verified over other data")
	}
	sha1Sig := bytes.Clone(sig.Bytes())
	sha1Sig[3] = 0x04
	if err := VerifySignature(&key.PublicKey, quote, sha1Sig); err == nil || !strings.Contains(err.Error(), "not SHA-256") {
		t.Fatalf("SHA-1 signature: %v", err)
	}
	if err := VerifySignature(&key.PublicKey, quote, append(sig.Bytes(), 0)); err == nil || !strings.Contains(err.Error(), "trailing") {
		t.Fatalf("signature with trailing data: %v", err)
	}
}

func FuzzParseQuote(f *testing.F) {
	f.Add(buildQuote(bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)))
	f.Add(buildQuote(nil, nil))
	f.Fuzz(func(t *testing.T, raw []byte) {
		q, err := ParseQuote(raw)
		if err != nil {
			return
		}
		for _, sel := range q.Selection {
			for _, p := range sel.PCRs {
				if p >= 8*maxSizeOfSelect {
					t.Fatalf("PCR index %d out of range", p)
				}
			}
		}
	})
}

func FuzzVerifySignature(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add([]byte{0x00, 0x18, 0x00, 0x0b, 0x00, 0x01, 0x01, 0x00, 0x01, 0x01})
	f.Add([]byte{0x00, 0x14, 0x00, 0x0b, 0x00, 0x00})
	quote := buildQuote(nil, nil)
	f.Fuzz(func(t *testing.T, sig []byte) {
		if err := VerifySignature(&key.PublicKey, quote, sig); err == nil {
			t.Fatal("random signature verified")
		}
	})
}
