package snp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"math/big"
	"os"
	"sync"
	"testing"
	"time"
)

// This file builds a test-only AMD-like PKI and signs reports with it. Its roots are generated at test time
// and never enter the embedded trust store; tests pass them explicitly with NewRoots.

// testNow is the verification time of every test: inside the validity of the genuine VCEK (2022-2029) and
// of the test PKI.
var testNow = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

func fixedNow() time.Time { return testNow }

// testPKI is an ARK, ASK and ASVK of one product, with their keys.
type testPKI struct {
	product        Product
	arkKey, askKey *rsa.PrivateKey
	asvkKey        *rsa.PrivateKey
	ark, ask, asvk *x509.Certificate
}

var (
	pkiMu    sync.Mutex
	pkiCache = map[Product]*testPKI{}
)

func amdName(cn string) pkix.Name {
	return pkix.Name{
		CommonName: cn, Organization: []string{"Advanced Micro Devices (TEST ONLY)"}, OrganizationalUnit: []string{"Engineering"},
		Country: []string{"US"}, Province: []string{"CA"}, Locality: []string{"Santa Clara"},
	}
}

func randSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub any, priv any) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatalf("creating %s: %v", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func caTemplate(t testing.TB, cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               amdName(cn),
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
	}
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// getTestPKI returns the (cached) test PKI of a product.
func getTestPKI(t testing.TB, p Product) *testPKI {
	t.Helper()
	pkiMu.Lock()
	defer pkiMu.Unlock()
	if pki, ok := pkiCache[p]; ok {
		return pki
	}
	pki := &testPKI{product: p, arkKey: rsaKey(t), askKey: rsaKey(t), asvkKey: rsaKey(t)}
	arkT := caTemplate(t, "ARK-"+p.String())
	pki.ark = mustCreate(t, arkT, arkT, &pki.arkKey.PublicKey, pki.arkKey)
	askT := caTemplate(t, "SEV-"+p.String())
	askT.MaxPathLenZero = true
	pki.ask = mustCreate(t, askT, pki.ark, &pki.askKey.PublicKey, pki.arkKey)
	asvkT := caTemplate(t, "SEV-VLEK-"+p.String())
	asvkT.MaxPathLenZero = true
	pki.asvk = mustCreate(t, asvkT, pki.ark, &pki.asvkKey.PublicKey, pki.arkKey)
	pkiCache[p] = pki
	return pki
}

// roots returns trusted roots made of the test PKIs of the given products.
func testRoots(t testing.TB, products ...Product) *Roots {
	t.Helper()
	m := map[Product]ProductRoots{}
	for _, p := range products {
		pki := getTestPKI(t, p)
		m[p] = ProductRoots{ARK: pki.ark, ASK: pki.ask, ASVK: pki.asvk}
	}
	r, err := NewRoots(m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// ekOptions describe a test VCEK or VLEK.
type ekOptions struct {
	vlek        bool
	productName string // default "<product>-B0" (VCEK) or "<product>" (VLEK)
	tcb         TCB
	chipID      []byte // hwID of a VCEK; default testChipID
	notAfter    time.Time
	issuer      *x509.Certificate // default the ASK (VCEK) or ASVK (VLEK)
	issuerKey   *rsa.PrivateKey
	omitExt     asn1.ObjectIdentifier // an AMD extension to leave out
}

var testChipID = func() []byte {
	b := make([]byte, ChipIDSize)
	for i := range b {
		b[i] = byte(0xc0 + i)
	}
	return b
}()

func asn1Must(t testing.TB, v any, params string) []byte {
	t.Helper()
	b, err := asn1.MarshalWithParams(v, params)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// endorsementKey creates a VCEK or VLEK certificate and its private key.
func (pki *testPKI) endorsementKey(t testing.TB, o ekOptions) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cn, name := "SEV-VCEK", pki.product.String()+"-B0"
	issuer, issuerKey := pki.ask, pki.askKey
	if o.vlek {
		cn, name = "SEV-VLEK", pki.product.String()
		issuer, issuerKey = pki.asvk, pki.asvkKey
	}
	if o.productName != "" {
		name = o.productName
	}
	if o.issuer != nil {
		issuer, issuerKey = o.issuer, o.issuerKey
	}
	kds := func(arcs ...int) asn1.ObjectIdentifier {
		return append(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1}, arcs...)
	}
	exts := []pkix.Extension{
		{Id: kds(1), Value: asn1Must(t, 1, "")},
		{Id: kds(2), Value: asn1Must(t, name, "ia5")},
		{Id: kds(3, 1), Value: asn1Must(t, int(o.tcb.Bootloader), "")},
		{Id: kds(3, 2), Value: asn1Must(t, int(o.tcb.TEE), "")},
		{Id: kds(3, 3), Value: asn1Must(t, int(o.tcb.SNP), "")},
		{Id: kds(3, 4), Value: asn1Must(t, 0, "")},
		{Id: kds(3, 5), Value: asn1Must(t, 0, "")},
		{Id: kds(3, 6), Value: asn1Must(t, 0, "")},
		{Id: kds(3, 7), Value: asn1Must(t, 0, "")},
		{Id: kds(3, 8), Value: asn1Must(t, int(o.tcb.Microcode), "")},
	}
	if pki.product == Turin {
		exts = append(exts, pkix.Extension{Id: kds(3, 9), Value: asn1Must(t, int(o.tcb.FMC), "")})
	}
	if o.vlek {
		exts = append(exts, pkix.Extension{Id: kds(5), Value: asn1Must(t, "test-csp", "ia5")})
	} else {
		chip := o.chipID
		if chip == nil {
			chip = testChipID
			if pki.product == Turin {
				chip = testChipID[:8]
			}
		}
		exts = append(exts, pkix.Extension{Id: kds(4), Value: chip})
	}
	if o.omitExt != nil {
		for i, e := range exts {
			if e.Id.Equal(o.omitExt) {
				exts = append(exts[:i], exts[i+1:]...)
				break
			}
		}
	}
	notAfter := o.notAfter
	if notAfter.IsZero() {
		notAfter = time.Date(2049, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	tmpl := &x509.Certificate{
		SerialNumber:       randSerial(t),
		Subject:            amdName(cn),
		NotBefore:          time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:           notAfter,
		ExtraExtensions:    exts,
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	return mustCreate(t, tmpl, issuer, &key.PublicKey, issuerKey), key
}

// reportOptions describe a test report.
type reportOptions struct {
	version     uint32 // default 3
	product     Product
	policy      uint64 // default 0x30000: SMT allowed, reserved bit set
	vmpl        uint32
	tcb         TCB // reported, committed, current and launch TCB
	committed   *TCB
	platform    uint64
	vlek        bool
	reportData  [ReportDataSize]byte
	measurement [MeasurementSize]byte
	idKey       [KeyDigestSize]byte
	authorKey   *[KeyDigestSize]byte
	hostData    [HostDataSize]byte
	// current and committed firmware; nil means 1.55.10
	currentFW, committedFW *FirmwareVersion
}

// defaultTestFirmware is the firmware version of test reports.
var defaultTestFirmware = FirmwareVersion{Major: 1, Minor: 55, Build: 10}

// cpuidOf returns a family and model of a product.
func cpuidOf(p Product) (uint8, uint8) {
	switch p {
	case Genoa:
		return 0x19, 0x11
	case Turin:
		return 0x1a, 0x02
	}
	return 0x19, 0x01
}

// buildReport lays out an unsigned report.
func buildReport(t testing.TB, o reportOptions) []byte {
	t.Helper()
	if o.version == 0 {
		o.version = 3
	}
	if o.policy == 0 {
		o.policy = 0x30000
	}
	le := binary.LittleEndian
	b := make([]byte, ReportSize)
	le.PutUint32(b[0x00:], o.version)
	le.PutUint32(b[0x04:], 1)
	le.PutUint64(b[0x08:], o.policy)
	le.PutUint32(b[0x30:], o.vmpl)
	le.PutUint32(b[0x34:], SignatureAlgoECDSAP384SHA384)
	raw, err := EncodeTCB(o.product, o.tcb)
	if err != nil {
		t.Fatal(err)
	}
	committed := raw
	if o.committed != nil {
		if committed, err = EncodeTCB(o.product, *o.committed); err != nil {
			t.Fatal(err)
		}
	}
	le.PutUint64(b[0x38:], uint64(raw))
	le.PutUint64(b[0x40:], o.platform)
	var signer uint32
	if o.vlek {
		signer |= 1 << 2
	}
	if o.authorKey != nil {
		signer |= 1
		copy(b[0x110:0x140], o.authorKey[:])
	}
	le.PutUint32(b[0x48:], signer)
	copy(b[0x50:0x90], o.reportData[:])
	copy(b[0x90:0xc0], o.measurement[:])
	copy(b[0xe0:0x110], o.idKey[:])
	le.PutUint64(b[0x180:], uint64(raw))
	if o.version >= 3 {
		b[0x188], b[0x189] = cpuidOf(o.product)
		b[0x18a] = 1
	}
	copy(b[0x1a0:0x1e0], testChipID)
	le.PutUint64(b[0x1e0:], uint64(committed))
	cur, com := defaultTestFirmware, defaultTestFirmware
	if o.currentFW != nil {
		cur = *o.currentFW
	}
	if o.committedFW != nil {
		com = *o.committedFW
	}
	b[0x1e8], b[0x1e9], b[0x1ea] = cur.Build, cur.Minor, cur.Major
	b[0x1ec], b[0x1ed], b[0x1ee] = com.Build, com.Minor, com.Major
	copy(b[0xc0:0xe0], o.hostData[:])
	le.PutUint64(b[0x1f0:], uint64(raw))
	return b
}

// signReport signs a report in place with key.
func signReport(t testing.TB, b []byte, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	digest := sha512.Sum384(b[:offSignature])
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	putLE := func(dst []byte, v *big.Int) {
		var be [p384Size]byte
		v.FillBytes(be[:])
		clear(dst[:ecdsaCompSize])
		for i := range p384Size {
			dst[i] = be[p384Size-1-i]
		}
	}
	putLE(b[offSignature:], r)
	putLE(b[offSignature+ecdsaCompSize:], s)
	return b
}

// testEvidence is a signed report with its certificates and the roots that trust them.
type testEvidence struct {
	raw   []byte
	certs *Certificates
	roots *Roots
	pki   *testPKI
}

var defaultTestTCB = TCB{Bootloader: 3, TEE: 0, SNP: 8, Microcode: 115}

// newTestEvidence signs a report of o.product (default Milan) with a fresh VCEK (or VLEK) of the test PKI.
func newTestEvidence(t testing.TB, o reportOptions) *testEvidence {
	t.Helper()
	if o.product == ProductUnknown {
		o.product = Milan
	}
	if o.tcb == (TCB{}) {
		o.tcb = defaultTestTCB
	}
	pki := getTestPKI(t, o.product)
	cert, key := pki.endorsementKey(t, ekOptions{vlek: o.vlek, tcb: o.tcb})
	raw := signReport(t, buildReport(t, o), key)
	certs := &Certificates{Intermediate: pki.ask, ARK: pki.ark}
	if o.vlek {
		certs.VLEK, certs.Intermediate = cert, pki.asvk
	} else {
		certs.VCEK = cert
	}
	return &testEvidence{raw: raw, certs: certs, roots: testRoots(t, o.product), pki: pki}
}

// testPolicy accepts the test evidence built with o.
func testPolicy(o reportOptions) *Policy {
	if o.product == ProductUnknown {
		o.product = Milan
	}
	tcb := o.tcb
	if tcb == (TCB{}) {
		tcb = defaultTestTCB
	}
	return &Policy{
		ReportData:      o.reportData[:],
		Measurements:    []HexBytes{o.measurement[:]},
		MinimumTCB:      map[Product]TCB{o.product: tcb},
		AllowMissingCRL: true,
	}
}

func testVerifier(t testing.TB, roots *Roots, crls map[Product][][]byte) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{Roots: roots, CRLs: crls, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Genuine recorded data (see testdata/README.md).
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// genuineCerts returns the genuine VCEK with the Milan ASK and ARK recorded with it.
func genuineCerts(t testing.TB) *Certificates {
	t.Helper()
	chain, err := ParseCertificates(readTestdata(t, "milan.testcer"))
	if err != nil {
		t.Fatal(err)
	}
	vcek, err := ParseCertificates(readTestdata(t, "vcek.testcer"))
	if err != nil {
		t.Fatal(err)
	}
	return &Certificates{VCEK: vcek.VCEK, Intermediate: chain.Intermediate, ARK: chain.ARK}
}

// genuinePolicy accepts the genuine report: its measurement, REPORT_DATA and TCB. The recorded guest was
// launched with the DEBUG policy bit and on a platform with SMT; no CRL was recorded with it.
func genuinePolicy(t testing.TB) *Policy {
	t.Helper()
	r, err := ParseReport(readTestdata(t, "attestation.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return &Policy{
		ReportData:      r.ReportData[:],
		Measurements:    []HexBytes{r.Measurement[:]},
		MinimumTCB:      map[Product]TCB{Milan: {Bootloader: 2, TEE: 0, SNP: 5, Microcode: 68}},
		VMPL:            0,
		AllowDebug:      true,
		AllowSMT:        true,
		AllowMissingCRL: true,
	}
}

func mustP384(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
