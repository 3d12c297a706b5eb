package snp

import (
	"crypto"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"fmt"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// akBindingLabel separates the attestation-key binding from every other use of REPORT_DATA.
const akBindingLabel = "constellation snp ak binding v1\x00"

// ReportDataForAttestationKey returns the REPORT_DATA that binds a vTPM attestation key to a report:
//
//	SHA-512("constellation snp ak binding v1\x00" || DER SubjectPublicKeyInfo of the key)
//
// SHA-512 fills the 64 bytes of REPORT_DATA exactly, so there is no padding to get wrong, and the label
// keeps the value apart from [ReportDataForNonce]. With this binding the report proves which TPM key belongs
// to the confidential VM; the freshness of the evidence comes from the TPM quote, whose qualifying data
// binds the verifier's nonce. A report bound this way can be reused with fresh quotes of the same key.
func ReportDataForAttestationKey(ak crypto.PublicKey) ([ReportDataSize]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(ak)
	if err != nil {
		return [ReportDataSize]byte{}, fmt.Errorf("encoding attestation key: %w", err)
	}
	h := sha512.New()
	h.Write([]byte(akBindingLabel))
	h.Write(der)
	var out [ReportDataSize]byte
	h.Sum(out[:0])
	return out, nil
}

// ReportDataForNonce returns the REPORT_DATA that binds a verifier's nonce and the caller's user data
// directly, for variants without a vTPM: attestation.BindingDigest(variant, nonce, userData) (32 bytes,
// SHA-256) in the first half and 32 zero bytes in the second half. The verifier compares all 64 bytes, so
// the zero half is checked too.
func ReportDataForNonce(variant attestation.Variant, nonce, userData []byte) [ReportDataSize]byte {
	var out [ReportDataSize]byte
	d := attestation.BindingDigest(variant, nonce, userData)
	copy(out[:], d[:])
	return out
}

// CheckReportData compares the REPORT_DATA of a report with want in constant time. It says nothing about
// who signed the report: pass the Report of a [VerifiedReport], or check the report's signature afterwards.
func CheckReportData(r *Report, want [ReportDataSize]byte) error {
	if r == nil {
		return fmt.Errorf("%w: no report", ErrPolicy)
	}
	if subtle.ConstantTimeCompare(r.ReportData[:], want[:]) != 1 {
		return fmt.Errorf("%w: %w: the report is not bound to this request (stale, replayed or made for another nonce or key)", ErrPolicy, ErrReportData)
	}
	return nil
}
