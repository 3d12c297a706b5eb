package snp

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"testing"

	sevabi "github.com/google/go-sev-guest/abi"
)

// FuzzParseReport checks that ParseReport never panics, that it accepts only exactly ReportSize bytes,
// that an accepted report round-trips through Raw, and that it agrees with the go-sev-guest parser on
// the fields both read.
func FuzzParseReport(f *testing.F) {
	genuine, err := os.ReadFile("testdata/attestation.bin")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(genuine)
	f.Add(genuine[:ReportSize-1])
	f.Add(append(append([]byte(nil), genuine...), 0))
	f.Add(make([]byte, ReportSize))
	for _, v := range []uint32{3, 5} {
		f.Add(buildReport(f, reportOptions{version: v, product: Genoa, tcb: defaultTestTCB}))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseReport(data)
		if err != nil {
			if r != nil || !errors.Is(err, ErrMalformedReport) {
				t.Fatalf("error %v with report %v", err, r)
			}
			return
		}
		if len(data) != ReportSize || !bytes.Equal(r.Raw(), data) {
			t.Fatal("accepted report does not round-trip")
		}
		theirs, err := sevabi.ReportToProto(data)
		if err != nil {
			// go-sev-guest accepts a superset of what this parser accepts.
			t.Fatalf("accepted by ParseReport, rejected by go-sev-guest: %v", err)
		}
		if !bytes.Equal(theirs.ReportData, r.ReportData[:]) || !bytes.Equal(theirs.Measurement, r.Measurement[:]) ||
			theirs.ReportedTcb != uint64(r.ReportedTCB) || theirs.CommittedTcb != uint64(r.CommittedTCB) ||
			theirs.Policy != uint64(r.Policy) || theirs.Vmpl != r.VMPL || !bytes.Equal(theirs.ChipId, r.ChipID[:]) {
			t.Fatal("fields differ from go-sev-guest")
		}
		for _, p := range Products() {
			if _, err := DecodeTCB(p, r.ReportedTCB); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzParseCertTable checks that ParseCertTable never panics and that an accepted table keeps its
// certificates when written again.
func FuzzParseCertTable(f *testing.F) {
	certs := genuineCerts(f)
	table := MarshalCertTable(certs)
	f.Add(table)
	f.Add(append(append([]byte(nil), table...), make([]byte, 100)...))
	f.Add(table[:len(table)-1])
	f.Add(MarshalCertTable(&Certificates{VCEK: certs.VCEK}))
	f.Add(make([]byte, certTableEntrySize))
	// A small table with an unknown GUID and a tiny blob.
	small := make([]byte, 2*certTableEntrySize+4)
	copy(small, "0123456789abcdef")
	small[16], small[20] = byte(2*certTableEntrySize), 4
	copy(small[2*certTableEntrySize:], "blob")
	f.Add(small)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCertTable(data)
		if err != nil {
			if c != nil || !errors.Is(err, ErrMalformedCertificates) {
				t.Fatalf("error %v with certificates %v", err, c)
			}
			return
		}
		again, err := ParseCertTable(MarshalCertTable(c))
		if err != nil && (c.VCEK != nil || c.VLEK != nil || c.Intermediate != nil || c.ARK != nil) {
			t.Fatalf("re-encoded table rejected: %v", err)
		}
		if err == nil && (!sameCert(again.VCEK, c.VCEK) || !sameCert(again.VLEK, c.VLEK) || !sameCert(again.Intermediate, c.Intermediate) || !sameCert(again.ARK, c.ARK)) {
			t.Fatal("re-encoded table differs")
		}
	})
}

// FuzzParseCertificates checks that ParseCertificates never panics on PEM or DER input.
func FuzzParseCertificates(f *testing.F) {
	f.Add(readTestdata(f, "milan.testcer"))
	f.Add(readTestdata(f, "vcek.testcer"))
	f.Add(readTestdata(f, "milanvlek.testcer")[:500])
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCertificates(data)
		if err != nil {
			if c != nil || !errors.Is(err, ErrMalformedCertificates) {
				t.Fatalf("error %v with certificates %v", err, c)
			}
			return
		}
		if c.VCEK == nil && c.VLEK == nil && c.Intermediate == nil && c.ARK == nil {
			t.Fatal("accepted input without certificates")
		}
	})
}

// FuzzParsePolicy checks that ParsePolicy never panics, that an accepted policy is valid and survives a
// JSON round trip.
func FuzzParsePolicy(f *testing.F) {
	seed, err := json.Marshal(testPolicy(reportOptions{measurement: [48]byte{1}}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"minimumTCB":{"turin":{"fmc":1,"snp":1,"microcode":1}}}`))
	withFirmware := testPolicy(reportOptions{measurement: [48]byte{1}})
	withFirmware.HostData = make([]byte, HostDataSize)
	withFirmware.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 55, 21}}
	if seed, err = json.Marshal(withFirmware); err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("error %v does not match ErrInvalidPolicy", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted an invalid policy: %v", err)
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParsePolicy(out); err != nil {
			t.Fatalf("re-encoded policy rejected: %v", err)
		}
	})
}

// FuzzParseCRL checks that ParseCRL never panics on data from the CRL cache.
func FuzzParseCRL(f *testing.F) {
	f.Add([]byte("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		crl, err := ParseCRL(data)
		if err != nil && crl != nil {
			t.Fatal("error with a CRL")
		}
	})
}

func sameCert(a, b *x509.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

// FuzzParseVCEK checks that ParseVCEK, the parser of VCEK cache entries and of answers of a key
// distribution service, never panics, accepts only a VCEK, and that the certificate it accepts encodes
// to an entry it accepts again.
func FuzzParseVCEK(f *testing.F) {
	genuine := readTestdata(f, "vcek.testcer")
	f.Add(genuine)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: genuine}))
	f.Add(genuine[:len(genuine)-1])
	f.Add(append(append([]byte(nil), genuine...), 0))
	f.Add(readTestdata(f, "milan.testcer"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseVCEK(data)
		if err != nil {
			if c != nil || !errors.Is(err, ErrMalformedCertificates) {
				t.Fatalf("error %v with certificate %v", err, c)
			}
			return
		}
		if c.Subject.CommonName != "SEV-VCEK" || len(data) > MaxVCEKSize {
			t.Fatalf("accepted %q (%d bytes)", c.Subject.CommonName, len(data))
		}
		again, err := ParseVCEK(c.Raw)
		if err != nil || !again.Equal(c) {
			t.Fatalf("the DER of an accepted VCEK is rejected: %v", err)
		}
	})
}
