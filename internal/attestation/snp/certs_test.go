package snp

import (
	"bytes"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	sevabi "github.com/google/go-sev-guest/abi"
)

func TestCertTableRoundTripGenuine(t *testing.T) {
	certs := genuineCerts(t)
	table := MarshalCertTable(certs)
	got, err := ParseCertTable(table)
	if err != nil {
		t.Fatal(err)
	}
	if !got.VCEK.Equal(certs.VCEK) || !got.Intermediate.Equal(certs.Intermediate) || !got.ARK.Equal(certs.ARK) || got.VLEK != nil {
		t.Error("round trip changed the certificates")
	}
	// Page padding, as the sev-guest driver returns it, is accepted.
	padded := append(append([]byte(nil), table...), make([]byte, 4096-len(table)%4096)...)
	if _, err := ParseCertTable(padded); err != nil {
		t.Errorf("zero-padded table: %v", err)
	}
	// The go-sev-guest parser reads our table the same way.
	var theirs sevabi.CertTable
	if err := theirs.Unmarshal(table); err != nil {
		t.Fatal(err)
	}
	if vcek, err := theirs.GetByGUIDString(sevabi.VcekGUID); err != nil || !bytes.Equal(vcek, certs.VCEK.Raw) {
		t.Errorf("go-sev-guest finds no VCEK under the VCEK GUID: %v", err)
	}
	if ark, err := theirs.GetByGUIDString(sevabi.ArkGUID); err != nil || !bytes.Equal(ark, certs.ARK.Raw) {
		t.Errorf("go-sev-guest finds no ARK under the ARK GUID: %v", err)
	}
}

func TestGUIDs(t *testing.T) {
	for _, g := range []struct {
		ours   guid
		theirs string
	}{{guidVCEK, sevabi.VcekGUID}, {guidVLEK, sevabi.VlekGUID}, {guidASK, sevabi.AskGUID}, {guidARK, sevabi.ArkGUID}} {
		if g.ours.String() != g.theirs {
			t.Errorf("GUID %s, go-sev-guest %s", g.ours, g.theirs)
		}
	}
}

func TestParseCertTableRejects(t *testing.T) {
	certs := genuineCerts(t)
	table := MarshalCertTable(certs) // VCEK, ASK, ARK; header of 4 entries (96 bytes)
	le := binary.LittleEndian
	entry := func(b []byte, i int) []byte { return b[i*certTableEntrySize:] }
	tests := map[string]struct {
		data []byte
		want string
	}{
		"empty":           {nil, "empty"},
		"header only":     {table[:40], "truncated"},
		"no terminator":   {table[:3*certTableEntrySize], "no terminating zero entry"},
		"truncated cert":  {table[:len(table)-1], "beyond"},
		"trailing data":   {append(append([]byte(nil), table...), 0, 0, 7), "trailing data"},
		"gap with data":   {gapTable(t, certs), "unreferenced non-zero"},
		"no entries":      {make([]byte, certTableEntrySize), "no entries"},
		"offset inside":   {mutate(table, func(b []byte) { le.PutUint32(entry(b, 0)[16:], 10) }), "inside the 96-byte table header"},
		"empty entry":     {mutate(table, func(b []byte) { le.PutUint32(entry(b, 1)[20:], 0) }), "is empty"},
		"overlap":         {mutate(table, func(b []byte) { copy(entry(b, 1)[16:20], entry(b, 0)[16:20]) }), "overlaps"},
		"duplicate GUID":  {mutate(table, func(b []byte) { copy(entry(b, 1)[:16], entry(b, 0)[:16]) }), "two entries"},
		"zero GUID":       {mutate(table, func(b []byte) { clear(entry(b, 1)[:16]) }), "zero GUID"},
		"huge length":     {mutate(table, func(b []byte) { le.PutUint32(entry(b, 2)[20:], 0xffffffff) }), "beyond"},
		"bad certificate": {mutate(table, func(b []byte) { b[le.Uint32(entry(b, 0)[16:])] = 0 }), "VCEK certificate"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseCertTable(tc.data)
			if !errors.Is(err, ErrMalformedCertificates) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrMalformedCertificates naming %q", err, tc.want)
			}
		})
	}
}

func mutate(b []byte, f func([]byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	return c
}

// gapTable builds a table with a non-zero byte between the header and the first certificate.
func gapTable(t *testing.T, certs *Certificates) []byte {
	t.Helper()
	table := MarshalCertTable(&Certificates{VCEK: certs.VCEK})
	header := 2 * certTableEntrySize
	out := append(append(append([]byte(nil), table[:header]...), 0x55), table[header:]...)
	binary.LittleEndian.PutUint32(out[16:], uint32(header+1))
	return out
}

func TestParseCertificates(t *testing.T) {
	chain, err := ParseCertificates(readTestdata(t, "milan.testcer"))
	if err != nil {
		t.Fatal(err)
	}
	if chain.ARK.Subject.CommonName != "ARK-Milan" || chain.Intermediate.Subject.CommonName != "SEV-Milan" || chain.VCEK != nil {
		t.Errorf("milan.testcer parsed as %+v", chain)
	}
	vlek, err := ParseCertificates(readTestdata(t, "milanvlek.testcer"))
	if err != nil || vlek.Intermediate.Subject.CommonName != "SEV-VLEK-Milan" {
		t.Fatalf("milanvlek.testcer: %v", err)
	}
	vcekDER := readTestdata(t, "vcek.testcer")
	vcek, err := ParseCertificates(vcekDER)
	if err != nil || vcek.VCEK == nil {
		t.Fatalf("DER VCEK: %v", err)
	}
	pemVCEK := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: vcekDER})
	all := append(append([]byte(nil), pemVCEK...), readTestdata(t, "milan.testcer")...)
	if c, err := ParseCertificates(all); err != nil || c.VCEK == nil || c.ARK == nil || c.Intermediate == nil {
		t.Errorf("PEM bundle of VCEK, ASK, ARK: %v", err)
	}

	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty":             {[]byte("  \n"), "no certificate data"},
		"garbage":           {[]byte("hello"), "DER certificates"},
		"trailing DER":      {append(append([]byte(nil), vcekDER...), 1, 2, 3), "DER certificates"},
		"truncated DER":     {vcekDER[:len(vcekDER)-10], "DER certificates"},
		"trailing text":     {append(append([]byte(nil), pemVCEK...), "junk"...), "not a PEM block"},
		"text between":      {append(append(append([]byte(nil), pemVCEK...), "junk\n"...), pemVCEK...), "not a PEM block"},
		"wrong PEM type":    {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: vcekDER}), "type \"PRIVATE KEY\""},
		"duplicate role":    {append(append([]byte(nil), pemVCEK...), pemVCEK...), "same role"},
		"not AMD":           {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: getTestPKIForeign(t)}), "not an AMD SEV certificate"},
		"truncated PEM":     {pemVCEK[:len(pemVCEK)-30], "not a PEM block"},
		"corrupt PEM bytes": {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: vcekDER[:100]}), "certificate 0"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseCertificates(tc.data)
			if !errors.Is(err, ErrMalformedCertificates) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrMalformedCertificates naming %q", err, tc.want)
			}
		})
	}
}

// getTestPKIForeign returns a DER certificate whose name is not an AMD role.
func getTestPKIForeign(t *testing.T) []byte {
	t.Helper()
	pki := getTestPKI(t, Milan)
	tmpl := caTemplate(t, "Some Other CA")
	return mustCreate(t, tmpl, pki.ark, &pki.askKey.PublicKey, pki.arkKey).Raw
}
