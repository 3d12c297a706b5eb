// Package snptest provides, for tests of packages that use package snp, an AMD-like public-key
// infrastructure of Milan generated at test time, a platform that signs SEV-SNP reports with it
// ([Platform], an snp.Reporter) and a software vTPM ([VTPM], an snp.VTPM). Reports, certificates and
// quotes are real cryptography, laid out as the hardware lays them out, so the issuers and validators of
// package snp run unchanged on them; only the trusted roots differ ([PKI.Roots]), and tests must pass them
// explicitly. Nothing in this package is ever trusted by the embedded AMD roots.
//
// Package snp's own tests cannot import this package (it imports snp); they keep their finer-grained
// builders of malformed reports and certificates.
package snptest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"math/big"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
)

// Now is a verification time inside the validity of every certificate this package creates.
var Now = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// TCB is the TCB version of the reports and the VCEK a [Platform] signs with.
var TCB = snp.TCB{Bootloader: 3, TEE: 0, SNP: 8, Microcode: 115}

// PKI is a test ARK and ASK of Milan with their keys.
type PKI struct {
	ARK, ASK       *x509.Certificate
	arkKey, askKey *rsa.PrivateKey
}

// NewPKI generates a test PKI of Milan.
func NewPKI() (*PKI, error) {
	arkKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	askKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	arkT := caTemplate("ARK-Milan")
	ark, err := create(arkT, arkT, &arkKey.PublicKey, arkKey)
	if err != nil {
		return nil, err
	}
	askT := caTemplate("SEV-Milan")
	askT.MaxPathLenZero = true
	ask, err := create(askT, ark, &askKey.PublicKey, arkKey)
	if err != nil {
		return nil, err
	}
	return &PKI{ARK: ark, ASK: ask, arkKey: arkKey, askKey: askKey}, nil
}

// Roots returns trusted roots made of this PKI, for snp.VerifierOptions.Roots.
func (p *PKI) Roots() (*snp.Roots, error) {
	return snp.NewRoots(map[snp.Product]snp.ProductRoots{snp.Milan: {ARK: p.ARK, ASK: p.ASK}})
}

// Platform is a Milan machine of the test PKI: it signs reports with its VCEK and attaches a certificate
// table (VCEK, ASK, ARK), as a host configured for extended reports does. It implements snp.Reporter.
type Platform struct {
	// Measurement is the launch measurement of the guest.
	Measurement [snp.MeasurementSize]byte
	// GuestPolicy is the guest policy; 0 means 0x30000 (SMT allowed, the reserved bit set, no debugging).
	GuestPolicy uint64
	// HostData is the HOST_DATA the host launched the guest with (snp.HostDataForNode of the node's name, for
	// a named node).
	HostData [snp.HostDataSize]byte

	vcek    *x509.Certificate
	vcekKey *ecdsa.PrivateKey
	pki     *PKI
}

// ChipID is the chip ID of every [Platform].
var ChipID = func() []byte {
	b := make([]byte, snp.ChipIDSize)
	for i := range b {
		b[i] = byte(0xc0 + i)
	}
	return b
}()

// NewPlatform returns a platform whose VCEK the PKI's ASK certifies, for [TCB] and [ChipID].
func (p *PKI) NewPlatform(measurement [snp.MeasurementSize]byte) (*Platform, error) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kds := func(arcs ...int) asn1.ObjectIdentifier {
		return append(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1}, arcs...)
	}
	ext := func(id asn1.ObjectIdentifier, v any, params string) (pkix.Extension, error) {
		b, err := asn1.MarshalWithParams(v, params)
		return pkix.Extension{Id: id, Value: b}, err
	}
	var exts []pkix.Extension
	for _, e := range []struct {
		id     asn1.ObjectIdentifier
		v      any
		params string
	}{
		{kds(1), 1, ""}, {kds(2), "Milan-B0", "ia5"},
		{kds(3, 1), int(TCB.Bootloader), ""}, {kds(3, 2), int(TCB.TEE), ""}, {kds(3, 3), int(TCB.SNP), ""},
		{kds(3, 4), 0, ""}, {kds(3, 5), 0, ""}, {kds(3, 6), 0, ""}, {kds(3, 7), 0, ""},
		{kds(3, 8), int(TCB.Microcode), ""},
	} {
		x, err := ext(e.id, e.v, e.params)
		if err != nil {
			return nil, err
		}
		exts = append(exts, x)
	}
	exts = append(exts, pkix.Extension{Id: kds(4), Value: bytes.Clone(ChipID)})
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:       serial,
		Subject:            amdName("SEV-VCEK"),
		NotBefore:          time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:           time.Date(2049, 1, 1, 0, 0, 0, 0, time.UTC),
		ExtraExtensions:    exts,
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	vcek, err := create(tmpl, p.ASK, &key.PublicKey, p.askKey)
	if err != nil {
		return nil, err
	}
	return &Platform{Measurement: measurement, vcek: vcek, vcekKey: key, pki: p}, nil
}

// Policy returns an SEV-SNP policy for cluster validators that accepts this platform's reports: its launch
// measurement, [TCB] as the minimum, and no CRL (the test PKI publishes none).
func (pl *Platform) Policy() *snp.Policy {
	return &snp.Policy{
		Measurements:    []snp.HexBytes{bytes.Clone(pl.Measurement[:])},
		MinimumTCB:      map[snp.Product]snp.TCB{snp.Milan: TCB},
		AllowMissingCRL: true,
	}
}

// Report signs a version 3 report with reportData and returns it with the certificate table.
func (pl *Platform) Report(_ context.Context, reportData [snp.ReportDataSize]byte) (*snp.Evidence, error) {
	raw, err := snp.EncodeTCB(snp.Milan, TCB)
	if err != nil {
		return nil, err
	}
	policy := pl.GuestPolicy
	if policy == 0 {
		policy = 0x30000
	}
	le := binary.LittleEndian
	b := make([]byte, snp.ReportSize)
	le.PutUint32(b[0x00:], 3) // version
	le.PutUint32(b[0x04:], 1) // guest SVN
	le.PutUint64(b[0x08:], policy)
	le.PutUint32(b[0x34:], snp.SignatureAlgoECDSAP384SHA384)
	le.PutUint64(b[0x38:], uint64(raw)) // current TCB
	copy(b[0x50:0x90], reportData[:])
	copy(b[0x90:0xc0], pl.Measurement[:])
	copy(b[0xc0:0xe0], pl.HostData[:])
	le.PutUint64(b[0x180:], uint64(raw)) // reported TCB
	b[0x188], b[0x189], b[0x18a] = 0x19, 0x01, 1
	copy(b[0x1a0:0x1e0], ChipID)
	le.PutUint64(b[0x1e0:], uint64(raw)) // committed TCB
	b[0x1e8], b[0x1e9], b[0x1ea] = 10, 55, 1
	b[0x1ec], b[0x1ed], b[0x1ee] = 10, 55, 1
	le.PutUint64(b[0x1f0:], uint64(raw)) // launch TCB
	if err := sign(b, pl.vcekKey); err != nil {
		return nil, err
	}
	table := snp.MarshalCertTable(&snp.Certificates{VCEK: pl.vcek, Intermediate: pl.pki.ASK, ARK: pl.pki.ARK})
	return &snp.Evidence{Report: b, CertTable: table}, nil
}

// Report layout: the signature covers the bytes before offSignature; R and S are little-endian fields
// of 72 bytes, of which P-384 uses the low 48.
const (
	offSignature  = 0x2a0
	ecdsaCompSize = 72
	p384Size      = 48
)

func sign(b []byte, key *ecdsa.PrivateKey) error {
	digest := sha512.Sum384(b[:offSignature])
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return err
	}
	for i, v := range []*big.Int{r, s} {
		var be [p384Size]byte
		v.FillBytes(be[:])
		dst := b[offSignature+i*ecdsaCompSize:]
		for j := range p384Size {
			dst[j] = be[p384Size-1-j]
		}
	}
	return nil
}

// VTPM is a vTPM in software: an ECDSA P-256 attestation key that signs TPMS_ATTEST quotes of the SHA-256
// PCRs 0-23, encoded as a TPM encodes them, over PCR values that replay a measured event log. It
// implements snp.VTPM.
type VTPM struct {
	key *ecdsa.PrivateKey
	log *eventlog.Builder
}

// NewVTPM returns a vTPM whose event log measured a node image into PCR 4 and boot parameters into PCR 8.
func NewVTPM() (*VTPM, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	log := eventlog.NewBuilder()
	log.Append(measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:1111"))
	log.Append(measurements.PCRBootParams, eventlog.IPL, []byte("boot parameters: console=ttyS0"))
	return &VTPM{key: key, log: log}, nil
}

// Extend measures data into pcr (as the bootstrapper extends the cluster ID into PCR 15).
func (v *VTPM) Extend(pcr uint32, data []byte) { v.log.Append(pcr, eventlog.IPL, data) }

// AttestationKey returns the public attestation key.
func (v *VTPM) AttestationKey() crypto.PublicKey { return &v.key.PublicKey }

// PCRs returns the SHA-256 PCR values the event log produces (zero where nothing was measured).
func (v *VTPM) PCRs() map[uint32][]byte {
	replayed := eventlog.Replay(v.log.Events())
	out := map[uint32][]byte{}
	for i := range uint32(measurements.NumPCRs) {
		d := replayed[i]
		out[i] = d[:]
	}
	return out
}

// Policy returns a measurement policy that accepts the measured PCRs 4 and 8.
func (v *VTPM) Policy() measurements.M {
	pcrs := v.PCRs()
	return measurements.M{
		measurements.PCRNodeImage:  {Expected: measurements.Digest(pcrs[measurements.PCRNodeImage])},
		measurements.PCRBootParams: {Expected: measurements.Digest(pcrs[measurements.PCRBootParams])},
	}
}

// Quote quotes PCRs 0-23 with qualifyingData.
func (v *VTPM) Quote(_ context.Context, qualifyingData []byte) (*attestation.TPMEvidence, error) {
	pcrs := v.PCRs()
	h := sha256.New()
	for i := range uint32(measurements.NumPCRs) {
		h.Write(pcrs[i])
	}
	var q bytes.Buffer
	be := func(x any) { _ = binary.Write(&q, binary.BigEndian, x) }
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
	be(uint16(0x000b)) // TPM_ALG_SHA256
	q.WriteByte(3)
	q.Write([]byte{0xff, 0xff, 0xff})
	tpm2b(h.Sum(nil))
	digest := sha256.Sum256(q.Bytes())
	r, s, err := ecdsa.Sign(rand.Reader, v.key, digest[:])
	if err != nil {
		return nil, err
	}
	var sig bytes.Buffer
	_ = binary.Write(&sig, binary.BigEndian, uint16(0x0018)) // TPM_ALG_ECDSA
	_ = binary.Write(&sig, binary.BigEndian, uint16(0x000b))
	for _, n := range []*big.Int{r, s} {
		_ = binary.Write(&sig, binary.BigEndian, uint16(32))
		sig.Write(n.FillBytes(make([]byte, 32)))
	}
	return &attestation.TPMEvidence{
		Quotes:   []attestation.Quote{{Quote: q.Bytes(), Signature: sig.Bytes(), PCRs: pcrs}},
		EventLog: v.log.Bytes(),
	}, nil
}

func amdName(cn string) pkix.Name {
	return pkix.Name{
		CommonName: cn, Organization: []string{"Advanced Micro Devices (TEST ONLY)"}, OrganizationalUnit: []string{"Engineering"},
		Country: []string{"US"}, Province: []string{"CA"}, Locality: []string{"Santa Clara"},
	}
}

func randSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}

func caTemplate(cn string) *x509.Certificate {
	serial, err := randSerial()
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               amdName(cn),
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
	}
}

func create(tmpl, parent *x509.Certificate, pub, priv any) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}
