package snp

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

// VTPM is the virtual TPM of a confidential VM, as the issuer of a vTPM-combined variant uses it.
type VTPM interface {
	// AttestationKey returns the public part of the vTPM's attestation key.
	AttestationKey() crypto.PublicKey
	// Quote quotes the SHA-256 PCRs 0-23 with qualifyingData as the quote's qualifying data (extra data)
	// and returns the quote, its signature by the attestation key, the PCR values it covers and the event
	// log. AKCert and AKPublic are left empty; the issuer fills in AKPublic.
	Quote(ctx context.Context, qualifyingData []byte) (*attestation.TPMEvidence, error)
}

// checkVTPMVariant checks that variant combines an SEV-SNP report with a vTPM quote in the generic way
// this package implements.
func checkVTPMVariant(variant attestation.Variant) error {
	switch variant.Name {
	case attestation.AWSSEVSNP.Name, attestation.GCPSEVSNP.Name:
		return nil
	case attestation.AzureSEVSNP.Name:
		return fmt.Errorf("%s evidence is issued and validated by NewAzureIssuer and NewAzureValidator: on Azure the paravisor (HCL) requests the SEV-SNP report at boot and stores it in vTPM NV index 0x01400001, with REPORT_DATA = hash of its runtime data that names the attestation key", variant)
	}
	return fmt.Errorf("variant %q is not an SEV-SNP variant with a vTPM (use %s or %s)", variant.Name, attestation.AWSSEVSNP, attestation.GCPSEVSNP)
}

// VTPMIssuer produces evidence of a vTPM-combined SEV-SNP variant (aws-sev-snp, gcp-sev-snp): an SEV-SNP
// report whose REPORT_DATA is [ReportDataForAttestationKey] of the vTPM's attestation key, and a quote of
// that key over the SHA-256 PCRs 0-23 whose qualifying data is attestation.BindingDigest of the verifier's nonce and the
// caller's user data. It implements attestation.Issuer.
type VTPMIssuer struct {
	variant  attestation.Variant
	reporter Reporter
	tpm      VTPM
}

// NewVTPMIssuer returns an issuer of variant that obtains reports from reporter and quotes from tpm.
func NewVTPMIssuer(variant attestation.Variant, reporter Reporter, tpm VTPM) (*VTPMIssuer, error) {
	if err := checkVTPMVariant(variant); err != nil {
		return nil, err
	}
	if reporter == nil || tpm == nil {
		return nil, errors.New("SNP vTPM issuer: a reporter and a vTPM are required")
	}
	return &VTPMIssuer{variant: variant, reporter: reporter, tpm: tpm}, nil
}

// Variant returns the issuer's variant.
func (i *VTPMIssuer) Variant() attestation.Variant { return i.variant }

// Issue obtains a report that binds the attestation key and a quote bound to nonce and userData.
func (i *VTPMIssuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	ak := i.tpm.AttestationKey()
	akDER, err := x509.MarshalPKIXPublicKey(ak)
	if err != nil {
		return nil, fmt.Errorf("encoding the vTPM attestation key: %w", err)
	}
	if _, err := parseAttestationKey(akDER); err != nil {
		return nil, fmt.Errorf("the vTPM attestation key is not usable: %w", err)
	}
	rd, err := ReportDataForAttestationKey(ak)
	if err != nil {
		return nil, err
	}
	snpEv, err := obtainReport(ctx, i.reporter, rd, i.variant.Name == attestation.GCPSEVSNP.Name)
	if err != nil {
		return nil, err
	}
	ev, err := attestation.QuoteBinding(ctx, i.tpm.Quote, i.variant, nonce, userData)
	if err != nil {
		return nil, err
	}
	ev.AKPublic = akDER
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  i.variant.Name,
		UserData: bytes.Clone(userData),
		TPM:      ev,
		SNP:      snpEv,
	}
	return doc.Marshal()
}

// VTPMValidator validates evidence of a vTPM-combined SEV-SNP variant. It implements attestation.Validator
// and is safe for concurrent use.
type VTPMValidator struct {
	variant  attestation.Variant
	verifier *Verifier
	policy   *Policy
	pcrs     measurements.M
	log      *slog.Logger
}

// NewVTPMValidator returns a validator of variant (aws-sev-snp or gcp-sev-snp) that verifies reports with
// verifier, accepts them under policy (which must pass [Policy.ValidateForCluster]) and accepts the vTPM's PCR
// values under pcrs (which must not be empty). For azure-sev-snp it returns an error that points to
// [NewAzureValidator].
func NewVTPMValidator(variant attestation.Variant, verifier *Verifier, policy *Policy, pcrs measurements.M, log *slog.Logger) (*VTPMValidator, error) {
	if err := checkVTPMVariant(variant); err != nil {
		return nil, err
	}
	if verifier == nil {
		return nil, errors.New("SNP validator: no verifier")
	}
	if err := policy.ValidateForCluster(); err != nil {
		return nil, err
	}
	if err := pcrs.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &VTPMValidator{variant: variant, verifier: verifier, policy: policy.Clone(), pcrs: maps.Clone(pcrs), log: log}, nil
}

// Variant returns the validator's variant.
func (v *VTPMValidator) Variant() attestation.Variant { return v.variant }

// Validate parses the evidence document; verifies the SEV-SNP report and checks it against the policy with
// REPORT_DATA = ReportDataForAttestationKey(attestation key in the evidence); then verifies the vTPM quote
// with that key, its binding to nonce and the user data, the PCR values, the event log and the measurement policy. It
// returns the user data.
func (v *VTPMValidator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if v == nil || v.verifier == nil || v.policy == nil || v.pcrs == nil {
		return nil, errors.New("SNP vTPM validator not initialised; use NewVTPMValidator")
	}
	doc, err := attestation.OpenEvidence(v.variant, attestation.AKFromReportData, evidence, nonce)
	if err != nil {
		return nil, err
	}
	ak, err := parseAttestationKey(doc.TPM.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("vTPM: %w", err)
	}
	certs, err := evidenceCertificates(doc.SNP, v.verifier.vcekCache != nil)
	if err != nil {
		return nil, err
	}
	want, err := ReportDataForAttestationKey(ak)
	if err != nil {
		return nil, err
	}
	if _, err := Validate(v.verifier, v.policy.WithReportData(want), doc.SNP.Report, certs); err != nil {
		return nil, err
	}
	if err := verifyVTPMQuote(v.variant, doc.TPM, ak, nonce, doc.UserData, v.pcrs, v.log); err != nil {
		return nil, err
	}
	return doc.UserData, nil
}
