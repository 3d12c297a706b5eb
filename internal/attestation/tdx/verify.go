package tdx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrCollateralMismatch wraps differences between the quote and Intel's collateral: another quoting
// enclave than the QE identity describes, another TDX module signer, another platform family.
var ErrCollateralMismatch = errors.New("TDX quote does not match Intel's collateral")

// VerifiedQuote is the result of a successful Verify: a quote whose every signature and certificate checked
// out, and its TCB status. The policy decides whether the TD and the status are acceptable.
type VerifiedQuote struct {
	Quote *Quote
	// PCK is the platform identity and TCB from the verified PCK certificate.
	PCK PCKInfo
	// TCB is the TCB status computed from the collateral.
	TCB TCBEvaluation
}

// Verify verifies a parsed quote with Intel's collateral at time now (the caller's clock; expiry of
// certificates, CRLs and collateral is checked against it). It checks, in this order:
//
//  1. the quote header (Intel's quoting enclave);
//  2. the PCK certificate chain up to the embedded Intel SGX Root CA;
//  3. the collateral: root CA CRL, TCB signing certificate, TCB info and QE identity signatures and
//     validity, the PCK CRL; and that neither the PCK CA nor the PCK certificate is revoked;
//  4. the QE report signature by the PCK and the QE report data binding the attestation key;
//  5. the quote signature by the attestation key over header and TD report;
//  6. the QE report against the QE identity and the TDX module against the TCB info;
//  7. the TCB level, by Intel's algorithm.
//
// A TCB status that is not up to date is no error here: it is reported in the result for the policy to
// decide (see Policy.Check).
func Verify(q *Quote, c *Collateral, now time.Time) (*VerifiedQuote, error) {
	return verify(q, c, mustIntelRoot(), now)
}

// Validate runs the three steps on a raw quote: it parses raw, verifies it with c at time now and checks it
// against p. It returns the verified quote only if every step passed.
func Validate(c *Collateral, p *Policy, raw []byte, now time.Time) (*VerifiedQuote, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	q, err := ParseQuote(raw)
	if err != nil {
		return nil, err
	}
	v, err := Verify(q, c, now)
	if err != nil {
		return nil, err
	}
	if err := p.Check(v); err != nil {
		return nil, err
	}
	return v, nil
}

func verify(q *Quote, c *Collateral, root *x509.Certificate, now time.Time) (*VerifiedQuote, error) {
	if q == nil || q.signed == nil {
		return nil, errors.New("TDX quote: no parsed quote; use ParseQuote")
	}
	if c == nil || c.qeIdentity == nil {
		return nil, fmt.Errorf("%w: no collateral loaded; use LoadCollateral", ErrNoCollateral)
	}
	if now.IsZero() {
		return nil, errors.New("TDX quote: no verification time given")
	}

	// 1. Header, 2. PCK certificate chain.
	pck, ca, pckInfo, err := quotePCK(q, root, now)
	if err != nil {
		return nil, err
	}
	caKind := pckInfo.CA
	// The collateral must describe this platform; without it nothing else can be decided.
	tcbInfo, ok := c.tcbInfos[pckInfo.FMSPC]
	if !ok {
		return nil, fmt.Errorf("%w: no TCB info for the platform's FMSPC %x; add %s to the collateral", ErrNoCollateral, pckInfo.FMSPC, TCBInfoFileName(pckInfo.FMSPC))
	}

	// 3. Collateral and revocation.
	signerKey, err := c.verifySigner(root, now)
	if err != nil {
		return nil, err
	}
	if err := checkNotRevoked(c.rootCRL, ca, fmt.Sprintf("PCK CA certificate %q", ca.Subject.CommonName), "root CA CRL"); err != nil {
		return nil, err
	}
	pckCRL, ok := c.pckCRLs[caKind]
	if !ok {
		return nil, fmt.Errorf("%w: the PCK certificate is issued by the %s, but the collateral has no CRL of it (pck_%s.crl)", ErrNoCollateral, ca.Subject.CommonName, caKind)
	}
	if err := checkCRL(pckCRL, ca, now, "PCK CRL"); err != nil {
		return nil, err
	}
	if err := checkNotRevoked(pckCRL, pck, "PCK certificate", "PCK CRL"); err != nil {
		return nil, err
	}
	if err := tcbInfo.verify(signerKey, now); err != nil {
		return nil, err
	}
	if tcbInfo.PCEID != pckInfo.PCEID {
		return nil, fmt.Errorf("%w: PCE ID %x of the PCK certificate differs from the TCB info's %x", ErrCollateralMismatch, pckInfo.PCEID, tcbInfo.PCEID)
	}
	if err := c.qeIdentity.verify(signerKey, now); err != nil {
		return nil, err
	}

	// 4 and 5. QE report and quote signature.
	if err := checkQuoteSignatures(q, pck); err != nil {
		return nil, err
	}

	// 6. Identities of the QE and the TDX module.
	if err := checkQEIdentity(c.qeIdentity, &q.QEReport); err != nil {
		return nil, err
	}
	if err := checkModule(tcbInfo.TDXModule, &q.Body, "TCB info's tdxModule"); err != nil {
		return nil, err
	}

	// 7. TCB level.
	ev, err := evaluateTCB(tcbInfo, c.qeIdentity, pckInfo, q)
	if err != nil {
		return nil, err
	}
	return &VerifiedQuote{Quote: q, PCK: *pckInfo, TCB: ev}, nil
}

// checkQuoteSignatures checks the QE report signature by the PCK, the QE report data's binding of the
// attestation key, and the quote signature by that key over the header and TD report.
func checkQuoteSignatures(q *Quote, pck *x509.Certificate) error {
	pckKey, err := p256Key(pck)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUntrustedCertificate, err)
	}
	if !verifyP256(pckKey, q.qeReportRaw, q.QEReportSignature[:]) {
		return fmt.Errorf("%w: TDX quote: QE report signature does not verify with the PCK certificate", ErrInvalidSignature)
	}
	h := sha256.New()
	h.Write(q.AttestationKey[:])
	h.Write(q.QEAuthData)
	var want [64]byte
	h.Sum(want[:0])
	if subtle.ConstantTimeCompare(want[:], q.QEReport.ReportData[:]) != 1 {
		return fmt.Errorf("%w: TDX quote: QE report data is not SHA-256(attestation key || QE authentication data): the attestation key is not certified by the QE", ErrInvalidSignature)
	}
	ak, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, q.AttestationKey[:]...))
	if err != nil {
		return fmt.Errorf("%w: TDX quote: attestation key is not a P-256 point: %w", ErrInvalidSignature, err)
	}
	if !verifyP256(ak, q.signed, q.Signature[:]) {
		return fmt.Errorf("%w: TDX quote: signature over the header and TD report does not verify with the attestation key", ErrInvalidSignature)
	}
	return nil
}

// VerifySignatures checks the parts of a quote that need no collateral, at time now: the quoting
// enclave's vendor, the PCK certificate chain up to the embedded Intel SGX Root CA (signatures and
// validity, not revocation), the QE report signature by the PCK, the QE report's binding of the
// attestation key, and the quote signature. It returns the platform identity of the PCK certificate.
// It is not a verification of the quote: revocation, the QE and TDX module identities and the TCB level
// need Intel's collateral (Verify).
func VerifySignatures(q *Quote, now time.Time) (*PCKInfo, error) {
	return verifySignatures(q, mustIntelRoot(), now)
}

func verifySignatures(q *Quote, root *x509.Certificate, now time.Time) (*PCKInfo, error) {
	if q == nil || q.signed == nil {
		return nil, errors.New("TDX quote: no parsed quote; use ParseQuote")
	}
	pck, _, info, err := quotePCK(q, root, now)
	if err != nil {
		return nil, err
	}
	if err := checkQuoteSignatures(q, pck); err != nil {
		return nil, err
	}
	return info, nil
}

// quotePCK checks that an Intel quoting enclave made q and verifies the PCK certificate chain q carries up to
// root at time now (signatures and validity, not revocation). It returns the PCK certificate, the PCK CA that
// issued it, and the platform identity the PCK certificate names.
func quotePCK(q *Quote, root *x509.Certificate, now time.Time) (pck, ca *x509.Certificate, info *PCKInfo, err error) {
	if q.Header.QEVendorID != intelQEVendorID {
		return nil, nil, nil, fmt.Errorf("%w: QE vendor ID %x is not Intel's (%x)", ErrCollateralMismatch, q.Header.QEVendorID, intelQEVendorID)
	}
	chain, err := parseCertChainPEM(q.PCKCertChain, "PCK certificate chain")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", ErrMalformedQuote, err)
	}
	if pck, ca, err = verifyPCKChain(chain, root, now); err != nil {
		return nil, nil, nil, err
	}
	if info, err = parsePCKExtension(pck); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", ErrUntrustedCertificate, err)
	}
	if info.CA, err = pckCAOf(ca); err != nil {
		return nil, nil, nil, err
	}
	return pck, ca, info, nil
}

// checkQEIdentity compares the QE report with Intel's QE identity (its TCB level is evaluated with the
// platform's).
func checkQEIdentity(id *QEIdentity, r *EnclaveReport) error {
	if r.MRSigner != id.MRSigner {
		return fmt.Errorf("%w: QE MRSIGNER %x is not the QE identity's %x", ErrCollateralMismatch, r.MRSigner, id.MRSigner)
	}
	if r.ISVProdID != id.ISVProdID {
		return fmt.Errorf("%w: QE ISVPRODID %d is not the QE identity's %d", ErrCollateralMismatch, r.ISVProdID, id.ISVProdID)
	}
	if r.MiscSelect&id.MiscSelectMask != id.MiscSelect {
		return fmt.Errorf("%w: QE MISCSELECT %08x does not match the QE identity's %08x under mask %08x", ErrCollateralMismatch, r.MiscSelect, id.MiscSelect, id.MiscSelectMask)
	}
	for i := range id.Attributes {
		if r.Attributes[i]&id.AttributesMask[i] != id.Attributes[i] {
			return fmt.Errorf("%w: QE attributes %x do not match the QE identity's %x under mask %x", ErrCollateralMismatch, r.Attributes, id.Attributes, id.AttributesMask)
		}
	}
	return nil
}
