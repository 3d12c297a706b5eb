package tdx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

func testNonce(b byte) []byte { return bytes.Repeat([]byte{b}, attestation.NonceSize) }

// signingTSM is a configfs-tsm whose "TDX module and quoting enclave" sign quotes of the default test TD
// with the test PKI, for the REPORT_DATA written to inblob.
func signingTSM(t *testing.T, p *testPKI, change func(*testQuote)) *fakeConfigfs {
	return newFakeConfigfs(t, func(in []byte) ([]byte, error) {
		tq := p.newQuote()
		copy(tq.body.ReportData[:], in)
		if change != nil {
			change(tq)
		}
		return p.build(t, tq), nil
	})
}

// clusterPolicy accepts the default test TD; the validator sets REPORT_DATA.
func clusterPolicy() *Policy {
	p := testPolicy([64]byte{})
	p.ReportData = nil
	return p
}

// testValidator trusts the test PKI's root and verifies at testNow.
func testValidator(t testing.TB, p *testPKI, c *Collateral, pol *Policy) *Validator {
	t.Helper()
	v, err := NewValidator(c, pol, func() time.Time { return testNow })
	if err != nil {
		t.Fatal(err)
	}
	v.root = p.root
	return v
}

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
	p := newTestPKI(t)
	f := signingTSM(t, p, nil)
	iss := NewIssuer(f.tsm())
	if iss.Variant().Name != "qemu-tdx" {
		t.Fatalf("variant %v", iss.Variant())
	}
	ev, err := iss.Issue(ctx, testNonce(1), []byte("tls key hash"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkClean(t)
	v := testValidator(t, p, p.collateral(t, p.newCollateral()), clusterPolicy())
	if v.Variant().Name != "qemu-tdx" {
		t.Fatalf("variant %v", v.Variant())
	}
	got, err := v.Validate(ctx, ev, testNonce(1))
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if string(got) != "tls key hash" {
		t.Fatalf("user data %q", got)
	}
	// The production validator trusts only Intel's root.
	prod, err := NewValidator(p.collateral(t, p.newCollateral()), clusterPolicy(), func() time.Time { return testNow })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prod.Validate(ctx, ev, testNonce(1)); !errors.Is(err, ErrUntrustedCertificate) {
		t.Errorf("embedded root: %v, want ErrUntrustedCertificate", err)
	}
}

func TestQEMUValidateRejects(t *testing.T) {
	ctx := context.Background()
	p := newTestPKI(t)
	ev, err := NewIssuer(signingTSM(t, p, nil).tsm()).Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	otherEv, err := NewIssuer(signingTSM(t, p, nil).tsm()).Issue(ctx, testNonce(2), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	otherDoc, err := attestation.ParseDocument(otherEv)
	if err != nil {
		t.Fatal(err)
	}
	oldTCB, err := NewIssuer(signingTSM(t, p, func(q *testQuote) { q.body.TEETCBSVN[2] = 4 }).tsm()).Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	otherMRTD, err := NewIssuer(signingTSM(t, p, func(q *testQuote) { q.body.MRTD[0] ^= 1 }).tsm()).Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	c := p.collateral(t, p.newCollateral())
	v := testValidator(t, p, c, clusterPolicy())
	// Offsets in the quote: header 48 bytes, then the TD report (MRTD at 136, REPORT_DATA at 520).
	flip := func(off int) []byte {
		return mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.Quote[off] ^= 1 })
	}
	for name, tc := range map[string]struct {
		evidence []byte
		nonce    []byte
		target   error
		want     string
	}{
		"wrong nonce":              {ev, testNonce(2), ErrPolicy, "REPORT_DATA does not match"},
		"wrong user data":          {mutateDoc(t, ev, func(d *attestation.Document) { d.UserData = []byte("other") }), testNonce(1), ErrPolicy, "REPORT_DATA does not match"},
		"quote of another request": {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX = otherDoc.TDX }), testNonce(1), ErrPolicy, "REPORT_DATA does not match"},
		"tampered MRTD":            {flip(48 + 136), testNonce(1), ErrInvalidSignature, "signature"},
		"tampered REPORT_DATA":     {flip(48 + 520), testNonce(1), ErrInvalidSignature, "signature"},
		"truncated quote":          {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.Quote = d.TDX.Quote[:1000] }), testNonce(1), ErrMalformedQuote, ""},
		"trailing bytes":           {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.Quote = append(d.TDX.Quote, 0) }), testNonce(1), ErrMalformedQuote, ""},
		"other MRTD":               {otherMRTD, testNonce(1), ErrPolicy, "MRTD"},
		"out-of-date TCB":          {oldTCB, testNonce(1), ErrPolicy, "TCB status OutOfDate is not accepted"},
		"no TDX part":              {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX = nil }), testNonce(1), nil, "has no TDX quote"},
		"TPM part":                 {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM = &attestation.TPMEvidence{} }), testNonce(1), attestation.ErrMalformedDocument, "has no TPM part"},
		"variant mismatch":         {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.AzureTDX.Name }), testNonce(1), nil, `accepts "qemu-tdx"`},
		"SNP variant":              {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.QEMUSEVSNP.Name }), testNonce(1), attestation.ErrMalformedDocument, "qemu-sev-snp evidence has no TDX part"},
		"short nonce":              {ev, []byte("short"), attestation.ErrInvalidNonce, ""},
		"not a document":           {[]byte("{}"), testNonce(1), attestation.ErrMalformedDocument, ""},
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

	// Expired collateral: every validation fails until the cache is refreshed.
	late := testValidator(t, p, c, clusterPolicy())
	late.now = func() time.Time { return testNow.Add(60 * 24 * time.Hour) }
	if _, err := late.Validate(ctx, ev, testNonce(1)); err == nil || !strings.Contains(err.Error(), "expired") && !strings.Contains(err.Error(), "next update") {
		t.Errorf("expired collateral: %v", err)
	}
	// The policy may accept an out-of-date TCB explicitly.
	lenient := clusterPolicy()
	lenient.AcceptedTCBStatuses = []TCBStatus{TCBStatusUpToDate, TCBStatusOutOfDate}
	if _, err := testValidator(t, p, c, lenient).Validate(ctx, oldTCB, testNonce(1)); err != nil {
		t.Errorf("out-of-date TCB, accepted by the policy: %v", err)
	}
}

// TestQEMUValidateGenuineQuote wraps the genuine quote in a qemu-tdx document: it verifies with Intel's
// root and collateral, but it binds no nonce of ours and its platform TCB is NotSupported, so the validator
// refuses it and says why.
func TestQEMUValidateGenuineQuote(t *testing.T) {
	raw := genuineQuote(t)
	doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.QEMUTDX.Name, TDX: &attestation.TDXEvidence{Quote: raw}}
	ev, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	q := mustParseQuote(t, raw)
	v, err := NewValidator(mustParseCollateral(t, genuineCollateralFiles(t)), genuinePolicy(q), func() time.Time { return genuineTime })
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Validate(context.Background(), ev, testNonce(1))
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "REPORT_DATA does not match") || !strings.Contains(err.Error(), "TCB status NotSupported") {
		t.Errorf("genuine quote as qemu-tdx evidence: %v", err)
	}
}

// genuinePolicy accepts the genuine quote's MRTD and RTMRs.
func genuinePolicy(q *Quote) *Policy {
	return &Policy{MRTD: []HexBytes{q.Body.MRTD[:]}, RTMR0: q.Body.RTMR[0][:], RTMR1: q.Body.RTMR[1][:], RTMR2: q.Body.RTMR[2][:], RTMR3: q.Body.RTMR[3][:]}
}

// Without a vTPM, MRTD measures only the TD's firmware, which boots any kernel: a qemu-tdx policy with only
// MRTD would accept the genuine quote's platform running any image. It is not a policy.
func TestQEMUPolicyWithOnlyMRTDIsInvalid(t *testing.T) {
	q := mustParseQuote(t, genuineQuote(t))
	coll := mustParseCollateral(t, genuineCollateralFiles(t))
	onlyMRTD := &Policy{MRTD: []HexBytes{q.Body.MRTD[:]}}
	if v, err := NewValidator(coll, onlyMRTD, func() time.Time { return genuineTime }); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "rtmr0, rtmr1, rtmr2, rtmr3 not set") {
		t.Fatalf("NewValidator(only MRTD) = %v, %v; want ErrInvalidPolicy naming the RTMRs", v, err)
	}
	for i := range 4 {
		p := genuinePolicy(q)
		*[]*HexBytes{&p.RTMR0, &p.RTMR1, &p.RTMR2, &p.RTMR3}[i] = nil
		if err := p.ValidateForClusterWithoutVTPM(); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), fmt.Sprintf("rtmr%d not set", i)) {
			t.Errorf("policy without rtmr%d: %v", i, err)
		}
	}
	if err := genuinePolicy(q).ValidateForClusterWithoutVTPM(); err != nil {
		t.Fatalf("MRTD and RTMR0-3: %v", err)
	}
	// A TD under a paravisor with a vTPM (azure-tdx) has the vTPM's PCRs besides.
	if err := onlyMRTD.ValidateForCluster(); err != nil {
		t.Errorf("ValidateForCluster(only MRTD) = %v", err)
	}
	// tdAttributes, if set, must have SEPT_VE_DISABLE for a TD without a paravisor.
	p := genuinePolicy(q)
	p.TDAttributes = q.Body.TDAttributes[:]
	if err := p.ValidateForClusterWithoutVTPM(); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "SEPT_VE_DISABLE clear") {
		t.Errorf("tdAttributes without SEPT_VE_DISABLE: %v", err)
	}
}

// The genuine quote's TD runs with SEPT_VE_DISABLE clear (TDATTRIBUTES 0000004000000000: PKS only). Its
// signatures verify (step 2), and the policy (step 3) refuses it for that attribute, whatever else matches.
// MIGRATABLE is checked on the same verified quote with the attribute set after verification: a quote
// signed with it is refused by the policy step, which sees only the verified body.
func TestGenuineQuoteAttributes(t *testing.T) {
	q := mustParseQuote(t, genuineQuote(t))
	coll := mustParseCollateral(t, genuineCollateralFiles(t))
	verified, err := Verify(q, coll, genuineTime)
	if err != nil {
		t.Fatalf("the genuine quote does not verify: %v", err)
	}
	if q.Body.SEPTVEDisable() || q.Body.Migratable() {
		t.Fatalf("genuine TD attributes %x: the test expects SEPT_VE_DISABLE and MIGRATABLE clear", q.Body.TDAttributes)
	}
	pol := genuinePolicy(q)
	pol.AcceptedTCBStatuses = []TCBStatus{TCBStatusUpToDate, TCBStatusOutOfDate}
	check := func(p *Policy, v *VerifiedQuote) []string {
		t.Helper()
		err := p.WithReportData(q.Body.ReportData).Check(v)
		var pe *PolicyError
		if !errors.As(err, &pe) {
			t.Fatalf("Check = %v, want a *PolicyError", err)
		}
		return pe.Violations
	}
	has := func(list []string, sub string) bool {
		return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
	}
	violations := check(pol, verified)
	if !has(violations, "SEPT_VE_DISABLE clear") || has(violations, "MIGRATABLE") || has(violations, "MRTD") || has(violations, "RTMR") || has(violations, "REPORT_DATA") {
		t.Errorf("genuine quote: violations %q, want SEPT_VE_DISABLE among them and no measurement", violations)
	}

	migratable := *verified
	body := *verified.Quote
	body.Body.TDAttributes[3] |= tdAttributeSEPTVEDisable | tdAttributeMigratable
	migratable.Quote = &body
	violations = check(pol, &migratable)
	if !has(violations, "MIGRATABLE set") || has(violations, "SEPT_VE_DISABLE") {
		t.Errorf("migratable TD: violations %q, want MIGRATABLE", violations)
	}
	allow := pol.Clone()
	allow.AllowMigratable = true
	if violations := check(allow, &migratable); has(violations, "MIGRATABLE") {
		t.Errorf("allowMigratable: violations %q", violations)
	}
	// Under a paravisor (azure-tdx) SEPT_VE_DISABLE is the paravisor's business; MIGRATABLE is refused there too.
	if err := pol.WithReportData(q.Body.ReportData).checkUnderParavisor(verified); err == nil || strings.Contains(err.Error(), "SEPT_VE_DISABLE") {
		t.Errorf("under a paravisor: %v", err)
	}
	if err := pol.WithReportData(q.Body.ReportData).checkUnderParavisor(&migratable); err == nil || !strings.Contains(err.Error(), "MIGRATABLE set") {
		t.Errorf("migratable under a paravisor: %v", err)
	}
}

func TestNewValidatorRejects(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	withRD := clusterPolicy()
	withRD.ReportData = make([]byte, ReportDataSize)
	debug := clusterPolicy()
	debug.TDAttributes = HexBytes{1, 0, 0, 0, 0, 0, 0, 0}
	for name, tc := range map[string]struct {
		c    *Collateral
		p    *Policy
		want string
	}{
		"nil policy":       {c, nil, "no policy"},
		"empty policy":     {c, &Policy{}, "no accepted MRTD"},
		"reportData set":   {c, withRD, "reportData is set"},
		"debug TD":         {c, debug, "debug"},
		"no collateral":    {nil, clusterPolicy(), "collateral"},
		"empty collateral": {&Collateral{}, clusterPolicy(), "collateral"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewValidator(tc.c, tc.p, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewValidator = %v, want %q", err, tc.want)
			}
		})
	}
	// The validator keeps its own copy of the policy.
	pol := clusterPolicy()
	v := testValidator(t, p, c, pol)
	pol.MRTD[0][0] ^= 1
	pol.RTMR0[0] ^= 1
	ev, err := NewIssuer(signingTSM(t, p, nil).tsm()).Issue(context.Background(), testNonce(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(context.Background(), ev, testNonce(1)); err != nil {
		t.Fatalf("the validator shares the caller's policy: %v", err)
	}
	if _, err := (&Validator{}).Validate(context.Background(), ev, testNonce(1)); err == nil || !strings.Contains(err.Error(), "not initialised") {
		t.Errorf("zero validator: %v", err)
	}
	// Every problem of a policy is listed.
	bad := &Policy{MRTD: []HexBytes{{1}}, RTMR2: HexBytes{1}, XFAM: HexBytes{1}, AcceptedTCBStatuses: []TCBStatus{"Fine", TCBStatusRevoked}}
	err = bad.ValidateForCluster()
	for _, want := range []string{"mrtd[0] has 1 bytes", "rtmr2 has 1 bytes", "xfam has 1 bytes", `"Fine" is not a TCB status`, "Revoked cannot be accepted"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateForCluster = %v, want it to mention %q", err, want)
		}
	}
}

func TestIssuerIssueRejects(t *testing.T) {
	ctx := context.Background()
	p := newTestPKI(t)
	for name, tc := range map[string]struct {
		change func(*testQuote)
		want   string
	}{
		"debug TD":          {func(q *testQuote) { q.body.TDAttributes[0] |= 1 }, "debug mode"},
		"other REPORT_DATA": {func(q *testQuote) { q.body.ReportData[0] ^= 1 }, "other REPORT_DATA"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewIssuer(signingTSM(t, p, tc.change).tsm()).Issue(ctx, testNonce(1), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Issue = %v, want %q", err, tc.want)
			}
		})
	}
	iss := NewIssuer(signingTSM(t, p, nil).tsm())
	if _, err := iss.Issue(ctx, []byte("short"), nil); !errors.Is(err, attestation.ErrInvalidNonce) {
		t.Errorf("short nonce: %v", err)
	}
	if _, err := iss.Issue(ctx, testNonce(1), make([]byte, attestation.MaxUserDataSize+1)); err == nil {
		t.Error("oversized user data accepted")
	}
	if _, err := NewIssuer(nil).Issue(ctx, testNonce(1), nil); err == nil {
		t.Error("issuer without provider")
	}
}

func TestNewVTPMValidatorVariants(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	v, err := NewVTPMValidator(attestation.AzureTDX, c, clusterPolicy(), measurements.M{4: {}, 8: {}}, nil, nil)
	if err != nil || v.Variant().Name != attestation.AzureTDX.Name {
		t.Errorf("azure-tdx validator: %v, %v", v, err)
	}
	if _, err := NewVTPMValidator(attestation.AzureTDX, nil, clusterPolicy(), measurements.M{4: {}, 8: {}}, nil, nil); !errors.Is(err, ErrNoCollateral) {
		t.Errorf("azure-tdx validator without collateral: %v", err)
	}
	if _, err := NewVTPMValidator(attestation.QEMUTDX, c, clusterPolicy(), measurements.M{4: {}, 8: {}}, nil, nil); err == nil || !strings.Contains(err.Error(), "not a TDX variant with a vTPM") {
		t.Errorf("qemu-tdx as a vTPM variant: %v", err)
	}
}

// The size bound of the evidence document agrees with the quote parser.
func TestDocumentBounds(t *testing.T) {
	if attestation.MaxTDXQuoteSize != MaxQuoteSize {
		t.Fatalf("attestation.MaxTDXQuoteSize %d, MaxQuoteSize %d", attestation.MaxTDXQuoteSize, MaxQuoteSize)
	}
}

// FuzzValidator runs the qemu-tdx validator on mutated evidence documents: nothing panics, and whatever
// validates is bound to the user data of the one signed quote.
func FuzzValidator(f *testing.F) {
	ctx := context.Background()
	p := newTestPKI(f)
	tq := p.newQuote()
	tq.body.ReportData = ReportDataForNonce(attestation.QEMUTDX, testNonce(1), []byte("user"))
	doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.QEMUTDX.Name, UserData: []byte("user"), TDX: &attestation.TDXEvidence{Quote: p.build(f, tq)}}
	ev, err := doc.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ev)
	v := testValidator(f, p, p.collateral(f, p.newCollateral()), clusterPolicy())
	if _, err := v.Validate(ctx, ev, testNonce(1)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := v.Validate(ctx, data, testNonce(1))
		if err == nil && string(got) != "user" {
			t.Fatalf("evidence with user data %q validated", got)
		}
	})
}
