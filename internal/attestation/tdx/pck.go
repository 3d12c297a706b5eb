package tdx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"
)

// ErrUntrustedCertificate wraps failures to chain a certificate to the Intel SGX Root CA.
var ErrUntrustedCertificate = errors.New("certificate not trusted")

// ErrRevoked wraps revocations found in a certificate revocation list.
var ErrRevoked = errors.New("certificate revoked")

// PCKCA names the Intel CA that issues a platform's PCK certificate; it selects the PCK CRL.
type PCKCA string

// The two PCK CAs under the Intel SGX Root CA.
const (
	PCKCAPlatform  PCKCA = "platform"
	PCKCAProcessor PCKCA = "processor"
)

// Subject common names of Intel's PCK PKI.
const (
	cnPlatformCA  = "Intel SGX PCK Platform CA"
	cnProcessorCA = "Intel SGX PCK Processor CA"
)

// maxChainCerts bounds the number of certificates accepted in a PEM chain.
const maxChainCerts = 8

// PCKInfo holds the SGX extension of a PCK certificate: the platform's identity and the TCB level the
// certificate was issued for.
type PCKInfo struct {
	PPID []byte
	// TCBComponents are the SGX TCB component SVNs 1-16 (compared with sgxtcbcomponents of TCB info).
	TCBComponents [16]byte
	PCESVN        uint16
	CPUSVN        [16]byte
	PCEID         [2]byte
	// FMSPC identifies the platform family; it selects the TCB info.
	FMSPC   [6]byte
	SGXType int
	// CA is the CA that issued the certificate.
	CA PCKCA
}

// OIDs of the SGX extension of PCK certificates (Intel SGX PCK Certificate and CRL Profile).
var (
	oidSGXExtension     = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidSGXPPID          = sgxOID(1)
	oidSGXTCB           = sgxOID(2)
	oidSGXPCEID         = sgxOID(3)
	oidSGXFMSPC         = sgxOID(4)
	oidSGXType          = sgxOID(5)
	oidSGXPlatformInst  = sgxOID(6)
	oidSGXConfiguration = sgxOID(7)
)

// Fields of the SGX TCB (OID 1.2.840.113741.1.13.1.2.<n>).
const (
	numSGXTCBComponents   = 16 // n = 1-16
	sgxTCBPCESVNIndex     = 17
	sgxTCBCPUSVNIndex     = 18
	maxSGXExtensionFields = 32
)

func sgxOID(arcs ...int) asn1.ObjectIdentifier {
	return append(slices.Clone(oidSGXExtension), arcs...)
}

func sgxTCBOID(n int) asn1.ObjectIdentifier {
	return append(slices.Clone(oidSGXTCB), n)
}

// parseCertChainPEM parses concatenated PEM certificates. Only CERTIFICATE blocks without headers,
// separated by white space, are accepted; after the last block only white space and NUL bytes (some
// quoting libraries terminate the chain with one) may follow.
func parseCertChainPEM(data []byte, what string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		// pem.Decode skips any text before a block; only white space may precede one here.
		if !bytes.HasPrefix(bytes.TrimLeft(rest, " \t\r\n"), []byte("-----BEGIN ")) {
			break
		}
		block, r := pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			return nil, fmt.Errorf("%s: PEM block %d is a %q block, want a plain CERTIFICATE", what, len(certs), block.Type)
		}
		if len(certs) == maxChainCerts {
			return nil, fmt.Errorf("%s: more than %d certificates", what, maxChainCerts)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", what, len(certs), err)
		}
		certs = append(certs, c)
		rest = r
	}
	if len(bytes.Trim(rest, " \t\r\n\x00")) != 0 {
		return nil, fmt.Errorf("%s: %d bytes that are not a PEM certificate after certificate %d", what, len(rest), len(certs))
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", what)
	}
	return certs, nil
}

// verifyPCKChain verifies that chain[0], the PCK certificate, chains through an Intel PCK CA to root at
// time now. Certificates of the chain only serve as intermediates: the root is never taken from it.
func verifyPCKChain(chain []*x509.Certificate, root *x509.Certificate, now time.Time) (pck, ca *x509.Certificate, _ error) {
	pck = chain[0]
	verified, err := verifyCert(pck, chain[1:], root, now)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: PCK certificate (subject %q, issuer %q) does not chain to the Intel SGX Root CA: %w", ErrUntrustedCertificate, pck.Subject.CommonName, pck.Issuer.CommonName, err)
	}
	if len(verified) != 3 {
		return nil, nil, fmt.Errorf("%w: PCK certificate chain has %d certificates up to the root, want 3 (PCK, PCK CA, root)", ErrUntrustedCertificate, len(verified))
	}
	if _, err := p256Key(pck); err != nil {
		return nil, nil, fmt.Errorf("%w: PCK certificate: %w", ErrUntrustedCertificate, err)
	}
	return pck, verified[1], nil
}

// verifyCert verifies cert against root only, with the given intermediates, at time now, and returns the
// verified chain from cert to root.
func verifyCert(cert *x509.Certificate, intermediates []*x509.Certificate, root *x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, err
	}
	return chains[0], nil
}

// pckCAOf returns which PCK CA the certificate is.
func pckCAOf(ca *x509.Certificate) (PCKCA, error) {
	switch ca.Subject.CommonName {
	case cnPlatformCA:
		return PCKCAPlatform, nil
	case cnProcessorCA:
		return PCKCAProcessor, nil
	}
	return "", fmt.Errorf("%w: PCK certificate is issued by %q, which is neither the %q nor the %q", ErrUntrustedCertificate, ca.Subject.CommonName, cnPlatformCA, cnProcessorCA)
}

// p256Key returns the certificate's public key if it is an ECDSA P-256 key.
func p256Key(c *x509.Certificate) (*ecdsa.PublicKey, error) {
	k, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("certificate %q does not hold an ECDSA P-256 key", c.Subject.CommonName)
	}
	return k, nil
}

// sgxField is one element of the SGX extension: SEQUENCE { OBJECT IDENTIFIER, ANY }.
type sgxField struct {
	ID    asn1.ObjectIdentifier
	Value asn1.RawValue
}

// parseSGXFields parses a SEQUENCE OF sgxField without trailing data and without duplicate identifiers.
func parseSGXFields(der []byte, what string) (map[string]asn1.RawValue, error) {
	var fields []sgxField
	rest, err := asn1.Unmarshal(der, &fields)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%s: %d trailing bytes", what, len(rest))
	}
	if len(fields) > maxSGXExtensionFields {
		return nil, fmt.Errorf("%s: %d fields, more than %d", what, len(fields), maxSGXExtensionFields)
	}
	m := make(map[string]asn1.RawValue, len(fields))
	for _, f := range fields {
		k := f.ID.String()
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("%s: field %s appears twice", what, k)
		}
		m[k] = f.Value
	}
	return m, nil
}

// parsePCKExtension parses the SGX extension (OID 1.2.840.113741.1.13.1) of a PCK certificate. It only
// decodes; the certificate must have been verified first.
func parsePCKExtension(cert *x509.Certificate) (*PCKInfo, error) {
	var ext []byte
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidSGXExtension) {
			if ext != nil {
				return nil, errors.New("PCK certificate has two SGX extensions")
			}
			ext = e.Value
		}
	}
	if ext == nil {
		return nil, fmt.Errorf("certificate %q has no SGX extension (%s): not a PCK certificate", cert.Subject.CommonName, oidSGXExtension)
	}
	return parseSGXExtension(ext)
}

func parseSGXExtension(der []byte) (*PCKInfo, error) {
	const what = "PCK certificate SGX extension"
	fields, err := parseSGXFields(der, what)
	if err != nil {
		return nil, err
	}
	info := &PCKInfo{}
	get := func(id asn1.ObjectIdentifier, name string) (asn1.RawValue, error) {
		v, ok := fields[id.String()]
		if !ok {
			return v, fmt.Errorf("%s: no %s (%s)", what, name, id)
		}
		return v, nil
	}
	octets := func(id asn1.ObjectIdentifier, name string, size int) ([]byte, error) {
		v, err := get(id, name)
		if err != nil {
			return nil, err
		}
		if v.Class != asn1.ClassUniversal || v.Tag != asn1.TagOctetString || v.IsCompound {
			return nil, fmt.Errorf("%s: %s is not an OCTET STRING", what, name)
		}
		if size >= 0 && len(v.Bytes) != size {
			return nil, fmt.Errorf("%s: %s has %d bytes, want %d", what, name, len(v.Bytes), size)
		}
		return v.Bytes, nil
	}

	if info.PPID, err = octets(oidSGXPPID, "PPID", 16); err != nil {
		return nil, err
	}
	info.PPID = bytes.Clone(info.PPID)
	pceid, err := octets(oidSGXPCEID, "PCE-ID", 2)
	if err != nil {
		return nil, err
	}
	copy(info.PCEID[:], pceid)
	fmspc, err := octets(oidSGXFMSPC, "FMSPC", 6)
	if err != nil {
		return nil, err
	}
	copy(info.FMSPC[:], fmspc)

	typ, err := get(oidSGXType, "SGX type")
	if err != nil {
		return nil, err
	}
	var sgxType asn1.Enumerated
	if rest, err := asn1.Unmarshal(typ.FullBytes, &sgxType); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%s: SGX type is not an ENUMERATED", what)
	}
	info.SGXType = int(sgxType)

	tcb, err := get(oidSGXTCB, "TCB")
	if err != nil {
		return nil, err
	}
	if err := parseSGXTCB(tcb.FullBytes, info); err != nil {
		return nil, err
	}
	// Platform instance ID and configuration are present for multi-package platforms only; this verifier
	// does not use them but checks that they are well formed.
	if v, ok := fields[oidSGXPlatformInst.String()]; ok && (v.Tag != asn1.TagOctetString || v.IsCompound) {
		return nil, fmt.Errorf("%s: platform instance ID is not an OCTET STRING", what)
	}
	if v, ok := fields[oidSGXConfiguration.String()]; ok && (v.Tag != asn1.TagSequence || !v.IsCompound) {
		return nil, fmt.Errorf("%s: configuration is not a SEQUENCE", what)
	}
	return info, nil
}

func parseSGXTCB(der []byte, info *PCKInfo) error {
	const what = "PCK certificate SGX TCB"
	fields, err := parseSGXFields(der, what)
	if err != nil {
		return err
	}
	integer := func(i int, max int64) (int64, error) {
		id := sgxTCBOID(i)
		v, ok := fields[id.String()]
		if !ok {
			return 0, fmt.Errorf("%s: no field %s", what, id)
		}
		var n *big.Int
		if rest, err := asn1.Unmarshal(v.FullBytes, &n); err != nil || len(rest) != 0 {
			return 0, fmt.Errorf("%s: field %s is not an INTEGER", what, id)
		}
		if n.Sign() < 0 || !n.IsInt64() || n.Int64() > max {
			return 0, fmt.Errorf("%s: field %s is %s, outside 0-%d", what, id, n, max)
		}
		return n.Int64(), nil
	}
	for i := range numSGXTCBComponents {
		n, err := integer(i+1, 255)
		if err != nil {
			return err
		}
		info.TCBComponents[i] = byte(n)
	}
	pcesvn, err := integer(sgxTCBPCESVNIndex, 65535)
	if err != nil {
		return err
	}
	info.PCESVN = uint16(pcesvn)
	id := sgxTCBOID(sgxTCBCPUSVNIndex)
	v, ok := fields[id.String()]
	if !ok {
		return fmt.Errorf("%s: no CPUSVN (%s)", what, id)
	}
	if v.Tag != asn1.TagOctetString || v.IsCompound || len(v.Bytes) != 16 {
		return fmt.Errorf("%s: CPUSVN is not a 16-byte OCTET STRING", what)
	}
	copy(info.CPUSVN[:], v.Bytes)
	return nil
}

// checkCRL checks that crl is issued and signed by issuer and current at time now.
func checkCRL(crl *x509.RevocationList, issuer *x509.Certificate, now time.Time, name string) error {
	if !bytes.Equal(crl.RawIssuer, issuer.RawSubject) {
		return fmt.Errorf("%w: %s is issued by %q, want %q", ErrUntrustedCertificate, name, crl.Issuer.CommonName, issuer.Subject.CommonName)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return fmt.Errorf("%w: %s signature does not verify with %q: %w", ErrInvalidSignature, name, issuer.Subject.CommonName, err)
	}
	if now.Before(crl.ThisUpdate) {
		return fmt.Errorf("%w: %s was issued at %s, after the verification time %s", ErrExpired, name, crl.ThisUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if crl.NextUpdate.IsZero() {
		return fmt.Errorf("%w: %s has no next update time", ErrMalformedCollateral, name)
	}
	if now.After(crl.NextUpdate) {
		return fmt.Errorf("%w: %s expired at %s (verification time %s): refresh the collateral cache", ErrExpired, name, crl.NextUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkNotRevoked fails if crl lists cert's serial number.
func checkNotRevoked(crl *x509.RevocationList, cert *x509.Certificate, what, crlName string) error {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return fmt.Errorf("%w: %s (serial %x) revoked by %s at %s", ErrRevoked, what, cert.SerialNumber, crlName, e.RevocationTime.UTC().Format(time.RFC3339))
		}
	}
	return nil
}
