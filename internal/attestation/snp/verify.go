package snp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// VerifierOptions configure a [Verifier].
type VerifierOptions struct {
	// Roots are the trusted AMD roots. Nil means the embedded AMD roots ([AMDRoots]).
	Roots *Roots
	// CRLs are certificate revocation lists (DER or PEM) per product, from an offline cache (see
	// [LoadCRLDir]). Each must be signed by the ARK, ASK or ASVK of its product. A product without CRL is
	// verified, and the policy check decides whether that is acceptable ([Policy.AllowMissingCRL]).
	CRLs map[Product][][]byte
	// Now returns the time at which certificates and CRLs must be valid. Nil means time.Now.
	Now func() time.Time
	// VCEKCache, if not nil, is where the verifier looks up the VCEK of a VCEK-signed report whose evidence
	// carries no VCEK certificate (see [LoadVCEKCache]). A cached VCEK is verified exactly like one from the
	// evidence.
	VCEKCache *VCEKCache
}

// Verifier verifies the certificate chain, revocation and signature of attestation reports. It is safe for
// concurrent use.
type Verifier struct {
	roots     *Roots
	crls      map[Product][]issuedCRL
	now       func() time.Time
	vcekCache *VCEKCache
}

// issuedCRL is a CRL whose signature verified with issuer.
type issuedCRL struct {
	crl    *x509.RevocationList
	issuer *x509.Certificate
}

// NewVerifier returns a verifier. It parses every CRL and verifies its signature now, so that a corrupt
// or foreign CRL cache fails early.
func NewVerifier(opts VerifierOptions) (*Verifier, error) {
	v := &Verifier{roots: opts.Roots, now: opts.Now, crls: map[Product][]issuedCRL{}, vcekCache: opts.VCEKCache}
	if v.roots == nil {
		v.roots = AMDRoots()
	}
	if v.now == nil {
		v.now = time.Now
	}
	for p, list := range opts.CRLs {
		pr, ok := v.roots.Product(p)
		if !ok {
			return nil, fmt.Errorf("%w: CRL for %v, which has no trusted roots", ErrChain, p)
		}
		for i, data := range list {
			crl, err := ParseCRL(data)
			if err != nil {
				return nil, fmt.Errorf("%v CRL %d: %w", p, i, err)
			}
			issuer, err := crlIssuer(crl, pr)
			if err != nil {
				return nil, fmt.Errorf("%w: %v CRL %d (issuer %q): %w", ErrChain, p, i, crl.Issuer.CommonName, err)
			}
			v.crls[p] = append(v.crls[p], issuedCRL{crl: crl, issuer: issuer})
		}
	}
	return v, nil
}

// crlIssuer returns the certificate of pr that signed crl.
func crlIssuer(crl *x509.RevocationList, pr ProductRoots) (*x509.Certificate, error) {
	for _, c := range []*x509.Certificate{pr.ARK, pr.ASK, pr.ASVK} {
		if c == nil || !bytes.Equal(crl.RawIssuer, c.RawSubject) {
			continue
		}
		if err := crl.CheckSignatureFrom(c); err != nil {
			return nil, fmt.Errorf("signature does not verify with %q: %w", c.Subject.CommonName, err)
		}
		return c, nil
	}
	return nil, errors.New("not issued by the ARK, ASK or ASVK of the product")
}

// RevocationStatus says whether revocation could be checked.
type RevocationStatus int

// Revocation states.
const (
	// CRLChecked: a current CRL of the ARK was available and revokes no certificate of the chain.
	CRLChecked RevocationStatus = iota + 1
	// CRLMissing: no CRL of the ARK of the report's product was available.
	CRLMissing
	// CRLExpired: the available CRLs of the ARK were past their next update; their entries were applied.
	CRLExpired
)

func (s RevocationStatus) String() string {
	switch s {
	case CRLChecked:
		return "checked"
	case CRLMissing:
		return "no CRL"
	case CRLExpired:
		return "CRL expired"
	}
	return fmt.Sprintf("RevocationStatus(%d)", int(s))
}

// VerifiedReport is a report whose signature verified with an endorsement key that chains to a trusted AMD
// root. Only [Verifier.Verify] creates it. Whether the report is acceptable is for [Policy.Check] to say.
type VerifiedReport struct {
	// Report is the verified report.
	Report *Report
	// Product is the processor generation of the machine that signed the report.
	Product Product
	// EndorsementKey is the VCEK or VLEK certificate that verified the signature.
	EndorsementKey *x509.Certificate
	// VCEKFromCache says that the VCEK came from the verifier's offline VCEK cache, not from the evidence.
	VCEKFromCache bool
	// Decoded TCB versions of the report.
	CurrentTCB, ReportedTCB, CommittedTCB, LaunchTCB TCB
	// Revocation says whether revocation was checked.
	Revocation RevocationStatus
	// RevocationDetail explains a Revocation other than CRLChecked.
	RevocationDetail string
}

// endorsementInfo is the content of the AMD extensions of a VCEK or VLEK certificate (AMD Versioned Chip
// Endorsement Key and Versioned Loaded Endorsement Key certificate specifications).
type endorsementInfo struct {
	productName string
	tcb         TCB
	hwid        []byte // VCEK only
	cspID       string // VLEK only
}

// Object identifiers of the AMD certificate extensions, under 1.3.6.1.4.1.3704.1 (AMD key distribution
// service).
var (
	oidProductName = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 2}
	oidBlSPL       = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 1}
	oidTeeSPL      = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 2}
	oidSnpSPL      = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 3}
	oidUcodeSPL    = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 8}
	oidFmcSPL      = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 9}
	oidHWID        = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 4}
	oidCSPID       = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 5}
)

// parseEndorsementInfo reads the AMD extensions of an endorsement key certificate (role VCEK or VLEK).
func parseEndorsementInfo(cert *x509.Certificate, role string) (*endorsementInfo, error) {
	ext := map[string][]byte{}
	for _, e := range cert.Extensions {
		ext[e.Id.String()] = e.Value
	}
	info := &endorsementInfo{}
	str := func(oid asn1.ObjectIdentifier, name string) (string, bool, error) {
		v, ok := ext[oid.String()]
		if !ok {
			return "", false, nil
		}
		var s string
		rest, err := asn1.UnmarshalWithParams(v, &s, "ia5")
		if err != nil || len(rest) != 0 || len(v) == 0 || v[0] != asn1.TagIA5String {
			return "", true, fmt.Errorf("%w: %s extension %s is not an IA5String", ErrChain, role, name)
		}
		return s, true, nil
	}
	spl := func(oid asn1.ObjectIdentifier, name string, required bool, dst *uint8) error {
		v, ok := ext[oid.String()]
		if !ok {
			if required {
				return fmt.Errorf("%w: %s certificate lacks the %s extension", ErrChain, role, name)
			}
			return nil
		}
		var n int
		rest, err := asn1.Unmarshal(v, &n)
		if err != nil || len(rest) != 0 || n < 0 || n > 255 {
			return fmt.Errorf("%w: %s extension %s is not an integer from 0 to 255", ErrChain, role, name)
		}
		*dst = uint8(n)
		return nil
	}
	name, ok, err := str(oidProductName, "productName")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s certificate lacks the productName extension", ErrChain, role)
	}
	info.productName = name
	product, err := productFromName(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s certificate product name: %w", ErrChain, role, err)
	}
	for _, s := range []struct {
		oid  asn1.ObjectIdentifier
		name string
		dst  *uint8
	}{{oidBlSPL, "blSPL", &info.tcb.Bootloader}, {oidTeeSPL, "teeSPL", &info.tcb.TEE}, {oidSnpSPL, "snpSPL", &info.tcb.SNP}, {oidUcodeSPL, "ucodeSPL", &info.tcb.Microcode}} {
		if err := spl(s.oid, s.name, true, s.dst); err != nil {
			return nil, err
		}
	}
	if err := spl(oidFmcSPL, "fmcSPL", product == Turin, &info.tcb.FMC); err != nil {
		return nil, err
	}
	if product != Turin && info.tcb.FMC != 0 {
		return nil, fmt.Errorf("%w: %s certificate for %v has an fmcSPL extension", ErrChain, role, product)
	}
	hwid, hasHWID := ext[oidHWID.String()]
	csp, hasCSP, err := str(oidCSPID, "cspId")
	if err != nil {
		return nil, err
	}
	switch role {
	case "VCEK":
		if !hasHWID || hasCSP {
			return nil, fmt.Errorf("%w: VCEK certificate must have a hwID and no cspId extension", ErrChain)
		}
		info.hwid, err = parseHWID(hwid, product)
		if err != nil {
			return nil, err
		}
	case "VLEK":
		if hasHWID || !hasCSP {
			return nil, fmt.Errorf("%w: VLEK certificate must have a cspId and no hwID extension", ErrChain)
		}
		info.cspID = csp
	}
	return info, nil
}

// parseHWID reads the hardware ID of a VCEK: the chip ID (64 bytes; Turin VCEKs may carry its first 8
// bytes), raw or wrapped in an OCTET STRING.
func parseHWID(v []byte, p Product) ([]byte, error) {
	okSize := func(n int) bool { return n == ChipIDSize || (p == Turin && n == 8) }
	if okSize(len(v)) {
		return v, nil
	}
	var octets []byte
	if rest, err := asn1.Unmarshal(v, &octets); err == nil && len(rest) == 0 && okSize(len(octets)) {
		return octets, nil
	}
	return nil, fmt.Errorf("%w: VCEK hwID extension of %d bytes is not a chip ID", ErrChain, len(v))
}

// Verify verifies a parsed report with the certificates that accompany it. If the report is signed by a
// VCEK and certs hold none (certs may be nil), the VCEK comes from the verifier's VCEK cache
// ([VerifierOptions.VCEKCache]); without a cache, or without an entry, verification fails with
// ErrMissingCertificate. In this order it:
//
//  1. reads the product from the endorsement key certificate (VCEK or VLEK, as the report says);
//  2. checks the chain ARK → ASK/ASVK → VCEK/VLEK against the embedded root of that product, with validity
//     periods (an ARK in the evidence must equal the embedded one; an ASK or ASVK in the evidence must be
//     signed by the embedded ARK);
//  3. checks revocation with the configured CRLs;
//  4. verifies the ECDSA P-384 report signature with the endorsement key;
//  5. checks that the certificate describes the report: product (against the CPUID of version 3 reports),
//     TCB (against REPORTED_TCB), and, for a VCEK, chip ID.
func (v *Verifier) Verify(r *Report, certs *Certificates) (*VerifiedReport, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: no report", ErrMalformedReport)
	}
	if certs == nil {
		certs = &Certificates{}
	}
	if r.SigningKey != SignedByVCEK || certs.VCEK != nil || v.vcekCache == nil {
		return v.verify(r, certs)
	}
	return v.verifyWithCachedVCEK(r, certs)
}

// verifyWithCachedVCEK verifies r with the cached VCEK of each product the report may come from (one for a
// version 3 report, Milan and Genoa for a version 2 report), and the other certificates of certs.
func (v *Verifier) verifyWithCachedVCEK(r *Report, certs *Certificates) (*VerifiedReport, error) {
	keys, err := VCEKKeys(r, ProductUnknown)
	if err != nil {
		return nil, fmt.Errorf("%w: the evidence has no VCEK certificate, and %w", ErrMissingCertificate, err)
	}
	var errs []error
	for _, k := range keys {
		cert, err := v.vcekCache.Lookup(k)
		if errors.Is(err, ErrVCEKNotCached) {
			errs = append(errs, err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("the evidence has no VCEK certificate, and the offline VCEK cache: %w", err)
		}
		c := *certs
		c.VCEK = cert
		out, err := v.verify(r, &c)
		if err != nil {
			return nil, fmt.Errorf("the VCEK from the offline cache (%s): %w", v.vcekCache.Path(k), err)
		}
		if out.Product != k.Product {
			return nil, fmt.Errorf("%w: the VCEK from the offline cache (%s) is for %v, its entry for %v", ErrChain, v.vcekCache.Path(k), out.Product, k.Product)
		}
		out.VCEKFromCache = true
		return out, nil
	}
	return nil, fmt.Errorf("the report is signed by a VCEK, but the evidence has no VCEK certificate and the offline VCEK cache %s has no entry for it (fill the cache with 'constellation attestation fetch-vcek'): %w", v.vcekCache.Dir(), errors.Join(errs...))
}

// verify is Verify with the certificates to use.
func (v *Verifier) verify(r *Report, certs *Certificates) (*VerifiedReport, error) {
	now := v.now()

	var ek *x509.Certificate
	var role, interRole string
	switch r.SigningKey {
	case SignedByVCEK:
		ek, role, interRole = certs.VCEK, "VCEK", "ASK"
	case SignedByVLEK:
		ek, role, interRole = certs.VLEK, "VLEK", "ASVK"
	default:
		return nil, fmt.Errorf("%w: the report is not signed (SIGNING_KEY %v)", ErrSignature, r.SigningKey)
	}
	if ek == nil {
		return nil, fmt.Errorf("%w: the report is signed by a %s, but the evidence has no %s certificate", ErrMissingCertificate, role, role)
	}
	if ek.Subject.CommonName != "SEV-"+role {
		return nil, fmt.Errorf("%w: %s certificate has common name %q, want %q", ErrChain, role, ek.Subject.CommonName, "SEV-"+role)
	}

	// 1. Product.
	info, err := parseEndorsementInfo(ek, role)
	if err != nil {
		return nil, err
	}
	product, err := productFromName(info.productName)
	if err != nil {
		return nil, fmt.Errorf("%w: %s certificate: %w", ErrChain, role, err)
	}

	// 2. Chain to the embedded root.
	pr, ok := v.roots.Product(product)
	if !ok {
		return nil, fmt.Errorf("%w: %s certificate is for %v, which has no trusted root", ErrChain, role, product)
	}
	if certs.ARK != nil && !certs.ARK.Equal(pr.ARK) {
		return nil, fmt.Errorf("%w: the ARK in the evidence (%q) is not the embedded %v ARK", ErrChain, certs.ARK.Subject.CommonName, product)
	}
	inter := pr.ASK
	if role == "VLEK" {
		inter = pr.ASVK
	}
	if certs.Intermediate != nil && (inter == nil || !certs.Intermediate.Equal(inter)) {
		if err := checkIntermediate(product, interRole, certs.Intermediate, pr.ARK); err != nil {
			return nil, fmt.Errorf("%w: the %s in the evidence is not usable: %w", ErrChain, interRole, err)
		}
		inter = certs.Intermediate
	}
	if inter == nil {
		return nil, fmt.Errorf("%w: no %s is trusted for %v", ErrChain, interRole, product)
	}
	if err := checkValidity("ARK", pr.ARK, now); err != nil {
		return nil, err
	}
	if err := checkValidity(interRole, inter, now); err != nil {
		return nil, err
	}
	if err := checkIssued(ek, inter); err != nil {
		return nil, fmt.Errorf("%w: %s not signed by %s of the embedded %v root: %w", ErrChain, role, interRole, product, err)
	}
	if err := checkValidity(role, ek, now); err != nil {
		return nil, err
	}
	pub, ok := ek.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return nil, fmt.Errorf("%w: %s public key is %T, want ECDSA P-384", ErrChain, role, ek.PublicKey)
	}

	// 3. Revocation.
	status, detail, err := v.checkRevocation(product, pr.ARK, inter, interRole, ek, role, now)
	if err != nil {
		return nil, err
	}

	// 4. Signature.
	digest := sha512.Sum384(r.signedBytes())
	rr := new(big.Int).SetBytes(r.SignatureR[:])
	ss := new(big.Int).SetBytes(r.SignatureS[:])
	if !ecdsa.Verify(pub, digest[:], rr, ss) {
		return nil, fmt.Errorf("%w: the ECDSA P-384 signature does not verify with the %s (the report was altered or signed by another key)", ErrSignature, role)
	}

	// 5. The certificate describes this report.
	if r.Version >= 3 {
		cpuProduct, err := productFromCPUID(r.CPUIDFamily, r.CPUIDModel)
		if err != nil {
			return nil, fmt.Errorf("%w: report CPUID: %w", ErrChain, err)
		}
		if cpuProduct != product {
			return nil, fmt.Errorf("%w: %s is for %v, but the report comes from a %v CPU (family 0x%02x model 0x%02x)", ErrChain, role, product, cpuProduct, r.CPUIDFamily, r.CPUIDModel)
		}
	}
	out := &VerifiedReport{Report: r, Product: product, EndorsementKey: ek, Revocation: status, RevocationDetail: detail}
	for _, t := range []struct {
		raw RawTCB
		dst *TCB
	}{{r.CurrentTCB, &out.CurrentTCB}, {r.ReportedTCB, &out.ReportedTCB}, {r.CommittedTCB, &out.CommittedTCB}, {r.LaunchTCB, &out.LaunchTCB}} {
		if *t.dst, err = DecodeTCB(product, t.raw); err != nil {
			return nil, err
		}
	}
	if out.ReportedTCB != info.tcb {
		return nil, fmt.Errorf("%w: %s is for TCB %v, but the report's REPORTED_TCB is %v", ErrChain, role, info.tcb, out.ReportedTCB)
	}
	if role == "VCEK" && !r.MaskChipID && !bytes.Equal(info.hwid, r.ChipID[:len(info.hwid)]) {
		return nil, fmt.Errorf("%w: VCEK is for chip %s, but the report's CHIP_ID is %s", ErrChain, hex.EncodeToString(info.hwid), hex.EncodeToString(r.ChipID[:]))
	}
	return out, nil
}

// checkRevocation applies the CRLs of product: the ARK's CRLs to the intermediate, the intermediate's CRLs
// (if any) to the endorsement key. A revoked certificate is an error; otherwise it returns whether a
// current CRL of the ARK was available.
func (v *Verifier) checkRevocation(product Product, ark, inter *x509.Certificate, interRole string, ek *x509.Certificate, role string, now time.Time) (RevocationStatus, string, error) {
	var arkCRLs, current int
	for _, c := range v.crls[product] {
		var subject *x509.Certificate
		var subjectRole string
		switch {
		case c.issuer.Equal(ark):
			subject, subjectRole = inter, interRole
			arkCRLs++
			if !now.After(c.crl.NextUpdate) {
				current++
			}
		case c.issuer.Equal(inter):
			subject, subjectRole = ek, role
		default:
			continue
		}
		for _, e := range c.crl.RevokedCertificateEntries {
			if e.SerialNumber != nil && e.SerialNumber.Cmp(subject.SerialNumber) == 0 {
				return 0, "", fmt.Errorf("%w: %s (serial %s) was revoked on %s by the CRL of %q", ErrRevoked, subjectRole, subject.SerialNumber, e.RevocationTime.UTC().Format(time.DateOnly), c.issuer.Subject.CommonName)
			}
		}
	}
	switch {
	case arkCRLs == 0:
		return CRLMissing, fmt.Sprintf("no CRL of the %v ARK was supplied", product), nil
	case current == 0:
		return CRLExpired, fmt.Sprintf("every CRL of the %v ARK is past its next update", product), nil
	}
	return CRLChecked, "", nil
}
