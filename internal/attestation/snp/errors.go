package snp

import "errors"

// Sentinel errors. Every error of this package wraps one of them (with %w) and adds what exactly was wrong.
var (
	// ErrMalformedReport wraps every structural error of an attestation report.
	ErrMalformedReport = errors.New("SNP report: malformed")
	// ErrMalformedCertificates wraps every structural error of a certificate table or certificate bundle.
	ErrMalformedCertificates = errors.New("SNP certificates: malformed")
	// ErrMissingCertificate is returned when the evidence lacks the certificate of the key that signed the
	// report.
	ErrMissingCertificate = errors.New("SNP certificates: missing")
	// ErrChain is returned when a certificate does not chain to the embedded AMD root of the report's
	// product, or does not describe the report (product, TCB, chip).
	ErrChain = errors.New("SNP certificate chain")
	// ErrSignature is returned when the report signature does not verify with the endorsement key.
	ErrSignature = errors.New("SNP report: signature invalid")
	// ErrRevoked is returned when a certificate of the chain is listed in a CRL.
	ErrRevoked = errors.New("SNP certificate revoked")
	// ErrCRLUnavailable is returned by the policy check when no current CRL of the report's product was
	// available and the policy does not allow that.
	ErrCRLUnavailable = errors.New("SNP CRL unavailable")
	// ErrPolicy wraps every way in which a verified report violates the policy.
	ErrPolicy = errors.New("SNP report violates policy")
	// ErrReportData is returned (together with ErrPolicy) when REPORT_DATA differs from the expected value:
	// the report is stale, replayed, or made for another request.
	ErrReportData = errors.New("REPORT_DATA mismatch")
	// ErrHostData is returned (together with ErrPolicy) when HOST_DATA differs from the policy's hostData.
	ErrHostData = errors.New("HOST_DATA mismatch")
	// ErrFirmware is returned (together with ErrPolicy) when the report's firmware version is below the
	// policy's minimum or not stated.
	ErrFirmware = errors.New("SEV-SNP firmware below minimum")
	// ErrInvalidPolicy is returned for a policy that is incomplete or inconsistent. An empty policy is
	// invalid: it denies everything.
	ErrInvalidPolicy = errors.New("SNP policy invalid")
	// ErrUnknownProduct is returned when the product of a report or certificate is not Milan, Genoa or
	// Turin.
	ErrUnknownProduct = errors.New("unknown SEV-SNP product")
)
