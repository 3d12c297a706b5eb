package tdx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
)

// Genuine data (package tdxtest, see its testdata/README.md).
const genuineQuoteSize = tdxtest.QuoteSize

// genuineTime lies in the validity window of every part of the genuine collateral.
var genuineTime = tdxtest.Time

// genuineQuote returns the genuine quote without the suffix its file carries.
func genuineQuote(testing.TB) []byte { return tdxtest.Quote() }

// genuineCollDir returns a directory of t with the genuine collateral.
func genuineCollDir(t testing.TB) string { return tdxtest.CollateralDir(t) }

func genuineCollateralFiles(testing.TB) CollateralFiles {
	return CollateralFiles{
		TCBInfos:        [][]byte{tdxtest.Collateral(tdxtest.TCBInfoFile)},
		QEIdentity:      tdxtest.Collateral(FileQEIdentity),
		TCBSigningChain: tdxtest.Collateral(FileTCBSigningChain),
		RootCACRL:       tdxtest.Collateral(FileRootCACRL),
		PCKPlatformCRL:  tdxtest.Collateral(FilePCKPlatformCRL),
	}
}

func mustParseCollateral(t testing.TB, f CollateralFiles) *Collateral {
	t.Helper()
	c, err := ParseCollateral(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustParseQuote(t testing.TB, raw []byte) *Quote {
	t.Helper()
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// testNow is the verification time of test PKIs; their certificates and collateral are valid around it.
var testNow = time.Date(2025, time.March, 1, 12, 0, 0, 0, time.UTC)

// testPKI is an Intel-like PKI made for one test: a test root (never trusted by production code), a PCK
// platform CA, a PCK certificate with an SGX extension, a TCB signing certificate, and the quoting
// enclave's attestation key.
type testPKI struct {
	root, ca, pck, signer                   *x509.Certificate
	rootKey, caKey, pckKey, signerKey, akey *ecdsa.PrivateKey

	fmspc  [6]byte
	pceid  [2]byte
	pckTCB [16]byte
	pcesvn uint16
}

var (
	testFMSPC      = [6]byte{0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00}
	testQEMRSigner = [32]byte{0xdc, 0x9e, 0x2a, 0x7c}
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var serial int64 = 1000

func issue(t testing.TB, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, pub *ecdsa.PublicKey) *x509.Certificate {
	t.Helper()
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = testNow.AddDate(-1, 0, 0)
		tmpl.NotAfter = testNow.AddDate(5, 0, 0)
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Test"}},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{
		rootKey: newKey(t), caKey: newKey(t), pckKey: newKey(t), signerKey: newKey(t), akey: newKey(t),
		fmspc:  testFMSPC,
		pckTCB: [16]byte{2, 2, 2, 2, 2, 1, 0, 2},
		pcesvn: 11,
	}
	p.root = issue(t, caTemplate("Test SGX Root CA"), nil, p.rootKey, &p.rootKey.PublicKey)
	p.ca = issue(t, caTemplate(cnPlatformCA), p.root, p.rootKey, &p.caKey.PublicKey)
	p.signer = issue(t, &x509.Certificate{
		Subject:  pkix.Name{CommonName: "Intel SGX TCB Signing", Organization: []string{"Test"}},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}, p.root, p.rootKey, &p.signerKey.PublicKey)
	p.pck = p.issuePCK(t, p.ca, p.caKey)
	return p
}

func (p *testPKI) issuePCK(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey) *x509.Certificate {
	return issue(t, &x509.Certificate{
		Subject:         pkix.Name{CommonName: "Intel SGX PCK Certificate", Organization: []string{"Test"}},
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: oidSGXExtension, Value: sgxExtensionDER(t, p.fmspc, p.pceid, p.pckTCB, p.pcesvn)}},
	}, ca, caKey, &p.pckKey.PublicKey)
}

func rawField(t testing.TB, id asn1.ObjectIdentifier, v any) asn1.RawValue {
	t.Helper()
	val, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		ID    asn1.ObjectIdentifier
		Value asn1.RawValue
	}{id, asn1.RawValue{FullBytes: val}})
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{FullBytes: der}
}

func sgxExtensionDER(t testing.TB, fmspc [6]byte, pceid [2]byte, tcb [16]byte, pcesvn uint16) []byte {
	t.Helper()
	var tcbFields []asn1.RawValue
	for i := range 16 {
		tcbFields = append(tcbFields, rawField(t, sgxTCBOID(i+1), int(tcb[i])))
	}
	tcbFields = append(tcbFields,
		rawField(t, sgxTCBOID(17), int(pcesvn)),
		rawField(t, sgxTCBOID(18), tcb[:]))
	tcbDER, err := asn1.Marshal(tcbFields)
	if err != nil {
		t.Fatal(err)
	}
	tcbField, err := asn1.Marshal(struct {
		ID    asn1.ObjectIdentifier
		Value asn1.RawValue
	}{oidSGXTCB, asn1.RawValue{FullBytes: tcbDER}})
	if err != nil {
		t.Fatal(err)
	}
	fields := []asn1.RawValue{
		rawField(t, oidSGXPPID, bytes.Repeat([]byte{0xaa}, 16)),
		{FullBytes: tcbField},
		rawField(t, oidSGXPCEID, pceid[:]),
		rawField(t, oidSGXFMSPC, fmspc[:]),
		rawField(t, oidSGXType, asn1.Enumerated(0)),
	}
	der, err := asn1.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemChain(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func signP256(t testing.TB, k *ecdsa.PrivateKey, msg []byte) [64]byte {
	t.Helper()
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		t.Fatal(err)
	}
	var out [64]byte
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// testQuote describes a quote to build and sign with the test PKI.
type testQuote struct {
	version  uint16
	bodyType uint16 // v5 only
	body     TDReport
	qe       EnclaveReport
	authData []byte
	chain    []byte // PEM; default: PCK, CA, root
	// skipBinding leaves the QE report data as set in qe (to test a broken binding).
	skipBinding bool
	// qeReportDataTail is written to the last byte of the QE report data, which must be zero.
	qeReportDataTail byte
}

func defaultBody() TDReport {
	var b TDReport
	b.TEETCBSVN = [16]byte{3, 0, 5}
	b.MRSEAM = [48]byte{0x5e, 0xa1}
	b.TDAttributes = [8]byte{0, 0, 0, 0x10} // SEPT_VE_DISABLE
	b.XFAM = [8]byte{0xe7, 0x1a, 0x06}
	b.MRTD = [48]byte{0x11, 0x11}
	for i := range b.RTMR {
		b.RTMR[i] = [48]byte{0x20 + byte(i)}
	}
	return b
}

func defaultQE() EnclaveReport {
	return EnclaveReport{
		CPUSVN:     [16]byte{4, 4},
		Attributes: [16]byte{0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7},
		MRSigner:   testQEMRSigner,
		ISVProdID:  2,
		ISVSVN:     4,
	}
}

func (p *testPKI) newQuote() *testQuote {
	return &testQuote{version: QuoteVersion4, bodyType: BodyTypeTDReport10, body: defaultBody(), qe: defaultQE(), authData: bytes.Repeat([]byte{0xa5}, 32)}
}

func le16(b *bytes.Buffer, v uint16) { _ = binary.Write(b, binary.LittleEndian, v) }
func le32(b *bytes.Buffer, v uint32) { _ = binary.Write(b, binary.LittleEndian, v) }

func encodeTDReport(b *bytes.Buffer, r *TDReport, v15 bool) {
	b.Write(r.TEETCBSVN[:])
	b.Write(r.MRSEAM[:])
	b.Write(r.MRSignerSEAM[:])
	b.Write(r.SEAMAttributes[:])
	b.Write(r.TDAttributes[:])
	b.Write(r.XFAM[:])
	b.Write(r.MRTD[:])
	b.Write(r.MRConfigID[:])
	b.Write(r.MROwner[:])
	b.Write(r.MROwnerConfig[:])
	for i := range r.RTMR {
		b.Write(r.RTMR[i][:])
	}
	b.Write(r.ReportData[:])
	if v15 {
		b.Write(r.TEETCBSVN2[:])
		b.Write(r.MRServiceTD[:])
	}
}

func encodeEnclaveReport(e *EnclaveReport) []byte {
	b := make([]byte, enclaveReportSize)
	copy(b[0:16], e.CPUSVN[:])
	binary.LittleEndian.PutUint32(b[16:20], e.MiscSelect)
	copy(b[48:64], e.Attributes[:])
	copy(b[64:96], e.MREnclave[:])
	copy(b[128:160], e.MRSigner[:])
	binary.LittleEndian.PutUint16(b[256:258], e.ISVProdID)
	binary.LittleEndian.PutUint16(b[258:260], e.ISVSVN)
	copy(b[320:384], e.ReportData[:])
	return b
}

// build encodes and signs the quote.
func (p *testPKI) build(t testing.TB, q *testQuote) []byte {
	t.Helper()
	var b bytes.Buffer
	le16(&b, q.version)
	le16(&b, AttestationKeyTypeECDSAP256)
	le32(&b, TEETypeTDX)
	b.Write(make([]byte, 4))
	b.Write(intelQEVendorID[:])
	b.Write(make([]byte, 20))
	v15 := false
	if q.version == QuoteVersion5 {
		le16(&b, q.bodyType)
		v15 = q.bodyType == BodyTypeTDReport15
		size := tdReport10Size
		if v15 {
			size = tdReport15Size
		}
		le32(&b, uint32(size))
	}
	encodeTDReport(&b, &q.body, v15)
	sig := signP256(t, p.akey, b.Bytes())

	point, err := p.akey.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	ak := point[1:] // x || y
	qe := q.qe
	if !q.skipBinding {
		h := sha256.Sum256(append(append([]byte{}, ak...), q.authData...))
		qe.ReportData = [64]byte{}
		copy(qe.ReportData[:], h[:])
		qe.ReportData[63] = q.qeReportDataTail
	}
	qeRaw := encodeEnclaveReport(&qe)
	qeSig := signP256(t, p.pckKey, qeRaw)
	chain := q.chain
	if chain == nil {
		chain = pemChain(p.pck, p.ca, p.root)
	}

	var cert bytes.Buffer
	cert.Write(qeRaw)
	cert.Write(qeSig[:])
	le16(&cert, uint16(len(q.authData)))
	cert.Write(q.authData)
	le16(&cert, certDataTypePCKPEM)
	le32(&cert, uint32(len(chain)))
	cert.Write(chain)

	var sd bytes.Buffer
	sd.Write(sig[:])
	sd.Write(ak)
	le16(&sd, certDataTypeQEReport)
	le32(&sd, uint32(cert.Len()))
	sd.Write(cert.Bytes())

	le32(&b, uint32(sd.Len()))
	b.Write(sd.Bytes())
	return b.Bytes()
}

// testCollateral describes collateral to make with the test PKI.
type testCollateral struct {
	tcbLevels       []map[string]any
	moduleIDs       []map[string]any
	qeLevels        []map[string]any
	issue, next     time.Time
	tcbInfoNext     time.Time // next update of the TCB info, if not next
	revokedByPCKCRL []*big.Int
	revokedByRoot   []*big.Int
	tdxModule       map[string]any
}

func svnList(svns ...int) []map[string]any {
	out := make([]map[string]any, 16)
	for i := range out {
		v := 0
		if i < len(svns) {
			v = svns[i]
		}
		out[i] = map[string]any{"svn": v}
	}
	return out
}

func platformLevel(sgx []int, pcesvn int, tdx []int, status string) map[string]any {
	return map[string]any{
		"tcb":       map[string]any{"sgxtcbcomponents": svnList(sgx...), "pcesvn": pcesvn, "tdxtcbcomponents": svnList(tdx...)},
		"tcbDate":   "2024-11-13T00:00:00Z",
		"tcbStatus": status,
	}
}

func svnLevel(isvsvn int, status string) map[string]any {
	return map[string]any{"tcb": map[string]any{"isvsvn": isvsvn}, "tcbDate": "2024-11-13T00:00:00Z", "tcbStatus": status}
}

func (p *testPKI) newCollateral() *testCollateral {
	return &testCollateral{
		tcbLevels: []map[string]any{
			platformLevel([]int{2, 2, 2, 2, 2, 1, 0, 2}, 11, []int{3, 0, 5}, "UpToDate"),
			platformLevel([]int{2, 2, 2, 2, 2, 1, 0, 2}, 11, []int{3, 0, 4}, "OutOfDate"),
			platformLevel([]int{1, 1, 1, 1, 1, 1, 0, 1}, 5, []int{2, 0, 3}, "OutOfDate"),
		},
		qeLevels: []map[string]any{svnLevel(4, "UpToDate"), svnLevel(2, "OutOfDate")},
		issue:    testNow.Add(-24 * time.Hour),
		next:     testNow.Add(29 * 24 * time.Hour),
		tdxModule: map[string]any{
			"mrsigner":       strings.Repeat("00", 48),
			"attributes":     "0000000000000000",
			"attributesMask": "FFFFFFFFFFFFFFFF",
		},
	}
}

// signedJSON returns {"<key>": body, "signature": sig(body)}.
func signedJSON(t testing.TB, k *ecdsa.PrivateKey, key string, body any) []byte {
	t.Helper()
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	sig := signP256(t, k, raw)
	return []byte(`{"` + key + `":` + string(raw) + `,"signature":"` + hex.EncodeToString(sig[:]) + `"}`)
}

func (p *testPKI) crl(t testing.TB, issuer *x509.Certificate, key *ecdsa.PrivateKey, c *testCollateral, revoked []*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: c.issue, NextUpdate: c.next}
	for _, s := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: c.issue})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (p *testPKI) files(t testing.TB, c *testCollateral) CollateralFiles {
	t.Helper()
	tcbNext := c.next
	if !c.tcbInfoNext.IsZero() {
		tcbNext = c.tcbInfoNext
	}
	tcbInfo := map[string]any{
		"id": "TDX", "version": 3,
		"issueDate": c.issue.Format(time.RFC3339), "nextUpdate": tcbNext.Format(time.RFC3339),
		"fmspc": hex.EncodeToString(p.fmspc[:]), "pceId": hex.EncodeToString(p.pceid[:]),
		"tcbType": 0, "tcbEvaluationDataNumber": 17,
		"tdxModule": c.tdxModule,
		"tcbLevels": c.tcbLevels,
	}
	if c.moduleIDs != nil {
		tcbInfo["tdxModuleIdentities"] = c.moduleIDs
	}
	qe := map[string]any{
		"id": "TD_QE", "version": 2,
		"issueDate": c.issue.Format(time.RFC3339), "nextUpdate": c.next.Format(time.RFC3339),
		"tcbEvaluationDataNumber": 17,
		"miscselect":              "00000000", "miscselectMask": "FFFFFFFF",
		"attributes":     "11000000000000000000000000000000",
		"attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner":       hex.EncodeToString(testQEMRSigner[:]),
		"isvprodid":      2,
		"tcbLevels":      c.qeLevels,
	}
	return CollateralFiles{
		TCBInfos:        [][]byte{signedJSON(t, p.signerKey, "tcbInfo", tcbInfo)},
		QEIdentity:      signedJSON(t, p.signerKey, "enclaveIdentity", qe),
		TCBSigningChain: pemChain(p.signer, p.root),
		RootCACRL:       p.crl(t, p.root, p.rootKey, c, c.revokedByRoot),
		PCKPlatformCRL:  p.crl(t, p.ca, p.caKey, c, c.revokedByPCKCRL),
	}
}

func (p *testPKI) collateral(t testing.TB, c *testCollateral) *Collateral {
	t.Helper()
	return mustParseCollateral(t, p.files(t, c))
}

// verify verifies raw with the test root at testNow.
func (p *testPKI) verify(t testing.TB, raw []byte, c *Collateral) (*VerifiedQuote, error) {
	t.Helper()
	q, err := ParseQuote(raw)
	if err != nil {
		return nil, err
	}
	return verify(q, c, p.root, testNow)
}

// testPolicy accepts the default test quote with reportData.
func testPolicy(reportData [64]byte) *Policy {
	b := defaultBody()
	return &Policy{
		MRTD:       []HexBytes{b.MRTD[:]},
		RTMR0:      b.RTMR[0][:],
		RTMR1:      b.RTMR[1][:],
		RTMR2:      b.RTMR[2][:],
		RTMR3:      b.RTMR[3][:],
		MRSEAM:     []HexBytes{b.MRSEAM[:]},
		XFAM:       b.XFAM[:],
		ReportData: reportData[:],
	}
}
