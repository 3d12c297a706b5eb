package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

func testNonce(b byte) []byte { return bytes.Repeat([]byte{b}, attestation.NonceSize) }

// clusterPolicy accepts the reports of signingResponder and testReporter; the validator sets REPORT_DATA.
func clusterPolicy() *Policy {
	p := testPolicy(reportOptions{measurement: [48]byte{7}})
	p.ReportData = nil
	return p
}

// testQEMUValidator trusts the Milan test PKI.
func testQEMUValidator(t *testing.T, p *Policy) *Validator {
	t.Helper()
	v, err := NewValidator(testVerifier(t, testRoots(t, Milan), nil), p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// qemuIssuer issues qemu-sev-snp evidence through the configfs-tsm reporter on a fake configfs whose
// "firmware" signs reports with the Milan test PKI.
func qemuIssuer(t *testing.T) *Issuer {
	f := newFakeTSM(t, signingResponder(t))
	return NewIssuer(&ConfigFSReporter{Root: f.root, fs: f})
}

// mutateDoc decodes evidence, applies fn, and encodes it again.
func mutateDoc(t *testing.T, ev []byte, fn func(*attestation.Document)) []byte {
	t.Helper()
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	fn(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestQEMUIssueValidate(t *testing.T) {
	ctx := context.Background()
	iss := qemuIssuer(t)
	if iss.Variant().Name != "qemu-sev-snp" {
		t.Fatalf("variant %v", iss.Variant())
	}
	ev, err := iss.Issue(ctx, testNonce(1), []byte("tls key hash"))
	if err != nil {
		t.Fatal(err)
	}
	v := testQEMUValidator(t, clusterPolicy())
	if v.Variant().Name != "qemu-sev-snp" {
		t.Fatalf("variant %v", v.Variant())
	}
	got, err := v.Validate(ctx, ev, testNonce(1))
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if string(got) != "tls key hash" {
		t.Fatalf("user data %q", got)
	}
	// Certificates as a PEM chain instead of the table verify as well.
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertTable(doc.SNP.CertTable)
	if err != nil {
		t.Fatal(err)
	}
	asChain := mutateDoc(t, ev, func(d *attestation.Document) {
		d.SNP.CertTable = nil
		d.SNP.CertChain = pemCerts(certs.VCEK, certs.Intermediate, certs.ARK)
	})
	if _, err := v.Validate(ctx, asChain, testNonce(1)); err != nil {
		t.Fatalf("Validate with a PEM chain: %v", err)
	}
	// The VCEK in the table, ASK and ARK in the chain.
	split := mutateDoc(t, ev, func(d *attestation.Document) {
		d.SNP.CertTable = MarshalCertTable(&Certificates{VCEK: certs.VCEK})
		d.SNP.CertChain = pemCerts(certs.Intermediate, certs.ARK)
	})
	if _, err := v.Validate(ctx, split, testNonce(1)); err != nil {
		t.Fatalf("Validate with table and chain: %v", err)
	}
}

func TestQEMUValidateRejects(t *testing.T) {
	ctx := context.Background()
	ev, err := qemuIssuer(t).Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	v := testQEMUValidator(t, clusterPolicy())
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertTable(doc.SNP.CertTable)
	if err != nil {
		t.Fatal(err)
	}
	otherEv, err := qemuIssuer(t).Issue(ctx, testNonce(2), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	otherDoc, err := attestation.ParseDocument(otherEv)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(off int) []byte {
		return mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.Report[off] ^= 1 })
	}
	for name, tc := range map[string]struct {
		evidence []byte
		nonce    []byte
		target   error
		want     string
	}{
		"wrong nonce":               {ev, testNonce(2), ErrReportData, "REPORT_DATA"},
		"wrong user data":           {mutateDoc(t, ev, func(d *attestation.Document) { d.UserData = []byte("other") }), testNonce(1), ErrReportData, "REPORT_DATA"},
		"no user data":              {mutateDoc(t, ev, func(d *attestation.Document) { d.UserData = nil }), testNonce(1), ErrReportData, "REPORT_DATA"},
		"report of another request": {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP = otherDoc.SNP }), testNonce(1), ErrReportData, "REPORT_DATA"},
		"tampered measurement":      {flip(0x90), testNonce(1), ErrSignature, "signature"},
		"tampered REPORT_DATA":      {flip(0x50), testNonce(1), ErrSignature, "signature"},
		"tampered reserved":         {flip(0x4c), testNonce(1), ErrMalformedReport, "reserved"},
		"tampered signature":        {flip(0x2a0), testNonce(1), ErrSignature, "signature"},
		"no SNP part":               {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP = nil }), testNonce(1), nil, "has no SEV-SNP report"},
		"no certificates":           {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.CertTable = nil }), testNonce(1), ErrMissingCertificate, "no certificate table"},
		"no VCEK":                   {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.CertTable = MarshalCertTable(&Certificates{ARK: certs.ARK}) }), testNonce(1), ErrMissingCertificate, "no VCEK"},
		"VCEK twice":                {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.CertChain = pemCerts(certs.VCEK) }), testNonce(1), ErrMalformedCertificates, "two VCEK"},
		"garbage table":             {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.CertTable = []byte{1, 2, 3} }), testNonce(1), ErrMalformedCertificates, ""},
		"TPM part":                  {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM = &attestation.TPMEvidence{} }), testNonce(1), attestation.ErrMalformedDocument, "has no TPM part"},
		"variant mismatch":          {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.GCPSEVSNP.Name }), testNonce(1), nil, `accepts "qemu-sev-snp"`},
		"TDX variant":               {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.QEMUTDX.Name }), testNonce(1), attestation.ErrMalformedDocument, "qemu-tdx evidence has no SEV-SNP part"},
		"short nonce":               {ev, []byte("short"), attestation.ErrInvalidNonce, ""},
		"not a document":            {[]byte("{}"), testNonce(1), attestation.ErrMalformedDocument, ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := v.Validate(ctx, tc.evidence, tc.nonce)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error %v, want %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}

	// The policy decides what a verified report must show; every violation is reported.
	strict := clusterPolicy()
	strict.Measurements = []HexBytes{bytes.Repeat([]byte{8}, MeasurementSize)}
	strict.MinimumTCB[Milan] = TCB{Bootloader: 9, SNP: 9, Microcode: 200}
	_, err = testQEMUValidator(t, strict).Validate(ctx, ev, testNonce(1))
	var pe *PolicyError
	if !errors.As(err, &pe) || len(pe.Violations) < 3 || !strings.Contains(err.Error(), "launch measurement") || !strings.Contains(err.Error(), "microcode") {
		t.Errorf("strict policy: %v", err)
	}

	// The production verifier trusts only AMD's roots: test-PKI evidence fails the chain.
	prod, err := NewValidator(genuineVerifier(t), clusterPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prod.Validate(ctx, ev, testNonce(1)); !errors.Is(err, ErrChain) {
		t.Errorf("embedded roots: %v, want ErrChain", err)
	}
}

// TestQEMUValidateGenuineReport wraps the genuine Milan report in a qemu-sev-snp document. Its signature
// and chain are AMD's, but it binds no nonce of ours and its guest is debuggable, so the validator refuses it
// and says why.
func TestQEMUValidateGenuineReport(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	doc := &attestation.Document{
		Version: attestation.DocumentVersion, Variant: attestation.QEMUSEVSNP.Name,
		SNP: &attestation.SNPEvidence{Report: raw, CertTable: MarshalCertTable(genuineCerts(t))},
	}
	ev, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := genuinePolicy(t)
	p.ReportData, p.AllowDebug = nil, false
	v, err := NewValidator(genuineVerifier(t), p)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Validate(context.Background(), ev, testNonce(1))
	if !errors.Is(err, ErrReportData) || !strings.Contains(err.Error(), "DEBUG") {
		t.Errorf("genuine report as qemu-sev-snp evidence: %v", err)
	}
}

func TestNewValidatorRejectsPolicies(t *testing.T) {
	verifier := testVerifier(t, testRoots(t, Milan), nil)
	withDebug := clusterPolicy()
	withDebug.AllowDebug = true
	withRD := clusterPolicy()
	withRD.ReportData = make([]byte, ReportDataSize)
	for name, tc := range map[string]struct {
		verifier *Verifier
		policy   *Policy
		want     string
	}{
		"nil policy":     {verifier, nil, "no policy"},
		"empty policy":   {verifier, &Policy{}, "no accepted launch measurement"},
		"allowDebug":     {verifier, withDebug, "allowDebug"},
		"reportData set": {verifier, withRD, "reportData is set"},
		"no verifier":    {nil, clusterPolicy(), "no verifier"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewValidator(tc.verifier, tc.policy)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewValidator = %v, want %q", err, tc.want)
			}
		})
	}
	// The validator keeps its own copy: changing the caller's policy later changes nothing.
	p := clusterPolicy()
	v, err := NewValidator(verifier, p)
	if err != nil {
		t.Fatal(err)
	}
	p.AllowDebug = true
	p.Measurements[0][0] ^= 1
	p.MinimumTCB[Milan] = TCB{Bootloader: 255, SNP: 255, Microcode: 255}
	ev, err := qemuIssuer(t).Issue(context.Background(), testNonce(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(context.Background(), ev, testNonce(1)); err != nil || v.policy.AllowDebug {
		t.Fatalf("the validator shares the caller's policy: %v", err)
	}
	// A validator not made by its constructor refuses everything.
	for _, zero := range []attestation.Validator{&Validator{}, &VTPMValidator{}} {
		if _, err := zero.Validate(context.Background(), ev, testNonce(1)); err == nil || !strings.Contains(err.Error(), "not initialised") {
			t.Errorf("zero %T: %v", zero, err)
		}
	}
}

// fixedReporter answers with a report signed by the test PKI, altered by its options.
type fixedReporter struct {
	t       testing.TB
	vlek    bool
	policy  uint64
	noCerts bool
	// otherData makes the report carry other REPORT_DATA than requested.
	otherData bool
	// endorsementKey is the certificate of the key that signed the last report.
	endorsementKey *x509.Certificate
}

func (r *fixedReporter) Report(_ context.Context, rd [ReportDataSize]byte) (*Evidence, error) {
	pki := getTestPKI(r.t, Milan)
	cert, key := pki.endorsementKey(r.t, ekOptions{vlek: r.vlek, tcb: defaultTestTCB})
	r.endorsementKey = cert
	certs := &Certificates{VCEK: cert, Intermediate: pki.ask, ARK: pki.ark}
	if r.vlek {
		certs = &Certificates{VLEK: cert, Intermediate: pki.asvk, ARK: pki.ark}
	}
	if r.otherData {
		rd[0] ^= 1
	}
	o := reportOptions{product: Milan, tcb: defaultTestTCB, vlek: r.vlek, policy: r.policy, reportData: rd, measurement: [48]byte{7}}
	ev := &Evidence{Report: signReport(r.t, buildReport(r.t, o), key)}
	if !r.noCerts {
		ev.CertTable = MarshalCertTable(certs)
	}
	return ev, nil
}

func TestIssuerChecksReports(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct {
		reporter Reporter
		want     string
	}{
		"other REPORT_DATA": {&fixedReporter{t: t, otherData: true}, "other REPORT_DATA"},
		"debug guest":       {&fixedReporter{t: t, policy: 0xb0000}, "allows debugging"},
		"no certificates":   {&fixedReporter{t: t, noCerts: true}, "no certificate table"},
		"reporter fails":    {&ConfigFSReporter{Root: t.TempDir() + "/missing"}, "configfs-tsm"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewIssuer(tc.reporter).Issue(ctx, testNonce(1), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Issue = %v, want %q", err, tc.want)
			}
		})
	}
	iss := NewIssuer(&fixedReporter{t: t})
	if _, err := iss.Issue(ctx, []byte("short"), nil); !errors.Is(err, attestation.ErrInvalidNonce) {
		t.Errorf("short nonce: %v", err)
	}
	if _, err := iss.Issue(ctx, testNonce(1), make([]byte, attestation.MaxUserDataSize+1)); err == nil {
		t.Error("oversized user data accepted")
	}
}

// FuzzValidator runs the qemu-sev-snp validator on mutated evidence documents: nothing panics, and whatever
// validates is bound to the user data of the one signed report.
func FuzzValidator(f *testing.F) {
	ctx := context.Background()
	ev, err := NewIssuer(&fixedReporter{t: f}).Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ev)
	f.Add(bytes.Replace(ev, []byte(`"version":1`), []byte(`"version":1,"tpm":{"quotes":null}`), 1))
	v, err := NewValidator(testVerifier(f, testRoots(f, Milan), nil), clusterPolicy())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := v.Validate(ctx, data, testNonce(1))
		if err == nil && string(got) != "user" {
			t.Fatalf("evidence with user data %q validated", got)
		}
	})
}

func pemCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// The size bounds of the evidence document agree with the parsers.
func TestDocumentBounds(t *testing.T) {
	if attestation.SNPReportSize != ReportSize || attestation.MaxSNPCertSize != MaxCertDataSize {
		t.Fatalf("attestation bounds %d/%d, snp %d/%d", attestation.SNPReportSize, attestation.MaxSNPCertSize, ReportSize, MaxCertDataSize)
	}
}
