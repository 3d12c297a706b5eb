package snp

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/azure"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

// The azure-sev-snp variant. On an Azure confidential VM the guest cannot request SEV-SNP reports itself:
// the paravisor requested one at boot, with REPORT_DATA = hash of its runtime data, which names the vTPM
// attestation key, and stored both as an HCL report in vTPM NV index 0x01400001 (package azure). The
// evidence carries that HCL report, the SEV-SNP report in it, the VCEK chain from the instance metadata
// service and a quote of the vTPM bound to the verifier's nonce.

// ErrHCLReportData is returned when the SEV-SNP report's REPORT_DATA is not the hash of the HCL report's
// runtime data: the runtime data, and the attestation key in it, are not those the report vouches for.
var ErrHCLReportData = errors.New("the SEV-SNP report does not bind the HCL report's runtime data")

// HCLReportSource provides the HCL report of the paravisor (an azure.NVReader on an Azure VM).
type HCLReportSource = azure.HCLReportSource

// VCEKSource provides the VCEK certificate and its chain (an azure.THIMClient on an Azure VM).
type VCEKSource interface {
	FetchCertificates(ctx context.Context) (*azure.THIMCertificates, error)
}

// HCLBinding is the result of [VerifyHCLReport]: the HCL report, the verified SEV-SNP report in it that
// binds its runtime data, and the vTPM attestation key that runtime data names.
type HCLBinding struct {
	HCL            *azure.HCLReport
	Report         *VerifiedReport
	AttestationKey *rsa.PublicKey
}

// VerifyHCLReport verifies an Azure HCL report: it parses it strictly ([azure.ParseHCLReport]); requires an
// SEV-SNP report in it, equal to report if report is not nil; verifies that report to the embedded AMD root
// of its product with certs and checks it against policy with REPORT_DATA = hash of the runtime data (so
// the runtime data are those the hardware signed); and only then extracts the attestation key from the
// runtime data. policy must not set ReportData (pass it through [Policy.ValidateForCluster] first).
func VerifyHCLReport(v *Verifier, policy *Policy, hclReport, report []byte, certs *Certificates) (*HCLBinding, error) {
	if v == nil || policy == nil {
		return nil, errors.New("verifying an HCL report: no verifier or policy")
	}
	hcl, err := azure.ParseHCLReport(hclReport)
	if err != nil {
		return nil, err
	}
	if hcl.Type != azure.ReportTypeSNP {
		return nil, fmt.Errorf("%w: it holds a %v report, want %v", azure.ErrMalformedHCLReport, hcl.Type, azure.ReportTypeSNP)
	}
	if report != nil && !bytes.Equal(report, hcl.HardwareReport) {
		return nil, errors.New("the evidence's SEV-SNP report is not the one in its HCL report")
	}
	want, err := hcl.ReportData()
	if err != nil {
		return nil, err
	}
	verified, err := Validate(v, policy.WithReportData(want), hcl.HardwareReport, certs)
	if err != nil {
		if errors.Is(err, ErrReportData) {
			return nil, fmt.Errorf("%w (its REPORT_DATA is not the %v of the runtime data, so the runtime data and the attestation key in it were altered or belong to another report): %w", ErrHCLReportData, hcl.Hash, err)
		}
		return nil, fmt.Errorf("the HCL report's SEV-SNP report: %w", err)
	}
	ak, err := hcl.AttestationKey()
	if err != nil {
		return nil, err
	}
	return &HCLBinding{Report: verified, HCL: hcl, AttestationKey: ak}, nil
}

// AzureIssuer produces azure-sev-snp evidence. It implements attestation.Issuer.
type AzureIssuer struct {
	hcl   HCLReportSource
	certs VCEKSource
	tpm   VTPM
}

// NewAzureIssuer returns an issuer that reads the HCL report from hcl, the VCEK chain from certs and quotes
// with tpm, whose attestation key must be the one the HCL report names ("HCLAkPub", the vTPM's persistent
// attestation key).
func NewAzureIssuer(hcl HCLReportSource, certs VCEKSource, tpm VTPM) (*AzureIssuer, error) {
	if hcl == nil || certs == nil || tpm == nil {
		return nil, errors.New("azure-sev-snp issuer: an HCL report source, a VCEK source and a vTPM are required")
	}
	return &AzureIssuer{hcl: hcl, certs: certs, tpm: tpm}, nil
}

// Variant returns attestation.AzureSEVSNP.
func (i *AzureIssuer) Variant() attestation.Variant { return attestation.AzureSEVSNP }

// Issue reads and checks the HCL report, obtains the VCEK chain and a quote of the vTPM bound to nonce and
// userData, and returns the serialized evidence document. It refuses to issue evidence that no verifier
// would accept, and says why.
func (i *AzureIssuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	if i == nil || i.hcl == nil || i.certs == nil || i.tpm == nil {
		return nil, errors.New("azure-sev-snp issuer not initialised; use NewAzureIssuer")
	}
	raw, hcl, err := azure.ReadForIssuing(ctx, i.hcl, azure.ReportTypeSNP, i.tpm.AttestationKey())
	if err != nil {
		return nil, err
	}
	report, err := ParseReport(hcl.HardwareReport)
	if err != nil {
		return nil, fmt.Errorf("the paravisor's SEV-SNP report: %w", err)
	}
	want, err := hcl.ReportData()
	if err != nil {
		return nil, err
	}
	if report.ReportData != want {
		return nil, fmt.Errorf("the paravisor's SEV-SNP report does not carry the %v of its runtime data as REPORT_DATA; no verifier accepts it", hcl.Hash)
	}
	if report.Policy.Debug() {
		return nil, fmt.Errorf("this guest was launched with a policy that allows debugging (guest policy 0x%x): no verifier accepts its reports", uint64(report.Policy))
	}
	thim, err := i.certs.FetchCertificates(ctx)
	if err != nil {
		return nil, err
	}
	chain := thim.PEM()
	certs, err := ParseCertificates(chain)
	if err != nil {
		return nil, fmt.Errorf("the VCEK chain from the metadata service: %w", err)
	}
	if certs.VCEK == nil {
		return nil, fmt.Errorf("%w: the metadata service returned no VCEK certificate", ErrMissingCertificate)
	}
	ev, err := attestation.QuoteBinding(ctx, i.tpm.Quote, attestation.AzureSEVSNP, nonce, userData)
	if err != nil {
		return nil, err
	}
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  attestation.AzureSEVSNP.Name,
		UserData: bytes.Clone(userData),
		TPM:      ev,
		SNP: &attestation.SNPEvidence{
			Report:    bytes.Clone(hcl.HardwareReport),
			CertChain: chain,
			HCLReport: bytes.Clone(raw),
		},
	}
	return doc.Marshal()
}

// AzureValidator validates azure-sev-snp evidence. It implements attestation.Validator and is safe for
// concurrent use.
type AzureValidator struct {
	verifier *Verifier
	policy   *Policy
	pcrs     measurements.M
	log      *slog.Logger
}

// NewAzureValidator returns a validator that verifies reports with verifier, accepts them under policy
// (which must pass [Policy.ValidateForCluster]; set IDKeyDigests to the digests of Azure's ID keys to
// accept only guests launched by Azure's firmware) and accepts the vTPM's PCR values under pcrs (which must
// not be empty).
func NewAzureValidator(verifier *Verifier, policy *Policy, pcrs measurements.M, log *slog.Logger) (*AzureValidator, error) {
	if verifier == nil {
		return nil, errors.New("azure-sev-snp validator: no verifier")
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
	return &AzureValidator{verifier: verifier, policy: policy.Clone(), pcrs: maps.Clone(pcrs), log: log}, nil
}

// Variant returns attestation.AzureSEVSNP.
func (v *AzureValidator) Variant() attestation.Variant { return attestation.AzureSEVSNP }

// Validate parses the evidence document; verifies the HCL report ([VerifyHCLReport]: the SEV-SNP report's
// chain and signature, the policy, REPORT_DATA = hash of the runtime data); then verifies the vTPM quote with
// the attestation key of the runtime data (signature, binding of nonce and user data, PCRs 0-23, event log,
// measurement policy). It returns the user data.
func (v *AzureValidator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if v == nil || v.verifier == nil || v.policy == nil || v.pcrs == nil {
		return nil, errors.New("azure-sev-snp validator not initialised; use NewAzureValidator")
	}
	doc, err := attestation.OpenEvidence(attestation.AzureSEVSNP, attestation.AKFromHCLReport, evidence, nonce)
	if err != nil {
		return nil, err
	}
	certs, err := evidenceCertificates(doc.SNP, v.verifier.vcekCache != nil)
	if err != nil {
		return nil, err
	}
	verified, err := VerifyHCLReport(v.verifier, v.policy, doc.SNP.HCLReport, doc.SNP.Report, certs)
	if err != nil {
		return nil, err
	}
	if err := verifyVTPMQuote(attestation.AzureSEVSNP, doc.TPM, verified.AttestationKey, nonce, doc.UserData, v.pcrs, v.log); err != nil {
		return nil, err
	}
	return doc.UserData, nil
}
