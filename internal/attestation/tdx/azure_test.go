package tdx

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/azure"
	"github.com/constellation-dev/constellation/internal/attestation/azure/azuretest"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// ---- Genuine data: an HCL report of an Azure TDX VM and the quote Azure made for it
// (../azure/testdata/README.md). ----

const (
	genuineAzureHCLFile   = "../azure/testdata/hcl-report-tdx.bin"
	genuineAzureQuoteFile = "../azure/testdata/tdx-quote-imds.bin"
	genuineAzureQuoteSize = 4936
)

// genuineAzureTime lies in the validity of the genuine quote's PCK certificate (2024-05-17 to 2031-05-17).
var genuineAzureTime = time.Date(2024, time.June, 1, 0, 0, 0, 0, time.UTC)

// genuineAzureFMSPC is the platform family of the genuine quote (a Sapphire Rapids platform).
var genuineAzureFMSPC = [6]byte{0x00, 0x80, 0x6f, 0x05, 0x00, 0x00}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// genuineAzure returns the HCL report and the quote without the padding the metadata service sent.
func genuineAzure(t testing.TB) (hcl, quote []byte) {
	t.Helper()
	padded := readFile(t, genuineAzureQuoteFile)
	quote, err := TrimQuotePadding(padded)
	if err != nil {
		t.Fatal(err)
	}
	if len(quote) != genuineAzureQuoteSize {
		t.Fatalf("quote of %d bytes, want %d", len(quote), genuineAzureQuoteSize)
	}
	return readFile(t, genuineAzureHCLFile), quote
}

// TestAzureGenuine checks everything of the genuine data that needs no collateral: the PCK chain to the
// embedded Intel root, the QE report signature and its binding of the attestation key, the quote signature,
// that the quote is the one of the HCL report's TD report, that the TD report binds the runtime data, and
// the attestation key.
func TestAzureGenuine(t *testing.T) {
	hcl, quote := genuineAzure(t)
	q := mustParseQuote(t, quote)
	if q.Header.Version != QuoteVersion4 || q.BodyType != BodyTypeTDReport10 {
		t.Errorf("quote version %d body %d", q.Header.Version, q.BodyType)
	}
	pck, err := VerifySignatures(q, genuineAzureTime)
	if err != nil {
		t.Fatal(err)
	}
	if pck.FMSPC != genuineAzureFMSPC || pck.CA != PCKCAPlatform {
		t.Errorf("FMSPC %x, CA %s", pck.FMSPC, pck.CA)
	}
	b, err := BindHCLReport(hcl, q)
	if err != nil {
		t.Fatal(err)
	}
	if b.HCL.Type != azure.ReportTypeTDX || b.HCL.Hash != azure.HashSHA256 || b.AttestationKey.N.BitLen() != 2048 {
		t.Errorf("HCL report type %v hash %v, key of %d bits", b.HCL.Type, b.HCL.Hash, b.AttestationKey.N.BitLen())
	}
	sum := sha256.Sum256(b.HCL.RuntimeData)
	if !bytes.Equal(q.Body.ReportData[:32], sum[:]) || q.Body.Debug() {
		t.Error("REPORT_DATA of the quote is not SHA-256 of the runtime data, or a debug TD")
	}
	// The metadata service's buffer: the quote, then zeros.
	padded := readFile(t, genuineAzureQuoteFile)
	if !bytes.Equal(padded[:genuineAzureQuoteSize], quote) || len(padded) != 5006 {
		t.Errorf("padded quote of %d bytes", len(padded))
	}
	if _, err := ParseQuote(padded); !errors.Is(err, ErrMalformedQuote) {
		t.Errorf("the strict parser accepted the padding: %v", err)
	}
}

// flip returns a copy of b with byte i changed.
func flip(b []byte, i int) []byte {
	out := bytes.Clone(b)
	out[i] ^= 0x01
	return out
}

// TestAzureGenuineTampered alters the genuine data and asserts which check catches each change.
func TestAzureGenuineTampered(t *testing.T) {
	hcl, quote := genuineAzure(t)
	const td = azure.HeaderSize // TD report in the HCL report
	reqData := azure.HeaderSize + azure.HardwareReportAreaSize
	runtime := reqData + azure.RequestDataFixedSize
	setU32 := func(b []byte, off int, v uint32) []byte {
		out := bytes.Clone(b)
		binary.LittleEndian.PutUint32(out[off:], v)
		return out
	}
	replaceRuntime := func(old, new string) []byte {
		out := bytes.Clone(hcl)
		i := bytes.Index(out[runtime:], []byte(old))
		if i < 0 || len(old) != len(new) {
			t.Fatalf("%q not in the runtime data", old)
		}
		copy(out[runtime+i:], new)
		return out
	}
	otherRoot := newTestPKI(t).root
	for name, tc := range map[string]struct {
		hcl, quote []byte
		root       bool // verify with a test root instead of Intel's
		at         time.Time
		target     error
		want       string
	}{
		"quote signature broken":          {quote: flip(quote, 48+136), target: ErrInvalidSignature, want: "signature over the header and TD report"},
		"QE report signature broken":      {quote: flip(quote, 48+584+4+64+64+6+10), target: ErrInvalidSignature, want: "QE report signature"},
		"PCK chain to a wrong root":       {root: true, target: ErrUntrustedCertificate},
		"PCK certificate not yet valid":   {at: time.Date(2024, time.May, 1, 0, 0, 0, 0, time.UTC), target: ErrUntrustedCertificate},
		"quote for another TD (MRTD)":     {hcl: flip(hcl, td+offTDReportTDInfo+16), target: ErrTDReportMismatch, want: "MRTD"},
		"quote for another REPORTDATA":    {hcl: flip(hcl, td+offTDReportRData), target: ErrTDReportMismatch, want: "REPORTDATA"},
		"quote for another RTMR[2]":       {hcl: flip(hcl, td+offTDReportRTMR+96), target: ErrTDReportMismatch, want: "RTMR[2]"},
		"runtime data tampered":           {hcl: replaceRuntime(`"secure-boot":true`, `"secure-boot":tru `), target: ErrHCLReportData, want: "SHA-256"},
		"attestation key replaced":        {hcl: replaceRuntime(`"n":"u691`, `"n":"u692`), target: ErrHCLReportData},
		"hash type changed to SHA-384":    {hcl: setU32(hcl, reqData+12, uint32(azure.HashSHA384)), target: ErrHCLReportData, want: "SHA-384"},
		"hash type unknown":               {hcl: setU32(hcl, reqData+12, 9), target: azure.ErrMalformedHCLReport, want: "unknown hash type 9"},
		"report type SEV-SNP":             {hcl: setU32(hcl, reqData+8, uint32(azure.ReportTypeSNP)), target: azure.ErrMalformedHCLReport, want: "want TDX"},
		"truncated HCL report":            {hcl: hcl[:2000], target: azure.ErrMalformedHCLReport, want: "truncated"},
		"trailing bytes after the report": {hcl: append(bytes.Clone(hcl), 1), target: azure.ErrMalformedHCLReport, want: "non-zero bytes after the 2436-byte report"},
		"bytes after the TD report":       {hcl: flip(hcl, td+azure.TDReportSize+5), target: azure.ErrMalformedHCLReport, want: "after the 1024-byte TD report"},
		"TD report type not TDX":          {hcl: flip(hcl, td), target: ErrMalformedTDReport, want: "not TDX"},
		"TD report reserved bytes":        {hcl: flip(hcl, td+200), target: ErrMalformedTDReport, want: "reserved"},
	} {
		t.Run(name, func(t *testing.T) {
			h, qraw, at, root := hcl, quote, genuineAzureTime, mustIntelRoot()
			if tc.hcl != nil {
				h = tc.hcl
			}
			if tc.quote != nil {
				qraw = tc.quote
			}
			if !tc.at.IsZero() {
				at = tc.at
			}
			if tc.root {
				root = otherRoot
			}
			q := mustParseQuote(t, qraw)
			_, err := verifySignatures(q, root, at)
			if err == nil {
				_, err = BindHCLReport(h, q)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %v and %q", err, tc.target, tc.want)
			}
		})
	}
	// Padding that is not zero is refused before parsing.
	padded := readFile(t, genuineAzureQuoteFile)
	if _, err := TrimQuotePadding(flip(padded, len(padded)-1)); !errors.Is(err, ErrMalformedQuote) {
		t.Errorf("non-zero padding: %v", err)
	}
	if _, err := TrimQuotePadding(padded[:4000]); !errors.Is(err, ErrMalformedQuote) {
		t.Errorf("truncated quote: %v", err)
	}
}

// TestAzureGenuineRefusedWithoutCollateral: no public collateral of the genuine quote's platform was found,
// so the validator, which needs it, refuses the genuine evidence and says what is missing.
func TestAzureGenuineRefusedWithoutCollateral(t *testing.T) {
	hcl, quote := genuineAzure(t)
	c, err := LoadCollateral(genuineCollDir(t)) // collateral of another platform (FMSPC 50806f000000)
	if err != nil {
		t.Fatal(err)
	}
	q := mustParseQuote(t, quote)
	pol := &Policy{MRTD: []HexBytes{q.Body.MRTD[:]}}
	v, err := NewAzureValidator(c, pol, measurements.M{4: {}, 8: {}}, func() time.Time { return genuineAzureTime }, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc := &attestation.Document{
		Version: attestation.DocumentVersion, Variant: attestation.AzureTDX.Name,
		TPM: &attestation.TPMEvidence{Quotes: []attestation.Quote{{Quote: []byte{1}, Signature: []byte{1}}}},
		TDX: &attestation.TDXEvidence{Quote: quote, HCLReport: hcl},
	}
	ev, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Validate(context.Background(), ev, testNonce(1))
	if !errors.Is(err, ErrNoCollateral) || !strings.Contains(err.Error(), "00806f050000") || !strings.Contains(err.Error(), "collateral directory") {
		t.Fatalf("Validate = %v, want ErrNoCollateral naming FMSPC 00806f050000 and the collateral directory", err)
	}
}

// ---- Test PKI and the reference TPM simulator: a fake Azure TDX VM. ----

// encodeTDReportStruct lays out a TD report (version 0) with body's fields and a random MAC.
func encodeTDReportStruct(t testing.TB, b *TDReport) []byte {
	t.Helper()
	r := make([]byte, TDReportStructSize)
	r[0] = tdReportTypeTDX
	copy(r[16:32], bytes.Repeat([]byte{7}, 16))     // CPUSVN
	if _, err := rand.Read(r[32:128]); err != nil { // TEE_TCB_INFO_HASH, TEE_INFO_HASH
		t.Fatal(err)
	}
	copy(r[offTDReportRData:], b.ReportData[:])
	if _, err := rand.Read(r[224:256]); err != nil { // MAC
		t.Fatal(err)
	}
	r[256] = 0xff // VALID
	copy(r[offTDReportSVN:], b.TEETCBSVN[:])
	copy(r[offTDReportMRSEAM:], b.MRSEAM[:])
	copy(r[offTDReportSigner:], b.MRSignerSEAM[:])
	copy(r[offTDReportSeamAtt:], b.SEAMAttributes[:])
	td := r[offTDReportTDInfo:]
	copy(td[0:], b.TDAttributes[:])
	copy(td[8:], b.XFAM[:])
	copy(td[16:], b.MRTD[:])
	copy(td[64:], b.MRConfigID[:])
	copy(td[112:], b.MROwner[:])
	copy(td[160:], b.MROwnerConfig[:])
	for i := range b.RTMR {
		copy(r[offTDReportRTMR+48*i:], b.RTMR[i][:])
	}
	return r
}

// tpmVTPM is the reference TPM simulator as a vTPM.
type tpmVTPM struct {
	node *tpmtest.Node
	ak   *client.Key
}

func (s *tpmVTPM) AttestationKey() crypto.PublicKey { return s.ak.PublicKey() }

func (s *tpmVTPM) Quote(_ context.Context, qualifyingData []byte) (*attestation.TPMEvidence, error) {
	return quoteSel(s.node.TPM, s.ak, s.node.Log, qualifyingData, client.FullPcrSel(tpm2.AlgSHA256))
}

func quoteSel(rw io.ReadWriter, ak *client.Key, log *eventlog.Builder, qualifyingData []byte, sel tpm2.PCRSelection) (*attestation.TPMEvidence, error) {
	quote, sig, err := tpm2.QuoteRaw(rw, ak.Handle(), "", "", qualifyingData, sel, tpm2.AlgNull)
	if err != nil {
		return nil, err
	}
	pcrs, err := client.ReadPCRs(rw, sel)
	if err != nil {
		return nil, err
	}
	return &attestation.TPMEvidence{Quotes: []attestation.Quote{{Quote: quote, Signature: sig, PCRs: pcrs.GetPcrs()}}, EventLog: log.Bytes()}, nil
}

// azureEnv is a fake Azure TDX VM: the reference TPM simulator as its vTPM, whose NV index holds an HCL
// report with a TD report that binds the simulator's attestation key, and a loopback metadata service that
// makes quotes for TD reports with the test PKI, padded as Azure's.
type azureEnv struct {
	pki   *testPKI
	vtpm  *tpmVTPM
	imds  *httptest.Server
	hcl   []byte
	coll  *Collateral
	quote func(*testQuote) // changes quotes the fake service makes
}

type azureEnvOptions struct {
	body        func(*TDReport)
	runtimeData func([]byte) []byte
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
	body := defaultBody()
	sum := sha256.Sum256(runtimeData)
	body.ReportData = [64]byte{}
	copy(body.ReportData[:], sum[:])
	if o.body != nil {
		o.body(&body)
	}
	hcl, err := azure.MarshalHCLReport(azure.ReportTypeTDX, azure.HashSHA256, encodeTDReportStruct(t, &body), runtimeData, 165)
	if err != nil {
		t.Fatal(err)
	}
	if err := azuretest.WriteHCLReportNV(node.TPM, hcl); err != nil {
		t.Fatal(err)
	}
	p := newTestPKI(t)
	e := &azureEnv{pki: p, vtpm: &tpmVTPM{node: node, ak: ak}, hcl: hcl, coll: p.collateral(t, p.newCollateral())}
	e.imds = azuretest.NewTDQuoteServer(func(report []byte) ([]byte, error) {
		td, err := ParseTDReport(report)
		if err != nil {
			return nil, err
		}
		tq := p.newQuote()
		tq.body = td.Body
		if e.quote != nil {
			e.quote(tq)
		}
		return append(p.build(t, tq), make([]byte, 70)...), nil
	})
	t.Cleanup(e.imds.Close)
	return e
}

func (e *azureEnv) issuer(t *testing.T) *AzureIssuer {
	t.Helper()
	iss, err := NewAzureIssuer(azure.NewNVReader(e.vtpm.node.TPM), &azure.TDQuoteClient{URL: e.imds.URL + azuretest.TDQuotePath}, e.vtpm)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func (e *azureEnv) validator(t *testing.T, pol *Policy, pcrs measurements.M) *AzureValidator {
	t.Helper()
	if pol == nil {
		pol = clusterPolicy()
	}
	if pcrs == nil {
		pcrs = e.vtpm.node.Policy
	}
	v, err := NewAzureValidator(e.coll, pol, pcrs, func() time.Time { return testNow }, nil)
	if err != nil {
		t.Fatal(err)
	}
	v.root = e.pki.root
	return v
}

// document builds evidence as the issuer does, without its checks (for TDs the issuer refuses).
func (e *azureEnv) document(t *testing.T, nonce, userData []byte) []byte {
	t.Helper()
	ctx := context.Background()
	padded, err := (&azure.TDQuoteClient{URL: e.imds.URL + azuretest.TDQuotePath}).GetTDQuote(ctx, e.hcl[azure.HeaderSize:azure.HeaderSize+azure.TDReportSize])
	if err != nil {
		t.Fatal(err)
	}
	quote, err := TrimQuotePadding(padded)
	if err != nil {
		t.Fatal(err)
	}
	b := attestation.BindingDigest(attestation.AzureTDX, nonce, userData)
	tpmEv, err := e.vtpm.Quote(ctx, b[:])
	if err != nil {
		t.Fatal(err)
	}
	doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.AzureTDX.Name, UserData: userData, TPM: tpmEv,
		TDX: &attestation.TDXEvidence{Quote: quote, HCLReport: e.hcl}}
	ev, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestAzureIssueValidateWithTPMSimulator issues azure-tdx evidence from the simulator's NV index, the fake
// metadata service and real quotes, validates it, and asserts which check catches each alteration.
func TestAzureIssueValidateWithTPMSimulator(t *testing.T) {
	ctx := context.Background()
	env := newAzureEnv(t, azureEnvOptions{})
	iss, v := env.issuer(t), env.validator(t, nil, nil)
	if iss.Variant().Name != attestation.AzureTDX.Name || v.Variant().Name != attestation.AzureTDX.Name {
		t.Fatal("variant")
	}
	user := []byte("tls key hash")
	ev, err := iss.Issue(ctx, testNonce(5), user)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := v.Validate(ctx, ev, testNonce(5)); err != nil || string(got) != string(user) {
		t.Fatalf("Validate = %q, %v", got, err)
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc.TDX.HCLReport, env.hcl) || doc.TPM.AKPublic != nil || doc.SNP != nil {
		t.Error("the document does not carry the HCL report as read")
	}
	if _, err := ParseQuote(doc.TDX.Quote); err != nil {
		t.Errorf("the document's quote still carries padding: %v", err)
	}

	// A quote of another RSA key of the same vTPM.
	tmpl := client.AKTemplateRSA()
	tmpl.RSAParameters.ModulusRaw = bytes.Repeat([]byte{0x5a}, 256)
	other, err := client.NewKey(env.vtpm.node.TPM, tpm2.HandleOwner, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	bind := attestation.BindingDigest(attestation.AzureTDX, testNonce(5), user)
	otherQuote, err := quoteSel(env.vtpm.node.TPM, other, env.vtpm.node.Log, bind[:], client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	partial, err := quoteSel(env.vtpm.node.TPM, env.vtpm.ak, env.vtpm.node.Log, bind[:], tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}})
	if err != nil {
		t.Fatal(err)
	}
	// A quote of the test PKI for another TD (other MRTD) and a broken quote signature.
	env.quote = func(q *testQuote) { q.body.MRTD[0] ^= 1 }
	otherTD, err := (&azure.TDQuoteClient{URL: env.imds.URL + azuretest.TDQuotePath}).GetTDQuote(ctx, env.hcl[azure.HeaderSize:azure.HeaderSize+azure.TDReportSize])
	if err != nil {
		t.Fatal(err)
	}
	env.quote = nil
	otherTD, _ = TrimQuotePadding(otherTD)
	const td = azure.HeaderSize
	runtime := azure.HeaderSize + azure.HardwareReportAreaSize + azure.RequestDataFixedSize
	for name, tc := range map[string]struct {
		ev     []byte
		nonce  []byte
		target error
		want   string
	}{
		"vTPM quote with wrong nonce":    {ev, testNonce(6), nil, "not bound to this nonce and user data"},
		"vTPM quote by another AK":       {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.Quotes = otherQuote.Quotes }), nil, nil, "verifying quote"},
		"PCRs not covered by vTPM quote": {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.Quotes = partial.Quotes }), nil, nil, "want SHA-256 PCRs 0-23"},
		"PCR value altered":              {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.Quotes[0].PCRs[4] = make([]byte, 32) }), nil, nil, "do not match the quoted PCR digest"},
		"user data altered":              {mutateDoc(t, ev, func(d *attestation.Document) { d.UserData = []byte("other key") }), nil, nil, "not bound to this nonce and user data"},
		"attestation key carried":        {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM.AKPublic = []byte{1} }), nil, nil, "takes the key only from the HCL report"},
		"no HCL report":                  {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.HCLReport = nil }), nil, nil, "no HCL report"},
		"no TPM part":                    {mutateDoc(t, ev, func(d *attestation.Document) { d.TPM = nil }), nil, nil, "no TPM part"},
		"quote signature broken":         {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.Quote[48+200] ^= 1 }), nil, ErrInvalidSignature, ""},
		"quote for another TD report":    {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.Quote = otherTD }), nil, ErrTDReportMismatch, "MRTD"},
		"TD report altered in HCL":       {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.HCLReport[td+offTDReportRTMR] ^= 1 }), nil, ErrTDReportMismatch, "RTMR[0]"},
		"runtime data tampered":          {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.HCLReport[runtime+3] = 'K' }), nil, ErrHCLReportData, ""},
		"hash type unknown":              {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.HCLReport[runtime-8] = 0 }), nil, azure.ErrMalformedHCLReport, "hash type 0"},
		"truncated HCL report":           {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.HCLReport = d.TDX.HCLReport[:1500] }), nil, azure.ErrMalformedHCLReport, "truncated"},
		"trailing bytes in HCL report":   {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.HCLReport[len(d.TDX.HCLReport)-1] = 1 }), nil, azure.ErrMalformedHCLReport, "non-zero bytes after"},
		"padded quote":                   {mutateDoc(t, ev, func(d *attestation.Document) { d.TDX.Quote = append(d.TDX.Quote, 0, 0) }), nil, ErrMalformedQuote, "trailing"},
		"HCL report in qemu-tdx":         {mutateDoc(t, ev, func(d *attestation.Document) { d.Variant = attestation.QEMUTDX.Name; d.TPM = nil }), nil, attestation.ErrMalformedDocument, "no HCL report"},
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

	// The PCK chain to another root: refused.
	wrongRoot := env.validator(t, nil, nil)
	wrongRoot.root = newTestPKI(t).root
	if _, err := wrongRoot.Validate(ctx, ev, testNonce(5)); !errors.Is(err, ErrUntrustedCertificate) {
		t.Errorf("PCK chain to a wrong root: %v", err)
	}
	// The embedded Intel root: the test PKI chains to nothing trusted.
	embedded := env.validator(t, nil, nil)
	embedded.root = nil
	if _, err := embedded.Validate(ctx, ev, testNonce(5)); !errors.Is(err, ErrUntrustedCertificate) {
		t.Errorf("test PKI against the Intel root: %v", err)
	}
	// The TDX policy decides on the verified TD.
	for name, change := range map[string]func(*Policy){
		"MRTD":    func(p *Policy) { p.MRTD = []HexBytes{bytes.Repeat([]byte{0x42}, 48)} },
		"RTMR[1]": func(p *Policy) { p.RTMR1 = bytes.Repeat([]byte{0x42}, 48) },
		"XFAM":    func(p *Policy) { p.XFAM = HexBytes{1, 2, 3, 4, 5, 6, 7, 8} },
	} {
		pol := clusterPolicy()
		change(pol)
		if _, err := env.validator(t, pol, nil).Validate(ctx, ev, testNonce(5)); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), name) {
			t.Errorf("policy mismatch %s: %v", name, err)
		}
	}
	// The measurement policy decides on the quoted PCRs.
	wrong := measurements.M{}
	for k, m := range env.vtpm.node.Policy {
		wrong[k] = m
	}
	wrong[4] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
	var me *measurements.Error
	if _, err := env.validator(t, nil, wrong).Validate(ctx, ev, testNonce(5)); !errors.As(err, &me) {
		t.Errorf("wrong measurements: %v", err)
	}
}

// TestAzureDebugTD: the issuer refuses a TD in debug mode, and the validator refuses its evidence.
func TestAzureDebugTD(t *testing.T) {
	env := newAzureEnv(t, azureEnvOptions{body: func(b *TDReport) { b.TDAttributes[0] |= tdAttributeDebug }})
	if _, err := env.issuer(t).Issue(context.Background(), testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "debug mode") {
		t.Fatalf("Issue = %v", err)
	}
	ev := env.document(t, testNonce(1), nil)
	pol := clusterPolicy()
	if _, err := env.validator(t, pol, nil).Validate(context.Background(), ev, testNonce(1)); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "DEBUG") {
		t.Fatalf("Validate = %v", err)
	}
}

// TestAzureIssuerRefuses checks that the issuer refuses what no verifier accepts.
func TestAzureIssuerRefuses(t *testing.T) {
	ctx := context.Background()
	t.Run("attestation key in runtime data replaced", func(t *testing.T) {
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
		// The validator verifies the vTPM quote with the key of the runtime data: it fails.
		if _, err := env.validator(t, nil, nil).Validate(ctx, env.document(t, testNonce(1), nil), testNonce(1)); err == nil || !strings.Contains(err.Error(), "verifying quote") {
			t.Fatalf("Validate = %v", err)
		}
	})
	t.Run("REPORTDATA not bound", func(t *testing.T) {
		env := newAzureEnv(t, azureEnvOptions{body: func(b *TDReport) { b.ReportData[0] ^= 1 }})
		if _, err := env.issuer(t).Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "does not carry the SHA-256 of its runtime data") {
			t.Fatalf("Issue = %v", err)
		}
		if _, err := env.validator(t, nil, nil).Validate(ctx, env.document(t, testNonce(1), nil), testNonce(1)); !errors.Is(err, ErrHCLReportData) {
			t.Fatalf("Validate = %v", err)
		}
	})
	t.Run("quote of another TD report", func(t *testing.T) {
		env := newAzureEnv(t, azureEnvOptions{})
		env.quote = func(q *testQuote) { q.body.ReportData[1] ^= 1 }
		if _, err := env.issuer(t).Issue(ctx, testNonce(1), nil); !errors.Is(err, ErrTDReportMismatch) {
			t.Fatalf("Issue = %v", err)
		}
	})
	t.Run("metadata service", func(t *testing.T) {
		env := newAzureEnv(t, azureEnvOptions{})
		iss, err := NewAzureIssuer(azure.NewNVReader(env.vtpm.node.TPM), &azure.TDQuoteClient{URL: env.imds.URL + "/acc/other"}, env.vtpm)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := iss.Issue(ctx, testNonce(1), nil); err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("metadata service answers 404: %v", err)
		}
		if _, err := iss.Issue(ctx, []byte("short"), nil); !errors.Is(err, attestation.ErrInvalidNonce) {
			t.Errorf("short nonce: %v", err)
		}
		if _, err := NewAzureIssuer(nil, &azure.TDQuoteClient{}, env.vtpm); err == nil {
			t.Error("issuer without HCL report source")
		}
		if _, err := (&AzureIssuer{}).Issue(ctx, testNonce(1), nil); err == nil {
			t.Error("zero issuer")
		}
	})
}

// The fake metadata service serves the genuine quote for the genuine TD report, as Azure did.
func TestTDQuoteClientGenuine(t *testing.T) {
	hcl := readFile(t, genuineAzureHCLFile)
	padded := readFile(t, genuineAzureQuoteFile)
	report := hcl[azure.HeaderSize : azure.HeaderSize+azure.TDReportSize]
	srv := azuretest.NewTDQuoteServer(func(r []byte) ([]byte, error) {
		if !bytes.Equal(r, report) {
			return nil, errors.New("no quote recorded for this TD report")
		}
		return padded, nil
	})
	defer srv.Close()
	c := &azure.TDQuoteClient{URL: srv.URL + azuretest.TDQuotePath}
	got, err := c.GetTDQuote(context.Background(), report)
	if err != nil || !bytes.Equal(got, padded) {
		t.Fatalf("GetTDQuote = %d bytes, %v", len(got), err)
	}
	if _, err := c.GetTDQuote(context.Background(), flip(report, 600)); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("unknown TD report: %v", err)
	}
	if _, err := c.GetTDQuote(context.Background(), report[:100]); err == nil {
		t.Error("short TD report sent")
	}
}

// FuzzBindHCLReport runs the TD report parser, the padding trimmer and the HCL report binding on mutated
// genuine data: nothing panics, a parsed TD report keeps its bytes, a trimmed quote is a prefix followed by
// zeros, and whatever binds is the genuine TD report with its runtime data.
func FuzzBindHCLReport(f *testing.F) {
	hcl, quote := genuineAzure(f)
	padded := readFile(f, genuineAzureQuoteFile)
	f.Add(hcl, padded)
	f.Add(hcl[:azure.HeaderSize+azure.TDReportSize], quote)
	f.Add(hcl[azure.HeaderSize:azure.HeaderSize+azure.TDReportSize], []byte{5, 0, 2, 0})
	q := mustParseQuote(f, quote)
	f.Fuzz(func(t *testing.T, h, qraw []byte) {
		if len(h) >= TDReportStructSize {
			if r, err := ParseTDReport(h[:TDReportStructSize]); err == nil && !bytes.Equal(r.Raw(), h[:TDReportStructSize]) {
				t.Fatal("a parsed TD report does not keep its bytes")
			}
		}
		if trimmed, err := TrimQuotePadding(qraw); err == nil {
			if !bytes.Equal(trimmed, qraw[:len(trimmed)]) || !isZero(qraw[len(trimmed):]) {
				t.Fatal("trimming removed more than zero padding")
			}
		}
		b, err := BindHCLReport(h, q)
		if err != nil {
			return
		}
		// What binds: every field the quote carries, REPORTDATA, and the runtime data it hashes. The TD report's
		// other bytes (CPUSVN, the TEE info hashes, the MAC) only the platform's MAC key could bind; no check
		// reads them, so a report that differs there binds too (seed 3dfc9fd15028f81d changes one hash byte).
		want, _ := azure.ParseHCLReport(hcl)
		td, _ := ParseTDReport(want.HardwareReport)
		if b.TDReport.Body != td.Body || b.TDReport.ReportData != td.ReportData || !bytes.Equal(b.HCL.RuntimeData, want.RuntimeData) {
			t.Fatal("another TD report or other runtime data bound to the genuine quote")
		}
	})
}

// FuzzParseTDReport runs the TD report parser and the padding trimmer on mutated genuine data: nothing
// panics, a parsed TD report keeps its bytes and its fields, and a trimmed quote is a prefix of the input
// followed only by zeros.
func FuzzParseTDReport(f *testing.F) {
	hcl := readFile(f, genuineAzureHCLFile)
	f.Add(hcl[azure.HeaderSize:azure.HeaderSize+azure.TDReportSize], readFile(f, genuineAzureQuoteFile))
	f.Add(make([]byte, TDReportStructSize), []byte{5, 0, 2, 0})
	f.Fuzz(func(t *testing.T, report, padded []byte) {
		if r, err := ParseTDReport(report); err == nil {
			if !bytes.Equal(r.Raw(), report) || !bytes.Equal(r.Body.MRTD[:], report[offTDReportTDInfo+16:offTDReportTDInfo+64]) || r.ReportData != r.Body.ReportData {
				t.Fatal("a parsed TD report does not keep its bytes")
			}
		}
		if trimmed, err := TrimQuotePadding(padded); err == nil {
			if !bytes.Equal(trimmed, padded[:len(trimmed)]) || !isZero(padded[len(trimmed):]) {
				t.Fatal("trimming removed more than zero padding")
			}
		}
	})
}
