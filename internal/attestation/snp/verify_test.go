package snp

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func genuineVerifier(t testing.TB) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestVerifyGenuine verifies the genuine Milan report against the embedded Milan root, with the chain as
// recorded (through a certificate table) and with the VCEK alone.
func TestVerifyGenuine(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	table := MarshalCertTable(genuineCerts(t))
	certs, err := ParseCertTable(table)
	if err != nil {
		t.Fatal(err)
	}
	v := genuineVerifier(t)
	for name, c := range map[string]*Certificates{"full chain": certs, "VCEK only": {VCEK: certs.VCEK}} {
		t.Run(name, func(t *testing.T) {
			r, err := ParseReport(raw)
			if err != nil {
				t.Fatal(err)
			}
			vr, err := v.Verify(r, c)
			if err != nil {
				t.Fatal(err)
			}
			if vr.Product != Milan || vr.ReportedTCB != (TCB{Bootloader: 2, SNP: 5, Microcode: 68}) || vr.Revocation != CRLMissing {
				t.Errorf("product %v, reported TCB %v, revocation %v", vr.Product, vr.ReportedTCB, vr.Revocation)
			}
			if err := genuinePolicy(t).Check(vr); err != nil {
				t.Errorf("policy with the genuine measurement and TCB: %v", err)
			}
		})
	}
	if _, err := Validate(v, genuinePolicy(t), raw, certs); err != nil {
		t.Errorf("Validate: %v", err)
	}
	// The real clock works too, while the VCEK is valid (until 2029-09-24).
	if time.Now().Before(certs.VCEK.NotAfter) {
		realV, err := NewVerifier(VerifierOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Validate(realV, genuinePolicy(t), raw, certs); err != nil {
			t.Errorf("Validate at the current time: %v", err)
		}
	}
}

// TestVerifyGenuineMutations flips one bit in every byte of the genuine report. Every mutated copy must be
// rejected: by the parser if the byte is structural, else by the signature check.
func TestVerifyGenuineMutations(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	certs := genuineCerts(t)
	v := genuineVerifier(t)
	caught := map[string]int{}
	for i := range ReportSize {
		for _, bit := range []byte{0x01, 0x80} {
			b := append([]byte(nil), raw...)
			b[i] ^= bit
			r, err := ParseReport(b)
			if err == nil {
				_, err = v.Verify(r, certs)
			}
			switch {
			case err == nil:
				t.Fatalf("byte 0x%x bit 0x%02x flipped: accepted", i, bit)
			case errors.Is(err, ErrMalformedReport):
				caught["parse"]++
			case errors.Is(err, ErrSignature):
				caught["signature"]++
			default:
				t.Errorf("byte 0x%x bit 0x%02x flipped: unexpected error %v", i, bit, err)
			}
		}
	}
	t.Logf("mutations caught: %v", caught)
	if caught["signature"] < offSignature {
		t.Errorf("only %d mutations caught by the signature check", caught["signature"])
	}
}

func TestVerifyWrongRoot(t *testing.T) {
	ev := newTestEvidence(t, reportOptions{})
	r, err := ParseReport(ev.raw)
	if err != nil {
		t.Fatal(err)
	}
	// Sanity: the test evidence verifies with its own (test) roots.
	if _, err := testVerifier(t, ev.roots, nil).Verify(r, ev.certs); err != nil {
		t.Fatalf("test evidence with test roots: %v", err)
	}
	amd := genuineVerifier(t)
	tests := map[string]struct {
		certs *Certificates
		want  string
	}{
		"chain from a test ARK": {ev.certs, "the ARK in the evidence (\"ARK-Milan\") is not the embedded Milan ARK"},
		"test ASK, no ARK":      {&Certificates{VCEK: ev.certs.VCEK, Intermediate: ev.pki.ask}, "the ASK in the evidence is not usable"},
		"VCEK only":             {&Certificates{VCEK: ev.certs.VCEK}, "VCEK not signed by ASK of the embedded Milan root"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := amd.Verify(r, tc.certs)
			if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrChain naming %q", err, tc.want)
			}
		})
	}
}

func TestVerifyOtherProduct(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	r, err := ParseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	genuine := genuineCerts(t)
	genoa, _ := AMDRoots().Product(Genoa)
	amd := genuineVerifier(t)
	for name, tc := range map[string]struct {
		certs *Certificates
		want  string
	}{
		"Genoa ARK with the Milan VCEK": {&Certificates{VCEK: genuine.VCEK, Intermediate: genoa.ASK, ARK: genoa.ARK}, "not the embedded Milan ARK"},
		"Genoa ASK with the Milan VCEK": {&Certificates{VCEK: genuine.VCEK, Intermediate: genoa.ASK}, "common name \"SEV-Genoa\", want \"SEV-Milan\""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := amd.Verify(r, tc.certs)
			if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrChain naming %q", err, tc.want)
			}
		})
	}

	// A version 3 report from a Milan CPU with a valid VCEK of the Genoa test PKI.
	roots := testRoots(t, Milan, Genoa)
	genoaPKI := getTestPKI(t, Genoa)
	o := reportOptions{product: Milan, tcb: defaultTestTCB}
	cert, key := genoaPKI.endorsementKey(t, ekOptions{tcb: defaultTestTCB})
	r3, err := ParseReport(signReport(t, buildReport(t, o), key))
	if err != nil {
		t.Fatal(err)
	}
	_, err = testVerifier(t, roots, nil).Verify(r3, &Certificates{VCEK: cert})
	if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "VCEK is for Genoa, but the report comes from a Milan CPU") {
		t.Errorf("Genoa VCEK for a Milan report: %v", err)
	}
	// A VCEK that claims Milan but is signed by the Genoa ASK.
	cert, key = genoaPKI.endorsementKey(t, ekOptions{tcb: defaultTestTCB, productName: "Milan-B0"})
	r3, err = ParseReport(signReport(t, buildReport(t, o), key))
	if err != nil {
		t.Fatal(err)
	}
	_, err = testVerifier(t, roots, nil).Verify(r3, &Certificates{VCEK: cert})
	if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "VCEK not signed by ASK of the embedded Milan root") {
		t.Errorf("Milan-named VCEK from the Genoa ASK: %v", err)
	}
	// Roots that know only Genoa cannot verify a Milan VCEK.
	ev := newTestEvidence(t, reportOptions{})
	r4, _ := ParseReport(ev.raw)
	_, err = testVerifier(t, testRoots(t, Genoa), nil).Verify(r4, &Certificates{VCEK: ev.certs.VCEK})
	if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "Milan, which has no trusted root") {
		t.Errorf("Milan VCEK with Genoa-only roots: %v", err)
	}
}

func TestVerifyEndorsementKeyMismatch(t *testing.T) {
	pki := getTestPKI(t, Milan)
	roots := testRoots(t, Milan)
	o := reportOptions{tcb: defaultTestTCB, product: Milan}
	verify := func(cert *x509.Certificate, raw []byte) error {
		t.Helper()
		r, err := ParseReport(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, err = testVerifier(t, roots, nil).Verify(r, &Certificates{VCEK: cert})
		return err
	}
	t.Run("TCB", func(t *testing.T) {
		cert, key := pki.endorsementKey(t, ekOptions{tcb: TCB{Bootloader: 3, SNP: 8, Microcode: 116}})
		err := verify(cert, signReport(t, buildReport(t, o), key))
		if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "is for TCB") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("chip ID", func(t *testing.T) {
		other := make([]byte, ChipIDSize)
		cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB, chipID: other})
		err := verify(cert, signReport(t, buildReport(t, o), key))
		if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "VCEK is for chip") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("masked chip ID", func(t *testing.T) {
		other := make([]byte, ChipIDSize)
		cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB, chipID: other})
		b := buildReport(t, o)
		b[0x48] |= 2
		clear(b[0x1a0:0x1e0])
		if err := verify(cert, signReport(t, b, key)); err != nil {
			t.Errorf("masked chip ID: %v", err)
		}
	})
	t.Run("missing extension", func(t *testing.T) {
		cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB, omitExt: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 8}})
		err := verify(cert, signReport(t, buildReport(t, o), key))
		if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "ucodeSPL") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("unknown product name", func(t *testing.T) {
		cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB, productName: "Rome-B0"})
		err := verify(cert, signReport(t, buildReport(t, o), key))
		if !errors.Is(err, ErrUnknownProduct) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB, notAfter: testNow.Add(-time.Hour)})
		err := verify(cert, signReport(t, buildReport(t, o), key))
		if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "VCEK certificate expired") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("VCEK signed by the ARK", func(t *testing.T) {
		cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB, issuer: pki.ark, issuerKey: pki.arkKey})
		err := verify(cert, signReport(t, buildReport(t, o), key))
		if !errors.Is(err, ErrChain) || !strings.Contains(err.Error(), "not signed by ASK") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("signature by another key", func(t *testing.T) {
		cert, _ := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB})
		err := verify(cert, signReport(t, buildReport(t, o), mustP384(t)))
		if !errors.Is(err, ErrSignature) {
			t.Errorf("got %v", err)
		}
	})
}

func TestVerifyMissingCertificateOrSignature(t *testing.T) {
	ev := newTestEvidence(t, reportOptions{})
	v := testVerifier(t, ev.roots, nil)
	r, _ := ParseReport(ev.raw)
	if _, err := v.Verify(r, nil); !errors.Is(err, ErrMissingCertificate) {
		t.Errorf("no certificates: %v", err)
	}
	if _, err := v.Verify(r, &Certificates{VLEK: ev.certs.VCEK}); !errors.Is(err, ErrMissingCertificate) {
		t.Errorf("VCEK-signed report with only a VLEK: %v", err)
	}
	unsigned := buildReport(t, reportOptions{product: Milan, tcb: defaultTestTCB})
	unsigned[0x48] = 7 << 2
	ru, err := ParseReport(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ru, ev.certs); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "not signed") {
		t.Errorf("unsigned report: %v", err)
	}
	if _, err := v.Verify(nil, ev.certs); !errors.Is(err, ErrMalformedReport) {
		t.Errorf("nil report: %v", err)
	}
}

func TestVerifyVLEKAndTurin(t *testing.T) {
	for name, o := range map[string]reportOptions{
		"Milan VLEK":    {vlek: true},
		"Genoa VLEK":    {vlek: true, product: Genoa},
		"Turin VCEK":    {product: Turin, version: 5, tcb: TCB{FMC: 1, Bootloader: 2, TEE: 3, SNP: 4, Microcode: 82}},
		"Milan v2":      {version: 2},
		"Genoa v3 VCEK": {product: Genoa},
	} {
		t.Run(name, func(t *testing.T) {
			ev := newTestEvidence(t, o)
			p := testPolicy(o)
			p.AllowVLEK = o.vlek
			vr, err := Validate(testVerifier(t, ev.roots, nil), p, ev.raw, ev.certs)
			if err != nil {
				t.Fatal(err)
			}
			if o.product != ProductUnknown && vr.Product != o.product {
				t.Errorf("product %v, want %v", vr.Product, o.product)
			}
			if o.vlek {
				p.AllowVLEK = false
				if err := p.Check(vr); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "VLEK") {
					t.Errorf("VLEK without AllowVLEK: %v", err)
				}
			}
		})
	}
}

// crlFor creates a CRL signed by issuer that revokes the given serials.
func crlFor(t *testing.T, issuer *x509.Certificate, key crypto.Signer, nextUpdate time.Time, revoked ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{
		Number:             big.NewInt(1),
		ThisUpdate:         testNow.Add(-24 * time.Hour),
		NextUpdate:         nextUpdate,
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	for _, s := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: testNow.Add(-48 * time.Hour)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestRevocation(t *testing.T) {
	ev := newTestEvidence(t, reportOptions{})
	pki := ev.pki
	future := testNow.Add(30 * 24 * time.Hour)
	past := testNow.Add(-time.Hour)
	strict := testPolicy(reportOptions{})
	strict.AllowMissingCRL = false
	tests := map[string]struct {
		crls       [][]byte
		wantVerify error
		wantStatus RevocationStatus
		wantPolicy error // with strict, which does not allow missing CRLs
	}{
		"no CRL":                      {nil, nil, CRLMissing, ErrCRLUnavailable},
		"current ARK CRL":             {[][]byte{crlFor(t, pki.ark, pki.arkKey, future, big.NewInt(12345))}, nil, CRLChecked, nil},
		"expired ARK CRL":             {[][]byte{crlFor(t, pki.ark, pki.arkKey, past)}, nil, CRLExpired, ErrCRLUnavailable},
		"ASK revoked":                 {[][]byte{crlFor(t, pki.ark, pki.arkKey, future, pki.ask.SerialNumber)}, ErrRevoked, 0, nil},
		"ASK revoked by expired CRL":  {[][]byte{crlFor(t, pki.ark, pki.arkKey, past, pki.ask.SerialNumber)}, ErrRevoked, 0, nil},
		"VCEK revoked by the ASK":     {[][]byte{crlFor(t, pki.ark, pki.arkKey, future), crlFor(t, pki.ask, pki.askKey, future, ev.certs.VCEK.SerialNumber)}, ErrRevoked, 0, nil},
		"only an ASK CRL":             {[][]byte{crlFor(t, pki.ask, pki.askKey, future)}, nil, CRLMissing, ErrCRLUnavailable},
		"VCEK serial in the ARK list": {[][]byte{crlFor(t, pki.ark, pki.arkKey, future, ev.certs.VCEK.SerialNumber)}, nil, CRLChecked, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := testVerifier(t, ev.roots, map[Product][][]byte{Milan: tc.crls})
			r, _ := ParseReport(ev.raw)
			vr, err := v.Verify(r, ev.certs)
			if tc.wantVerify != nil {
				if !errors.Is(err, tc.wantVerify) {
					t.Fatalf("got %v, want %v", err, tc.wantVerify)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if vr.Revocation != tc.wantStatus {
				t.Errorf("revocation %v, want %v", vr.Revocation, tc.wantStatus)
			}
			err = strict.Check(vr)
			if tc.wantPolicy == nil && err != nil || tc.wantPolicy != nil && !errors.Is(err, tc.wantPolicy) {
				t.Errorf("strict policy: %v, want %v", err, tc.wantPolicy)
			}
			if err := testPolicy(reportOptions{}).Check(vr); err != nil {
				t.Errorf("policy allowing missing CRLs: %v", err)
			}
		})
	}
}

func TestNewVerifierRejectsBadCRLs(t *testing.T) {
	milan, genoa := getTestPKI(t, Milan), getTestPKI(t, Genoa)
	roots := testRoots(t, Milan)
	future := testNow.Add(time.Hour)
	for name, tc := range map[string]struct {
		crls map[Product][][]byte
		want string
	}{
		"foreign issuer":    {map[Product][][]byte{Milan: {crlFor(t, genoa.ark, genoa.arkKey, future)}}, "not issued by the ARK, ASK or ASVK"},
		"product w/o roots": {map[Product][][]byte{Genoa: {crlFor(t, genoa.ark, genoa.arkKey, future)}}, "no trusted roots"},
		"garbage":           {map[Product][][]byte{Milan: {[]byte("not a CRL")}}, "CRL"},
		"forged signature":  {map[Product][][]byte{Milan: {forgeCRL(t, milan, future)}}, "signature does not verify"},
		"embedded AMD ARK":  {map[Product][][]byte{Milan: {crlFor(t, milan.ark, milan.arkKey, future)}}, "not issued"},
	} {
		t.Run(name, func(t *testing.T) {
			r := roots
			if name == "embedded AMD ARK" {
				r = AMDRoots()
			}
			_, err := NewVerifier(VerifierOptions{Roots: r, CRLs: tc.crls, Now: fixedNow})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// forgeCRL returns a CRL that names the Milan test ARK as issuer but is signed with another key.
func forgeCRL(t *testing.T, pki *testPKI, next time.Time) []byte {
	t.Helper()
	impostorT := caTemplate(t, "ARK-Milan")
	impostor := mustCreate(t, impostorT, impostorT, &pki.askKey.PublicKey, pki.askKey)
	return crlFor(t, impostor, pki.askKey, next)
}

func TestLoadCRLDir(t *testing.T) {
	pki := getTestPKI(t, Milan)
	der := crlFor(t, pki.ark, pki.arkKey, testNow.Add(time.Hour))
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("milan.crl", der)
	write("Milan-vlek.crl", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	write("README", []byte("ignored"))
	crls, err := LoadCRLDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(crls[Milan]) != 2 || len(crls) != 1 {
		t.Fatalf("loaded %v", crls)
	}
	if _, err := NewVerifier(VerifierOptions{Roots: testRoots(t, Milan), CRLs: crls, Now: fixedNow}); err != nil {
		t.Errorf("CRLs from the directory: %v", err)
	}
	write("amd.crl", der)
	if _, err := LoadCRLDir(dir); err == nil || !strings.Contains(err.Error(), "amd.crl") {
		t.Errorf("misnamed CRL: %v", err)
	}
	if _, err := LoadCRLDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing directory accepted")
	}
	if _, err := ParseCRL(append(append([]byte(nil), der...), 0)); !errors.Is(err, ErrMalformedCertificates) {
		t.Errorf("DER CRL with trailing data: %v", err)
	}
	if _, err := ParseCRL(append(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), "junk"...)); !errors.Is(err, ErrMalformedCertificates) {
		t.Errorf("PEM CRL with trailing data: %v", err)
	}
}
