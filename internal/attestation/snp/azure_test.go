package snp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"maps"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/azure"
	"github.com/constellation-dev/constellation/internal/attestation/azure/azuretest"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// ---- Genuine data: an HCL report recorded on an Azure SEV-SNP VM (../azure/testdata/README.md). ----

func readAzureTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../azure/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// azureGenuineIDKeyDigest is the ID_KEY_DIGEST of the genuine report: the key with which Azure signed the
// ID block of the VM's firmware.
var azureGenuineIDKeyDigest = HexBytes{
	0x57, 0xe2, 0x29, 0xe0, 0xff, 0xe5, 0xfa, 0x92, 0xd0, 0xfa, 0xdd, 0xff, 0x6c, 0xae, 0x0e, 0x61,
	0xc9, 0x26, 0xfc, 0x9e, 0xf9, 0xaf, 0xd2, 0x0a, 0x8b, 0x8c, 0xfc, 0xf7, 0x12, 0x9d, 0xb9, 0x33,
	0x8c, 0xbe, 0x5b, 0xf3, 0xf6, 0x98, 0x77, 0x33, 0xa2, 0xbf, 0x65, 0xd0, 0x6d, 0xc3, 0x8f, 0xc1,
}

// azureGenuineCerts returns the VCEK and chain as the metadata service served them.
func azureGenuineCerts(t testing.TB) *Certificates {
	t.Helper()
	certs, err := ParseCertificates(append(readAzureTestdata(t, "vcek.pem"), readAzureTestdata(t, "thim-chain.pem")...))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// azureGenuinePolicy accepts the genuine report: its launch measurement, TCB and Azure's ID key. The VM ran
// on a platform with SMT; no CRL was recorded with it. REPORT_DATA is left to VerifyHCLReport.
func azureGenuinePolicy(t testing.TB) *Policy {
	t.Helper()
	hcl, err := azure.ParseHCLReport(readAzureTestdata(t, "hcl-report-snp.bin"))
	if err != nil {
		t.Fatal(err)
	}
	r := mustParse(t, hcl.HardwareReport)
	p := &Policy{
		Measurements:    []HexBytes{r.Measurement[:]},
		MinimumTCB:      map[Product]TCB{Milan: {Bootloader: 2, TEE: 0, SNP: 6, Microcode: 93}},
		AllowSMT:        true,
		AllowMissingCRL: true,
		IDKeyDigests:    []HexBytes{azureGenuineIDKeyDigest},
	}
	if err := p.ValidateForCluster(); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAzureGenuineHCLReport verifies the genuine HCL report: the SEV-SNP report's chain to the embedded AMD
// Milan root and its signature, the policy (Azure's ID key digest included), REPORT_DATA = SHA-256 of the
// runtime data, and the attestation key the runtime data name.
func TestAzureGenuineHCLReport(t *testing.T) {
	raw := readAzureTestdata(t, "hcl-report-snp.bin")
	v, err := VerifyHCLReport(genuineVerifier(t), azureGenuinePolicy(t), raw, nil, azureGenuineCerts(t))
	if err != nil {
		t.Fatal(err)
	}
	if v.Report.Product != Milan || v.AttestationKey.N.BitLen() != 2048 || v.HCL.Hash != azure.HashSHA256 {
		t.Errorf("product %v, key of %d bits, hash %v", v.Report.Product, v.AttestationKey.N.BitLen(), v.HCL.Hash)
	}
	if !bytes.Equal(v.Report.Report.IDKeyDigest[:], azureGenuineIDKeyDigest) {
		t.Errorf("ID key digest %x", v.Report.Report.IDKeyDigest)
	}
	// The chain the metadata service served is AMD's Milan chain, the one this package embeds.
	embedded, _ := AMDRoots().Product(Milan)
	certs := azureGenuineCerts(t)
	if !certs.ARK.Equal(embedded.ARK) || !certs.Intermediate.Equal(embedded.ASK) {
		t.Error("the recorded certificate chain is not the embedded AMD Milan chain")
	}
	// The embedded roots suffice: the VCEK alone verifies.
	if _, err := VerifyHCLReport(genuineVerifier(t), azureGenuinePolicy(t), raw, nil, &Certificates{VCEK: certs.VCEK}); err != nil {
		t.Errorf("VCEK alone: %v", err)
	}
}

// replaceRuntimeData returns the genuine HCL report with other runtime data of the same length.
func replaceRuntimeData(t *testing.T, raw []byte, edit func([]byte)) []byte {
	t.Helper()
	out := bytes.Clone(raw)
	edit(out[azure.HeaderSize+azure.HardwareReportAreaSize+azure.RequestDataFixedSize:])
	return out
}

// TestAzureGenuineHCLReportTampered alters the genuine data and asserts which check catches each change.
func TestAzureGenuineHCLReportTampered(t *testing.T) {
	raw := readAzureTestdata(t, "hcl-report-snp.bin")
	hw := azure.HeaderSize
	otherRoots := testRoots(t, Milan) // a Milan test PKI instead of AMD's
	otherAK := func(b []byte) {
		i := bytes.Index(b, []byte(`"n":"`)) + 5
		b[i] ^= 0x01 // another modulus, still base64url ('t' -> 'u')
	}
	for name, tc := range map[string]struct {
		raw      []byte
		certs    *Certificates
		verifier *Verifier
		policy   func(*Policy)
		target   error
		want     string
	}{
		"tampered runtime data": {
			raw:    replaceRuntimeData(t, raw, func(b []byte) { copy(b[bytes.Index(b, []byte(`"secure-boot":false`)):], `"secure-boot":true,`) }),
			target: ErrReportData, want: "does not bind the HCL report's runtime data",
		},
		"attestation key in runtime data replaced": {
			raw:    replaceRuntimeData(t, raw, otherAK),
			target: ErrReportData, want: "does not bind the HCL report's runtime data",
		},
		"hash type changed to SHA-384": {
			raw: func() []byte {
				b := bytes.Clone(raw)
				binary.LittleEndian.PutUint32(b[hw+azure.HardwareReportAreaSize+12:], 2)
				return b
			}(),
			target: ErrReportData, want: "SHA-384",
		},
		"SEV-SNP report signature broken": {
			raw:    func() []byte { b := bytes.Clone(raw); b[hw+offSignature+5] ^= 0x80; return b }(),
			target: ErrSignature,
		},
		"SEV-SNP report body altered": {
			raw:    func() []byte { b := bytes.Clone(raw); b[hw+0x90] ^= 1; return b }(), // launch measurement
			target: ErrSignature,
		},
		"wrong product roots": {
			verifier: testVerifier(t, otherRoots, nil),
			target:   ErrChain,
		},
		"VCEK of another chip": {
			certs:  genuineCerts(t), // the Milan VCEK of the go-sev-guest recording (the report's chip ID is masked)
			target: ErrSignature, want: "does not verify with the VCEK",
		},
		"ID key digest not accepted": {
			policy: func(p *Policy) { p.IDKeyDigests = []HexBytes{bytes.Repeat([]byte{1}, KeyDigestSize)} },
			target: ErrPolicy, want: "ID",
		},
		"truncated report": {
			raw:    raw[:len(raw)-100],
			target: azure.ErrMalformedHCLReport, want: "truncated",
		},
		"unknown header version": {
			raw:    func() []byte { b := bytes.Clone(raw); binary.LittleEndian.PutUint32(b[4:], 7); return b }(),
			target: azure.ErrMalformedHCLReport, want: "unknown header version 7",
		},
		"unknown report type": {
			raw: func() []byte {
				b := bytes.Clone(raw)
				binary.LittleEndian.PutUint32(b[hw+azure.HardwareReportAreaSize+8:], 4)
				return b
			}(),
			target: azure.ErrMalformedHCLReport, want: "TDX report",
		},
		"hash type unknown": {
			raw: func() []byte {
				b := bytes.Clone(raw)
				binary.LittleEndian.PutUint32(b[hw+azure.HardwareReportAreaSize+12:], 5)
				return b
			}(),
			target: azure.ErrMalformedHCLReport, want: "unknown hash type 5",
		},
		"runtime-data size lying": {
			raw: func() []byte {
				b := bytes.Clone(raw)
				binary.LittleEndian.PutUint32(b[hw+azure.HardwareReportAreaSize+16:], 583)
				return b
			}(),
			target: azure.ErrMalformedHCLReport, want: "disagrees with runtime data size 583",
		},
	} {
		t.Run(name, func(t *testing.T) {
			r, certs, verifier, policy := raw, azureGenuineCerts(t), genuineVerifier(t), azureGenuinePolicy(t)
			if tc.raw != nil {
				r = tc.raw
			}
			if tc.certs != nil {
				certs = tc.certs
			}
			if tc.verifier != nil {
				verifier = tc.verifier
			}
			if tc.policy != nil {
				tc.policy(policy)
			}
			_, err := VerifyHCLReport(verifier, policy, r, nil, certs)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %v and %q", err, tc.target, tc.want)
			}
		})
	}
}

// The preview recording has the structure of an HCL report but no binding; it never verifies.
func TestAzurePreviewHCLReportRefused(t *testing.T) {
	_, err := VerifyHCLReport(genuineVerifier(t), azureGenuinePolicy(t), readAzureTestdata(t, "hcl-report-snp-preview.bin"), nil, azureGenuineCerts(t))
	if !errors.Is(err, ErrMalformedReport) {
		t.Errorf("preview HCL report (SEV-SNP report version 1): %v", err)
	}
}

// ---- Reference TPM simulator: its attestation key in an HCL report built and signed under a test PKI. ----

// azureEnv is a fake Azure confidential VM: the reference TPM simulator as its vTPM, whose NV index holds an
// HCL report that binds the simulator's attestation key, signed by a VCEK of the Milan test PKI that a
// loopback metadata service serves.
type azureEnv struct {
	node *tpmtest.Node
	ak   *client.Key
	thim *httptest.Server
	hcl  []byte
}

type azureEnvOptions struct {
	runtimeData func(akRuntimeData []byte) []byte // replaces the runtime data
	reportData  func(rd [ReportDataSize]byte) [ReportDataSize]byte
	policy      uint64
}

func newAzureEnv(t *testing.T, o azureEnvOptions) *azureEnv {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(vtpm.RSA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ak, err := vtpm.CreateAK(node.TPM, vtpm.RSA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	runtimeData, err := azure.MarshalAttestationKey(ak.PublicKey().(*rsa.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if o.runtimeData != nil {
		runtimeData = o.runtimeData(runtimeData)
	}
	var rd [ReportDataSize]byte
	sum := sha256.Sum256(runtimeData)
	copy(rd[:], sum[:])
	if o.reportData != nil {
		rd = o.reportData(rd)
	}
	pki := getTestPKI(t, Milan)
	vcek, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB})
	report := signReport(t, buildReport(t, reportOptions{product: Milan, tcb: defaultTestTCB, policy: o.policy, reportData: rd, measurement: [48]byte{7}}), key)
	hcl, err := azure.MarshalHCLReport(azure.ReportTypeSNP, azure.HashSHA256, report, runtimeData, 300)
	if err != nil {
		t.Fatal(err)
	}
	if err := azuretest.WriteHCLReportNV(node.TPM, hcl); err != nil {
		t.Fatal(err)
	}
	thim := azuretest.NewTHIMServer(pemCerts(vcek), pemCerts(pki.ask, pki.ark))
	t.Cleanup(thim.Close)
	return &azureEnv{node: node, ak: ak, thim: thim, hcl: hcl}
}

func (e *azureEnv) vtpm() *simulatorVTPM {
	return &simulatorVTPM{rw: e.node.TPM, ak: e.ak, log: e.node.Log}
}

func (e *azureEnv) issuer(t *testing.T) *AzureIssuer {
	t.Helper()
	iss, err := NewAzureIssuer(azure.NewNVReader(e.node.TPM), &azure.THIMClient{URL: e.thim.URL + azuretest.THIMPath}, e.vtpm())
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func (e *azureEnv) validator(t *testing.T) *AzureValidator {
	t.Helper()
	v, err := NewAzureValidator(testVerifier(t, testRoots(t, Milan), nil), clusterPolicy(), e.node.Policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAzureIssueValidateWithTPMSimulator issues azure-sev-snp evidence from the simulator's NV index, the
// fake metadata service and real quotes, validates it, and asserts which check catches each alteration.
func TestAzureIssueValidateWithTPMSimulator(t *testing.T) {
	ctx := context.Background()
	env := newAzureEnv(t, azureEnvOptions{})
	iss, v := env.issuer(t), env.validator(t)
	if iss.Variant().Name != attestation.AzureSEVSNP.Name || v.Variant().Name != attestation.AzureSEVSNP.Name {
		t.Fatal("variant")
	}
	ev, err := iss.Issue(ctx, testNonce(5), []byte("tls key hash"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Validate(ctx, ev, testNonce(5))
	if err != nil || string(got) != "tls key hash" {
		t.Fatalf("Validate = %q, %v", got, err)
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc.SNP.HCLReport, env.hcl) || doc.TPM.AKPublic != nil || len(doc.SNP.CertChain) == 0 {
		t.Error("the document does not carry the HCL report and VCEK chain as read")
	}

	// A quote of another RSA key of the same vTPM: a different unique value gives a different key.
	tmpl := client.AKTemplateRSA()
	tmpl.RSAParameters.ModulusRaw = bytes.Repeat([]byte{0x5a}, 256)
	other, err := client.NewKey(env.node.TPM, tpm2.HandleOwner, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	otherQuote, err := (&simulatorVTPM{rw: env.node.TPM, ak: other, log: env.node.Log}).Quote(ctx, bindingOf(attestation.AzureSEVSNP, testNonce(5), []byte("tls key hash")))
	if err != nil {
		t.Fatal(err)
	}
	// A quote of the right key over PCRs 0-15 only.
	partialSel := tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}
	partial, partialSig, err := tpm2.QuoteRaw(env.node.TPM, env.ak.Handle(), "", "", bindingOf(attestation.AzureSEVSNP, testNonce(5), []byte("tls key hash")), partialSel, tpm2.AlgNull)
	if err != nil {
		t.Fatal(err)
	}
	hw := azure.HeaderSize
	for name, tc := range map[string]struct {
		ev     []byte
		nonce  []byte
		target error
		want   string
	}{
		"quote with wrong nonce":     {ev, testNonce(6), nil, "not bound to this nonce and user data"},
		"quote signed by another AK": {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.Quotes = otherQuote.Quotes }), nil, nil, "verifying quote"},
		"PCRs not covered by quote":  {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.Quotes[0].Quote, d.TPM.Quotes[0].Signature = partial, partialSig }), nil, nil, "want SHA-256 PCRs 0-23"},
		"PCR value altered":          {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.Quotes[0].PCRs[4] = make([]byte, 32) }), nil, nil, "do not match the quoted PCR digest"},
		"user data altered":          {mutateDoc(t, ev, func(d *attestation.Document) { d.UserData = []byte("other key") }), nil, nil, "not bound to this nonce and user data"},
		"attestation key carried":    {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.AKPublic = []byte{1} }), nil, nil, "takes the key only from the HCL report"},
		"no HCL report":              {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.HCLReport = nil }), nil, nil, "no HCL report"},
		"no TPM part":                {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM = nil }), nil, nil, "no TPM part"},
		"report differs from HCL's":  {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.Report[0x90] ^= 1 }), nil, nil, "not the one in its HCL report"},
		"no certificates":            {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.CertChain = nil }), nil, ErrMissingCertificate, ""},
		"truncated HCL report":       {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.HCLReport = d.SNP.HCLReport[:1500] }), nil, azure.ErrMalformedHCLReport, "truncated"},
		"unknown header version":     {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.HCLReport[4] = 9 }), nil, azure.ErrMalformedHCLReport, "header version 9"},
		"hash type unknown":          {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.HCLReport[hw+azure.HardwareReportAreaSize+12] = 0 }), nil, azure.ErrMalformedHCLReport, "hash type 0"},
		"runtime-data size lying":    {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.HCLReport[hw+azure.HardwareReportAreaSize+16]++ }), nil, azure.ErrMalformedHCLReport, "disagrees"},
		"tampered runtime data": {mutateDoc(t, ev, func(d *attestation.Document) {
			d.SNP.HCLReport[hw+azure.HardwareReportAreaSize+azure.RequestDataFixedSize+3] = 'K'
		}), nil, ErrReportData, "does not bind"},
		"SEV-SNP signature broken":    {mutateDoc(t, ev, func(d *attestation.Document) { d.SNP.Report[offSignature] ^= 1; d.SNP.HCLReport[hw+offSignature] ^= 1 }), nil, ErrSignature, ""},
		"HCL report in other variant": {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.AWSSEVSNP.Name }), nil, attestation.ErrMalformedDocument, "no HCL report"},
	} {
		t.Run(name, func(t *testing.T) {
			nonce := testNonce(5)
			if tc.nonce != nil {
				nonce = tc.nonce
			}
			_, err := v.Validate(ctx, tc.ev, nonce)
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

	// Roots of another product: the chain fails.
	genoa, err := NewAzureValidator(testVerifier(t, testRoots(t, Genoa), nil), clusterPolicy(), env.node.Policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := genoa.Validate(ctx, ev, testNonce(5)); !errors.Is(err, ErrChain) {
		t.Errorf("wrong product roots: %v", err)
	}
	// The measurement policy decides on the quoted PCRs.
	wrong := maps.Clone(env.node.Policy)
	wrong[4] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
	strict, err := NewAzureValidator(testVerifier(t, testRoots(t, Milan), nil), clusterPolicy(), wrong, nil)
	if err != nil {
		t.Fatal(err)
	}
	var me *measurements.Error
	if _, err := strict.Validate(ctx, ev, testNonce(5)); !errors.As(err, &me) {
		t.Errorf("wrong measurements: %v", err)
	}
}

// TestAzureIssuerRefuses checks that the issuer refuses what no verifier accepts.
func TestAzureIssuerRefuses(t *testing.T) {
	ctx := context.Background()
	t.Run("attestation key in runtime data replaced", func(t *testing.T) {
		// The report binds runtime data that name another key than the vTPM's: the issuer notices, and a
		// validator fails the quote signature.
		other, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		env := newAzureEnv(t, azureEnvOptions{runtimeData: func([]byte) []byte {
			rd, err := azure.MarshalAttestationKey(&other.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			return rd
		}})
		if _, err := env.issuer(t).Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "not the HCLAkPub key") {
			t.Fatalf("Issue = %v", err)
		}
		tpmEv, err := env.vtpm().Quote(ctx, bindingOf(attestation.AzureSEVSNP, testNonce(1), nil))
		if err != nil {
			t.Fatal(err)
		}
		doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.AzureSEVSNP.Name, TPM: tpmEv, SNP: &attestation.SNPEvidence{
			Report: env.hcl[azure.HeaderSize : azure.HeaderSize+azure.SNPReportSize], HCLReport: env.hcl,
			CertChain: pemCerts(getTestPKI(t, Milan).ask),
		}}
		// Certificates: fetch from the fake metadata service as the issuer would.
		certs, err := (&azure.THIMClient{URL: env.thim.URL + azuretest.THIMPath}).FetchCertificates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		doc.SNP.CertChain = certs.PEM()
		ev, err := doc.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.validator(t).Validate(ctx, ev, testNonce(1)); err == nil || !strings.Contains(err.Error(), "verifying quote") {
			t.Fatalf("Validate = %v", err)
		}
	})
	t.Run("REPORT_DATA not bound", func(t *testing.T) {
		env := newAzureEnv(t, azureEnvOptions{reportData: func(rd [ReportDataSize]byte) [ReportDataSize]byte { rd[0] ^= 1; return rd }})
		if _, err := env.issuer(t).Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "does not carry the SHA-256 of its runtime data") {
			t.Fatalf("Issue = %v", err)
		}
	})
	t.Run("debug guest", func(t *testing.T) {
		env := newAzureEnv(t, azureEnvOptions{policy: 0xb0000})
		if _, err := env.issuer(t).Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "allows debugging") {
			t.Fatalf("Issue = %v", err)
		}
	})
	t.Run("metadata service and NV index", func(t *testing.T) {
		env := newAzureEnv(t, azureEnvOptions{})
		iss, err := NewAzureIssuer(azure.NewNVReader(env.node.TPM), &azure.THIMClient{URL: env.thim.URL + "/metadata/other"}, env.vtpm())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := iss.Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("metadata service answers 404: %v", err)
		}
		if _, err := iss.Issue(ctx, []byte("short"), nil); !errors.Is(err, attestation.ErrInvalidNonce) {
			t.Errorf("short nonce: %v", err)
		}
		if _, err := NewAzureIssuer(nil, &azure.THIMClient{}, env.vtpm()); err == nil {
			t.Error("issuer without HCL report source")
		}
		if _, err := (&AzureIssuer{}).Issue(ctx, testNonce(1), nil); err == nil {
			t.Error("zero issuer")
		}
	})
}

func TestNewAzureValidatorRejects(t *testing.T) {
	verifier := testVerifier(t, testRoots(t, Milan), nil)
	pcrs := measurements.M{4: {Expected: measurements.Digest{1}}, 8: {Expected: measurements.Digest{2}}}
	if _, err := NewAzureValidator(nil, clusterPolicy(), pcrs, nil); err == nil {
		t.Error("no verifier accepted")
	}
	if _, err := NewAzureValidator(verifier, &Policy{}, pcrs, nil); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("empty policy: %v", err)
	}
	if _, err := NewAzureValidator(verifier, clusterPolicy(), nil, nil); !errors.Is(err, measurements.ErrEmptyPolicy) {
		t.Errorf("empty PCR policy: %v", err)
	}
	if _, err := (&AzureValidator{}).Validate(context.Background(), nil, testNonce(1)); err == nil || !strings.Contains(err.Error(), "not initialised") {
		t.Errorf("zero validator: %v", err)
	}
}
