package tdx

import (
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// ReportDataSize is the size of a TD report's REPORT_DATA.
const ReportDataSize = 64

// REPORT_DATA layout. A TDX quote signs 64 bytes of REPORT_DATA chosen by the TD. This package fills them
// as follows:
//
//	bytes  0-31  attestation.BindingDigest(variant, nonce, data): SHA-256 over a domain separator, the
//	             variant name and the length-prefixed nonce and data
//	bytes 32-63  a purpose tag: SHA-256("constellation tdx report data v1\x00" || purpose)
//
// where purpose is "nonce" when data is the caller's user data (ReportDataForNonce) and "vtpm-ak" when data
// is the DER (PKIX) encoding of a vTPM attestation key (ReportDataForAttestationKey). The tag keeps the two
// bindings apart: user data that happens to equal a key's encoding never yields a key binding.
const reportDataTagPrefix = "constellation tdx report data v1\x00"

// Purposes of REPORT_DATA.
var (
	tagNonce = sha256.Sum256([]byte(reportDataTagPrefix + "nonce"))
	tagVTPM  = sha256.Sum256([]byte(reportDataTagPrefix + "vtpm-ak"))
)

func reportData(variant attestation.Variant, nonce, data []byte, tag [32]byte) [ReportDataSize]byte {
	var out [ReportDataSize]byte
	d := attestation.BindingDigest(variant, nonce, data)
	copy(out[:32], d[:])
	copy(out[32:], tag[:])
	return out
}

// ReportDataForNonce returns the REPORT_DATA that binds a verifier's nonce and the caller's user data (for
// attested TLS, the hash of the TLS key) for evidence of variant.
func ReportDataForNonce(variant attestation.Variant, nonce, userData []byte) [ReportDataSize]byte {
	return reportData(variant, nonce, userData, tagNonce)
}

// ReportDataForAttestationKey returns the REPORT_DATA that binds a vTPM attestation key, so that the vTPM's
// PCR quote is as trustworthy as the TDX quote. nonce makes the TDX quote fresh; it may be empty when the
// TDX quote is made once per boot and the vTPM quote carries the verifier's nonce.
func ReportDataForAttestationKey(variant attestation.Variant, nonce []byte, ak crypto.PublicKey) ([ReportDataSize]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(ak)
	if err != nil {
		return [ReportDataSize]byte{}, fmt.Errorf("encoding the attestation key: %w", err)
	}
	return reportData(variant, nonce, der, tagVTPM), nil
}

// ErrReportData is returned by [CheckReportData] when REPORT_DATA is not the expected value.
var ErrReportData = errors.New("REPORT_DATA mismatch")

// CheckReportData compares the REPORT_DATA of a quote with want in constant time. It says nothing about
// who signed the quote: pass the Quote of a [VerifiedQuote], or verify the quote afterwards.
func CheckReportData(q *Quote, want [ReportDataSize]byte) error {
	if q == nil {
		return fmt.Errorf("%w: no quote", ErrPolicy)
	}
	if subtle.ConstantTimeCompare(q.Body.ReportData[:], want[:]) != 1 {
		return fmt.Errorf("%w: %w: TDX quote: REPORT_DATA does not match the expected value (stale, replayed, or made for another nonce or key)", ErrPolicy, ErrReportData)
	}
	return nil
}
