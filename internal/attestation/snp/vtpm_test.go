package snp

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// softVTPM is a vTPM in software: an ECDSA P-256 attestation key that signs TPMS_ATTEST quotes encoded as a
// TPM does, over PCR values that replay a measured event log.
type softVTPM struct {
	key       *ecdsa.PrivateKey
	log       *eventlog.Builder
	selection []uint32 // quoted PCRs; default 0-23
}

func newSoftVTPM(t testing.TB) *softVTPM {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	log := eventlog.NewBuilder()
	log.Append(measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:1111"))
	log.Append(measurements.PCRBootParams, eventlog.IPL, []byte("boot parameters: console=ttyS0"))
	return &softVTPM{key: key, log: log}
}

func (s *softVTPM) AttestationKey() crypto.PublicKey { return &s.key.PublicKey }

// pcrs returns the SHA-256 PCR values the event log produces (zero where nothing was measured).
func (s *softVTPM) pcrs() map[uint32][]byte {
	replayed := eventlog.Replay(s.log.Events())
	out := map[uint32][]byte{}
	for i := range uint32(measurements.NumPCRs) {
		v := replayed[i]
		out[i] = v[:]
	}
	return out
}

// policy accepts the measured PCRs 4 and 8.
func (s *softVTPM) policy() measurements.M {
	p := measurements.M{}
	for _, idx := range []uint32{measurements.PCRNodeImage, measurements.PCRBootParams} {
		p[idx] = measurements.Measurement{Expected: measurements.Digest(s.pcrs()[idx])}
	}
	return p
}

func (s *softVTPM) Quote(_ context.Context, qualifyingData []byte) (*attestation.TPMEvidence, error) {
	sel := s.selection
	if sel == nil {
		for i := range uint32(measurements.NumPCRs) {
			sel = append(sel, i)
		}
	}
	pcrs := s.pcrs()
	h := sha256.New()
	var bitmap [3]byte
	for _, i := range sel {
		h.Write(pcrs[i])
		bitmap[i/8] |= 1 << (i % 8)
	}
	var q bytes.Buffer
	be := func(v any) { _ = binary.Write(&q, binary.BigEndian, v) }
	tpm2b := func(b []byte) { be(uint16(len(b))); q.Write(b) }
	be(uint32(0xff544347)) // TPM_GENERATED_VALUE
	be(uint16(0x8018))     // TPM_ST_ATTEST_QUOTE
	tpm2b(append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{0x42}, 32)...))
	tpm2b(qualifyingData)
	be(uint64(123456)) // clock
	be(uint32(1))      // reset count
	be(uint32(0))      // restart count
	q.WriteByte(1)     // safe
	be(uint64(0x2023)) // firmware version
	be(uint32(1))      // one PCR selection
	be(uint16(tpmAlgSHA256))
	q.WriteByte(3)
	q.Write(bitmap[:])
	tpm2b(h.Sum(nil))

	digest := sha256.Sum256(q.Bytes())
	r, sv, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return nil, err
	}
	var sig bytes.Buffer
	_ = binary.Write(&sig, binary.BigEndian, uint16(0x0018)) // TPM_ALG_ECDSA
	_ = binary.Write(&sig, binary.BigEndian, uint16(tpmAlgSHA256))
	for _, n := range []*big.Int{r, sv} {
		_ = binary.Write(&sig, binary.BigEndian, uint16(32))
		sig.Write(n.FillBytes(make([]byte, 32)))
	}
	return &attestation.TPMEvidence{
		Quotes:   []attestation.Quote{{Quote: q.Bytes(), Signature: sig.Bytes(), PCRs: pcrs}},
		EventLog: s.log.Bytes(),
	}, nil
}

func testVTPMValidator(t testing.TB, variant attestation.Variant, p *Policy, pcrs measurements.M) *VTPMValidator {
	t.Helper()
	v, err := NewVTPMValidator(variant, testVerifier(t, testRoots(t, Milan), nil), p, pcrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVTPMIssueValidate(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		variant attestation.Variant
		vlek    bool
	}{{attestation.GCPSEVSNP, false}, {attestation.AWSSEVSNP, true}} {
		t.Run(tc.variant.Name, func(t *testing.T) {
			tpm := newSoftVTPM(t)
			iss, err := NewVTPMIssuer(tc.variant, &fixedReporter{t: t, vlek: tc.vlek}, tpm)
			if err != nil {
				t.Fatal(err)
			}
			if iss.Variant().Name != tc.variant.Name {
				t.Fatalf("variant %v", iss.Variant())
			}
			ev, err := iss.Issue(ctx, testNonce(1), []byte("tls key hash"))
			if err != nil {
				t.Fatal(err)
			}
			p := clusterPolicy()
			p.AllowVLEK = tc.vlek
			v := testVTPMValidator(t, tc.variant, p, tpm.policy())
			if v.Variant().Name != tc.variant.Name {
				t.Fatalf("variant %v", v.Variant())
			}
			got, err := v.Validate(ctx, ev, testNonce(1))
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if string(got) != "tls key hash" {
				t.Fatalf("user data %q", got)
			}
			doc, err := attestation.ParseDocument(ev)
			if err != nil {
				t.Fatal(err)
			}
			if doc.TPM.AKCert != nil || len(doc.TPM.AKPublic) == 0 || doc.SNP == nil {
				t.Errorf("document parts: %+v", doc)
			}
		})
	}
}

// On GCP the host attaches no certificate table: the gcp-sev-snp issuer sends the report alone, and a
// verifier with the VCEK in its offline cache validates it. The other variants refuse to issue without one.
func TestVTPMIssueWithoutCertificates(t *testing.T) {
	ctx := context.Background()
	tpm := newSoftVTPM(t)
	aws, err := NewVTPMIssuer(attestation.AWSSEVSNP, &fixedReporter{t: t, noCerts: true}, tpm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := aws.Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "no certificate table") {
		t.Fatalf("aws-sev-snp without certificates: %v", err)
	}
	reporter := &fixedReporter{t: t, noCerts: true}
	gcp, err := NewVTPMIssuer(attestation.GCPSEVSNP, reporter, tpm)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := gcp.Issue(ctx, testNonce(1), []byte("tls key hash"))
	if err != nil {
		t.Fatalf("gcp-sev-snp without certificates: %v", err)
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.SNP.CertTable) != 0 || len(doc.SNP.CertChain) != 0 {
		t.Fatal("the evidence carries certificates")
	}
	// Without a cache the VCEK is missing; with it in the cache the evidence validates.
	if _, err := testVTPMValidator(t, attestation.GCPSEVSNP, clusterPolicy(), tpm.policy()).Validate(ctx, ev, testNonce(1)); !errors.Is(err, ErrMissingCertificate) {
		t.Fatalf("without a VCEK cache: %v", err)
	}
	report, err := ParseReport(doc.SNP.Report)
	if err != nil {
		t.Fatal(err)
	}
	k, err := VCEKKeyFor(report, Milan)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := NewVCEKCacheFromEntries(map[string][]byte{k.FileName(): reporter.endorsementKey.Raw})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := NewVerifier(VerifierOptions{Roots: testRoots(t, Milan), Now: fixedNow, VCEKCache: cache})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVTPMValidator(attestation.GCPSEVSNP, verifier, clusterPolicy(), tpm.policy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := v.Validate(ctx, ev, testNonce(1)); err != nil || string(got) != "tls key hash" {
		t.Fatalf("with the VCEK in the cache: %q, %v", got, err)
	}
}

func TestVTPMValidateRejects(t *testing.T) {
	ctx := context.Background()
	tpm := newSoftVTPM(t)
	variant := attestation.GCPSEVSNP
	iss, err := NewVTPMIssuer(variant, &fixedReporter{t: t}, tpm)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := iss.Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	// Evidence of another vTPM on a machine of the same PKI: its report binds another attestation key.
	other := newSoftVTPM(t)
	otherIss, err := NewVTPMIssuer(variant, &fixedReporter{t: t}, other)
	if err != nil {
		t.Fatal(err)
	}
	otherEv, err := otherIss.Issue(ctx, testNonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	otherDoc, err := attestation.ParseDocument(otherEv)
	if err != nil {
		t.Fatal(err)
	}
	// A quote over PCRs 0-15 only, correctly bound and signed.
	partialTPM := newSoftVTPM(t)
	partialTPM.key = tpm.key
	partialTPM.selection = []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	partial, err := partialTPM.Quote(ctx, bindingOf(variant, testNonce(1), []byte("user")))
	if err != nil {
		t.Fatal(err)
	}
	// A quote for qemu-style binding of another variant.
	awsQuote, err := tpm.Quote(ctx, bindingOf(attestation.AWSSEVSNP, testNonce(1), []byte("user")))
	if err != nil {
		t.Fatal(err)
	}
	// An event log that claims another node image than the one measured.
	altered := eventlog.NewBuilder()
	altered.Append(measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:2222"))
	altered.Append(measurements.PCRBootParams, eventlog.IPL, []byte("boot parameters: console=ttyS0"))
	alteredLog := altered.Bytes()
	v := testVTPMValidator(t, variant, clusterPolicy(), tpm.policy())
	tpmPart := func(fn func(*attestation.TPMEvidence)) []byte {
		return mutateDoc(t, ev, func(d *attestation.Document) { fn(d.TPM) })
	}
	for name, tc := range map[string]struct {
		evidence []byte
		nonce    []byte
		target   error
		want     string
	}{
		"wrong nonce":                     {ev, testNonce(2), nil, "not bound to this nonce"},
		"wrong user data":                 {mutateDoc(t, ev, func(d *attestation.Document) { d.UserData = []byte("other") }), testNonce(1), nil, "not bound to this nonce"},
		"report binding another AK":       {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP = otherDoc.SNP }), testNonce(1), ErrReportData, "REPORT_DATA"},
		"report and AK of another vTPM":   {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP, d.TPM.AKPublic = otherDoc.SNP, otherDoc.TPM.AKPublic }), testNonce(1), nil, "signature does not verify"},
		"quote of another vTPM":           {tpmPart(func(e *attestation.TPMEvidence) { e.Quotes = otherDoc.TPM.Quotes }), testNonce(1), nil, "signature does not verify"},
		"tampered report":                 {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.Report[0x90] ^= 1 }), testNonce(1), ErrSignature, ""},
		"tampered quote":                  {tpmPart(func(e *attestation.TPMEvidence) { e.Quotes[0].Quote[40] ^= 1 }), testNonce(1), nil, "signature does not verify"},
		"tampered PCR value":              {tpmPart(func(e *attestation.TPMEvidence) { e.Quotes[0].PCRs[4][0] ^= 1 }), testNonce(1), nil, "do not match the quoted PCR digest"},
		"missing PCR value":               {tpmPart(func(e *attestation.TPMEvidence) { delete(e.Quotes[0].PCRs, 23) }), testNonce(1), nil, "23 PCR values"},
		"altered event log":               {tpmPart(func(e *attestation.TPMEvidence) { e.EventLog = alteredLog }), testNonce(1), nil, "event log does not match quoted PCR 4"},
		"malformed event log":             {tpmPart(func(e *attestation.TPMEvidence) { e.EventLog = []byte{1, 2, 3} }), testNonce(1), nil, "parsing event log"},
		"partial PCR selection":           {tpmPart(func(e *attestation.TPMEvidence) { e.Quotes = partial.Quotes }), testNonce(1), nil, "want SHA-256 PCRs 0-23"},
		"quote bound for another variant": {tpmPart(func(e *attestation.TPMEvidence) { e.Quotes = awsQuote.Quotes }), testNonce(1), nil, "not bound to this nonce"},
		"two quotes":                      {tpmPart(func(e *attestation.TPMEvidence) { e.Quotes = append(e.Quotes, e.Quotes[0]) }), testNonce(1), nil, "2 quotes"},
		"no TPM part":                     {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM = nil }), testNonce(1), nil, "no TPM part"},
		"no attestation key":              {tpmPart(func(e *attestation.TPMEvidence) { e.AKPublic = nil }), testNonce(1), nil, "no attestation key"},
		"malformed attestation key":       {tpmPart(func(e *attestation.TPMEvidence) { e.AKPublic = []byte{0x30, 0} }), testNonce(1), nil, "parsing the attestation key"},
		"AK certificate":                  {tpmPart(func(e *attestation.TPMEvidence) { e.AKCert = []byte{0x30, 0} }), testNonce(1), nil, "attestation key certificate"},
		"no SNP part":                     {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP = nil }), testNonce(1), nil, "no SEV-SNP report"},
		"variant mismatch":                {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.AWSSEVSNP.Name }), testNonce(1), nil, `accepts "gcp-sev-snp"`},
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

	// The measurement policy decides on the quoted PCRs and names the events behind a mismatch.
	wrong := tpm.policy()
	wrong[4] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
	_, err = testVTPMValidator(t, variant, clusterPolicy(), wrong).Validate(ctx, ev, testNonce(1))
	var me *measurements.Error
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "node image sha256:1111") {
		t.Errorf("wrong measurements: %v", err)
	}
	// A warn-only mismatch is accepted.
	wrong[4] = tpm.policy()[4]
	wrong[9] = measurements.Measurement{Expected: measurements.Digest{0xcd}, WarnOnly: true}
	if _, err := testVTPMValidator(t, variant, clusterPolicy(), wrong).Validate(ctx, ev, testNonce(1)); err != nil {
		t.Errorf("warn-only mismatch: %v", err)
	}
	// A VLEK-signed report needs AllowVLEK.
	vlekIss, err := NewVTPMIssuer(attestation.AWSSEVSNP, &fixedReporter{t: t, vlek: true}, tpm)
	if err != nil {
		t.Fatal(err)
	}
	vlekEv, err := vlekIss.Issue(ctx, testNonce(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testVTPMValidator(t, attestation.AWSSEVSNP, clusterPolicy(), tpm.policy()).Validate(ctx, vlekEv, testNonce(1)); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "VLEK") {
		t.Errorf("VLEK without AllowVLEK: %v", err)
	}
}

func bindingOf(v attestation.Variant, nonce, userData []byte) []byte {
	b := attestation.BindingDigest(v, nonce, userData)
	return b[:]
}

func TestVTPMConstructors(t *testing.T) {
	verifier := testVerifier(t, testRoots(t, Milan), nil)
	pcrs := newSoftVTPM(t).policy()
	_, err := NewVTPMValidator(attestation.AzureSEVSNP, verifier, clusterPolicy(), pcrs, nil)
	if err == nil || errors.Is(err, attestation.ErrNotSupported) || !strings.Contains(err.Error(), "NewAzureValidator") {
		t.Errorf("azure-sev-snp validator: %v", err)
	}
	if _, err := NewVTPMIssuer(attestation.AzureSEVSNP, &fixedReporter{t: t}, newSoftVTPM(t)); err == nil || !strings.Contains(err.Error(), "NewAzureIssuer") {
		t.Errorf("azure-sev-snp issuer: %v", err)
	}
	for _, variant := range []attestation.Variant{attestation.QEMUSEVSNP, attestation.MiniVTPM, attestation.QEMUTDX, attestation.AzureTDX} {
		if _, err := NewVTPMValidator(variant, verifier, clusterPolicy(), pcrs, nil); err == nil || errors.Is(err, attestation.ErrNotSupported) {
			t.Errorf("%s validator: %v", variant, err)
		}
	}
	if _, err := NewVTPMValidator(attestation.GCPSEVSNP, verifier, clusterPolicy(), nil, nil); !errors.Is(err, measurements.ErrEmptyPolicy) {
		t.Errorf("empty PCR policy: %v", err)
	}
	if _, err := NewVTPMValidator(attestation.GCPSEVSNP, verifier, &Policy{}, pcrs, nil); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("empty SNP policy: %v", err)
	}
	if _, err := NewVTPMValidator(attestation.GCPSEVSNP, nil, clusterPolicy(), pcrs, nil); err == nil {
		t.Error("no verifier accepted")
	}
	if _, err := NewVTPMIssuer(attestation.GCPSEVSNP, nil, newSoftVTPM(t)); err == nil {
		t.Error("no reporter accepted")
	}
}

// simulatorVTPM is the reference TPM simulator as a vTPM: real TPM2_Quote and PCR reads.
type simulatorVTPM struct {
	rw  io.ReadWriter
	ak  *client.Key
	log *eventlog.Builder
}

func (s *simulatorVTPM) AttestationKey() crypto.PublicKey { return s.ak.PublicKey() }

func (s *simulatorVTPM) Quote(_ context.Context, qualifyingData []byte) (*attestation.TPMEvidence, error) {
	sel := client.FullPcrSel(tpm2.AlgSHA256)
	quote, sig, err := tpm2.QuoteRaw(s.rw, s.ak.Handle(), "", "", qualifyingData, sel, tpm2.AlgNull)
	if err != nil {
		return nil, err
	}
	pcrs, err := client.ReadPCRs(s.rw, sel)
	if err != nil {
		return nil, err
	}
	return &attestation.TPMEvidence{Quotes: []attestation.Quote{{Quote: quote, Signature: sig, PCRs: pcrs.GetPcrs()}}, EventLog: s.log.Bytes()}, nil
}

// TestVTPMWithTPMSimulator combines a report with quotes of a real TPM implementation (ECC and RSA keys).
func TestVTPMWithTPMSimulator(t *testing.T) {
	for _, alg := range []vtpm.KeyAlgorithm{vtpm.ECC, vtpm.RSA} {
		t.Run(alg.String(), func(t *testing.T) {
			node, err := tpmtest.NewSimulatorNode(alg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { node.Close() })
			ak, err := vtpm.CreateAK(node.TPM, alg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(ak.Close)
			ctx := context.Background()
			iss, err := NewVTPMIssuer(attestation.GCPSEVSNP, &fixedReporter{t: t}, &simulatorVTPM{rw: node.TPM, ak: ak, log: node.Log})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := iss.Issue(ctx, testNonce(3), []byte("tls key hash"))
			if err != nil {
				t.Fatal(err)
			}
			v := testVTPMValidator(t, attestation.GCPSEVSNP, clusterPolicy(), node.Policy)
			if got, err := v.Validate(ctx, ev, testNonce(3)); err != nil || string(got) != "tls key hash" {
				t.Fatalf("Validate = %q, %v", got, err)
			}
			if _, err := v.Validate(ctx, ev, testNonce(4)); err == nil {
				t.Fatal("other nonce accepted")
			}
		})
	}
}
