package attestation

import (
	"bytes"
	"errors"
	"testing"
)

func validDocument(t testing.TB) []byte {
	t.Helper()
	doc := &Document{
		Version:  DocumentVersion,
		Variant:  MiniVTPM.Name,
		UserData: []byte("user"),
		TPM: &TPMEvidence{
			AKCert: []byte{0x30, 0x00},
			Quotes: []Quote{{Quote: []byte{1}, Signature: []byte{2}, PCRs: map[uint32][]byte{0: make([]byte, 32)}}},
		},
	}
	raw, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestParseDocument(t *testing.T) {
	raw := validDocument(t)
	doc, err := ParseDocument(raw)
	if err != nil {
		t.Fatalf("ParseDocument: %v", err)
	}
	if doc.Variant != MiniVTPM.Name || string(doc.UserData) != "user" || len(doc.TPM.Quotes) != 1 {
		t.Fatalf("unexpected document %+v", doc)
	}
}

func TestParseDocumentRejects(t *testing.T) {
	raw := validDocument(t)
	tests := map[string][]byte{
		"empty":           nil,
		"truncated":       raw[:len(raw)-1],
		"trailing data":   append(bytes.Clone(raw), []byte(`{}`)...),
		"unknown field":   bytes.Replace(raw, []byte(`"version"`), []byte(`"extra":1,"version"`), 1),
		"wrong version":   bytes.Replace(raw, []byte(`"version":1`), []byte(`"version":2`), 1),
		"unknown variant": bytes.Replace(raw, []byte(`"mini-vtpm"`), []byte(`"qemu-vtpm"`), 1),
		"not json":        []byte("\x00\x01"),
		"too large":       make([]byte, MaxDocumentSize+1),
		"huge user data":  bytes.Replace(raw, []byte(`"dXNlcg=="`), []byte(`"`+string(bytes.Repeat([]byte("QUFB"), MaxUserDataSize))+`"`), 1),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseDocument(in)
			if !errors.Is(err, ErrMalformedDocument) {
				t.Fatalf("ParseDocument = %v, want ErrMalformedDocument", err)
			}
		})
	}
}

func TestBindingDigestUnambiguous(t *testing.T) {
	a := BindingDigest(MiniVTPM, []byte("nonce-0123456789"), []byte("ab"))
	b := BindingDigest(MiniVTPM, []byte("nonce-0123456789a"), []byte("b"))
	if a == b {
		t.Fatal("moving a byte from user data to nonce gives the same binding digest")
	}
	other := Variant{Name: "other"}
	if a == BindingDigest(other, []byte("nonce-0123456789"), []byte("ab")) {
		t.Fatal("binding digest does not depend on the variant")
	}
}

func TestVariantRegistry(t *testing.T) {
	for _, v := range Variants() {
		got, err := VariantByName(v.Name)
		if err != nil || !got.OID.Equal(v.OID) {
			t.Fatalf("VariantByName(%q) = %v, %v", v.Name, got, err)
		}
		if byOID, ok := VariantByOID(v.OID); !ok || byOID.Name != v.Name {
			t.Fatalf("VariantByOID(%v) = %v, %v", v.OID, byOID, ok)
		}
		if !IsVariantOID(v.OID) {
			t.Fatalf("IsVariantOID(%v) = false", v.OID)
		}
	}
	if _, err := VariantByName("nope"); err == nil {
		t.Fatal("unknown variant accepted")
	}
}

func FuzzParseDocument(f *testing.F) {
	f.Add(validDocument(f))
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm"}`))
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm","tpm":{"akCert":"","quotes":[{"quote":"","signature":"","pcrs":{"4":"AA=="}}]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		doc, err := ParseDocument(raw)
		if err != nil {
			return
		}
		again, err := doc.Marshal()
		if err != nil {
			t.Fatalf("marshal parsed document: %v", err)
		}
		if _, err := ParseDocument(again); err != nil {
			t.Fatalf("re-parse of a marshalled document failed: %v", err)
		}
	})
}
