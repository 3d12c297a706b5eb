// Package attestation defines how a node proves what it runs and how a verifier checks it.
//
// An [Issuer] produces evidence for a verifier's nonce and the caller's user data (for attested TLS, the
// hash of the TLS key). A [Validator] checks that evidence and, only if every check passed, returns the
// user data it is bound to. Each kind of evidence is a [Variant] with a name and an object identifier; the
// registry in this package is the single list of variants the product knows.
//
// Evidence travels as a versioned [Document]. Validators parse it strictly: unknown fields, trailing data,
// another version or another variant are errors. Every validator of a hardware variant opens the evidence
// with [OpenEvidence] (nonce size, strict parse with size bounds, the variant and its parts) and states
// there where it takes the attestation key from ([AKSource]); what it verifies then is its own.
//
// # One vocabulary for the hardware packages
//
// Packages snp (AMD SEV-SNP) and tdx (Intel TDX) name the same ideas the same way, so that a reviewer who
// knows one reads the other:
//
//	idea                      snp                                       tdx
//	------------------------  ----------------------------------------  -----------------------------------------------
//	1. parse                  ParseReport -> *Report                    ParseQuote -> *Quote
//	2. verify to the root     (*Verifier).Verify -> *VerifiedReport     Verify(q, collateral, now) -> *VerifiedQuote
//	3. decide under a policy  (*Policy).Check(*VerifiedReport)          (*Policy).Check(*VerifiedQuote)
//	all three steps           Validate(verifier, policy, raw, certs)    Validate(collateral, policy, raw, now)
//	REPORT_DATA for a nonce   ReportDataForNonce(variant, nonce, data)  ReportDataForNonce(variant, nonce, data)
//	REPORT_DATA for an AK     ReportDataForAttestationKey(ak)           ReportDataForAttestationKey(variant, nonce, ak)
//	compare REPORT_DATA       CheckReportData(*Report, want)            CheckReportData(*Quote, want)
//	  its error               ErrReportData (and ErrPolicy)             ErrReportData (and ErrPolicy)
//	expected REPORT_DATA      (*Policy).WithReportData                  (*Policy).WithReportData
//	enforceable policy        (*Policy).ValidateForCluster              (*Policy).ValidateForCluster(WithoutVTPM)
//	Azure HCL binding         VerifyHCLReport -> *HCLBinding            BindHCLReport -> *HCLBinding
//	                            {HCL, Report, AttestationKey}             {HCL, TDReport, AttestationKey}
//	  its error               ErrHCLReportData                          ErrHCLReportData
//	open the evidence         OpenEvidence(variant, AKSource, ...)      OpenEvidence(variant, AKSource, ...)
//	validator without vTPM    NewValidator(verifier, policy)            NewValidator(collateral, policy, now)
//	validator with a vTPM     NewVTPMValidator(variant, verifier,       NewVTPMValidator(variant, collateral,
//	                            policy, pcrs, log)                        policy, pcrs, now, log)
//	Azure validator           NewAzureValidator(verifier, policy,       NewAzureValidator(collateral, policy,
//	                            pcrs, log)                                pcrs, now, log)
//	issuers                   NewIssuer, NewVTPMIssuer, NewAzureIssuer  NewIssuer, NewAzureIssuer
//	test package              snptest: test PKI, platform, vTPM         tdxtest: genuine quote and collateral
//
// The parameters of the constructors come in one order: what verifies the hardware statement (the SEV-SNP
// verifier, the TDX collateral), the hardware policy, the PCR measurements, the clock, the log. The SEV-SNP
// verifier carries its clock (VerifierOptions.Now); the TDX collateral has none, so the TDX constructors
// take it. The differences that remain are real: the SEV-SNP binding of an attestation key is fixed per
// boot and carries no variant or nonce, while the TDX one may; on Azure the SEV-SNP report is inside the HCL
// report and is verified there (VerifyHCLReport verifies signature and policy), while a TD report is only
// MACed, so BindHCLReport matches it to a quote that was verified before and verifies nothing itself.
package attestation

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Issuer produces attestation evidence.
type Issuer interface {
	// Variant is the kind of evidence the issuer produces.
	Variant() Variant
	// Issue returns a serialized evidence document that binds nonce and userData.
	Issue(ctx context.Context, nonce, userData []byte) ([]byte, error)
}

// Validator checks attestation evidence of one variant.
type Validator interface {
	// Variant is the kind of evidence the validator accepts.
	Variant() Variant
	// Validate checks evidence against the verifier's nonce and the validator's policy. It returns the
	// user data the evidence is bound to; the caller must compare it with what it expects.
	Validate(ctx context.Context, evidence, nonce []byte) (userData []byte, err error)
}

// Nonce length bounds. A verifier's nonce must be unpredictable; 32 random bytes is the default.
const (
	MinNonceSize = 16
	MaxNonceSize = 64
	NonceSize    = 32
	// MaxUserDataSize bounds the caller's user data.
	MaxUserDataSize = 1024
)

// ErrInvalidNonce is returned for nonces outside the allowed bounds.
var ErrInvalidNonce = errors.New("invalid nonce")

// CheckNonce checks that a nonce has an acceptable size.
func CheckNonce(nonce []byte) error {
	if len(nonce) < MinNonceSize || len(nonce) > MaxNonceSize {
		return fmt.Errorf("%w: %d bytes, want %d to %d", ErrInvalidNonce, len(nonce), MinNonceSize, MaxNonceSize)
	}
	return nil
}

// CheckIssueArgs checks what an issuer is asked to bind: a nonce of valid size and user data within
// [MaxUserDataSize].
func CheckIssueArgs(nonce, userData []byte) error {
	if err := CheckNonce(nonce); err != nil {
		return err
	}
	if len(userData) > MaxUserDataSize {
		return fmt.Errorf("user data of %d bytes exceeds the limit of %d", len(userData), MaxUserDataSize)
	}
	return nil
}

// QuoteBinding has a vTPM quote its PCRs with the binding digest of variant, nonce and userData as
// qualifying data ([BindingDigest]), and returns the quote as a copy that names no attestation key: the caller
// sets how the verifier finds the key, which differs per variant.
func QuoteBinding(ctx context.Context, quote func(ctx context.Context, qualifyingData []byte) (*TPMEvidence, error), variant Variant, nonce, userData []byte) (*TPMEvidence, error) {
	binding := BindingDigest(variant, nonce, userData)
	ev, err := quote(ctx, binding[:])
	if err != nil {
		return nil, fmt.Errorf("quoting the vTPM: %w", err)
	}
	if ev == nil {
		return nil, errors.New("quoting the vTPM: no evidence returned")
	}
	out := *ev
	out.AKCert, out.AKPublic = nil, nil
	return &out, nil
}

// BindingDigest is the value a hardware or TPM statement signs to bind the verifier's nonce and the caller's
// user data: SHA-256 over a domain separator and the length-prefixed nonce and user data. Length prefixes
// make the encoding unambiguous, so no other (nonce, userData) pair yields the same digest.
func BindingDigest(variant Variant, nonce, userData []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("constellation attestation binding v1\x00"))
	h.Write([]byte(variant.Name))
	h.Write([]byte{0})
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(nonce)))
	h.Write(n[:])
	h.Write(nonce)
	binary.BigEndian.PutUint32(n[:], uint32(len(userData)))
	h.Write(n[:])
	h.Write(userData)
	var out [32]byte
	h.Sum(out[:0])
	return out
}
