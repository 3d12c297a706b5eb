package tdx

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/azure"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// The azure-tdx variant. On an Azure TDX confidential VM the guest cannot request TD reports for its own
// REPORT_DATA: the paravisor (HCL) made one at boot with REPORT_DATA = hash of its runtime data, which names
// the vTPM attestation key, and stored both as an HCL report in vTPM NV index 0x01400001 (package azure).
// The TD report carries only a MAC of the platform; the guest obtains a signed quote for it from the
// instance metadata service. The evidence carries the HCL report, that quote and a quote of the vTPM bound
// to the verifier's nonce.

// ErrHCLReportData is returned when the TD report's REPORTDATA is not the hash of the HCL report's runtime
// data: the runtime data, and the attestation key in it, are not those the TD report vouches for.
var ErrHCLReportData = errors.New("the TD report does not bind the HCL report's runtime data")

// HCLReportSource provides the HCL report of the paravisor (an azure.NVReader on an Azure VM).
type HCLReportSource = azure.HCLReportSource

// TDQuoteSource turns a TD report into a quote (an azure.TDQuoteClient on an Azure VM). The quote may carry
// zero padding after it.
type TDQuoteSource interface {
	GetTDQuote(ctx context.Context, tdReport []byte) ([]byte, error)
}

// VTPM is the virtual TPM of a confidential VM, as the azure-tdx issuer uses it.
type VTPM interface {
	// AttestationKey returns the public part of the vTPM's attestation key.
	AttestationKey() crypto.PublicKey
	// Quote quotes the SHA-256 PCRs 0-23 with qualifyingData as the quote's qualifying data and returns
	// the quote, its signature, the PCR values it covers and the event log.
	Quote(ctx context.Context, qualifyingData []byte) (*attestation.TPMEvidence, error)
}

// HCLBinding is the result of [BindHCLReport]: the HCL report, its TD report, and the attestation key its
// runtime data names. Trust them only if the quote they were bound to verified.
type HCLBinding struct {
	HCL            *azure.HCLReport
	TDReport       *TDReportStruct
	AttestationKey *rsa.PublicKey
}

// BindHCLReport checks that q is the quote of the TD report in hclReport and that the TD report binds the
// HCL report's runtime data, and extracts the attestation key. In order: the HCL report parses strictly
// ([azure.ParseHCLReport]) and holds a TD report; the TD report parses ([ParseTDReport]); every field the
// quote carries equals the TD report's ([TDReportStruct.MatchQuote]); REPORTDATA is the hash of the runtime
// data of the header's hash type, zero-padded; the runtime data name one RSA attestation key. It verifies no
// signature: verify q first (Verify, or VerifySignatures for the parts without collateral).
func BindHCLReport(hclReport []byte, q *Quote) (*HCLBinding, error) {
	if q == nil {
		return nil, errors.New("binding an HCL report: no quote")
	}
	hcl, err := azure.ParseHCLReport(hclReport)
	if err != nil {
		return nil, err
	}
	if hcl.Type != azure.ReportTypeTDX {
		return nil, fmt.Errorf("%w: it holds a %v report, want %v", azure.ErrMalformedHCLReport, hcl.Type, azure.ReportTypeTDX)
	}
	td, err := ParseTDReport(hcl.HardwareReport)
	if err != nil {
		return nil, fmt.Errorf("the HCL report's TD report: %w", err)
	}
	if err := td.MatchQuote(q); err != nil {
		return nil, err
	}
	want, err := hcl.ReportData()
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(want[:], td.ReportData[:]) != 1 {
		return nil, fmt.Errorf("%w: its REPORTDATA is not the %v of the runtime data, so the runtime data or the attestation key in it were altered, or the hash type was changed", ErrHCLReportData, hcl.Hash)
	}
	ak, err := hcl.AttestationKey()
	if err != nil {
		return nil, err
	}
	return &HCLBinding{HCL: hcl, TDReport: td, AttestationKey: ak}, nil
}

// AzureIssuer produces azure-tdx evidence. It implements attestation.Issuer.
type AzureIssuer struct {
	hcl    HCLReportSource
	quotes TDQuoteSource
	tpm    VTPM
}

// NewAzureIssuer returns an issuer that reads the HCL report from hcl, obtains the quote of its TD report
// from quotes and quotes with tpm, whose attestation key must be the one the HCL report names
// ("HCLAkPub", the vTPM's persistent attestation key).
func NewAzureIssuer(hcl HCLReportSource, quotes TDQuoteSource, tpm VTPM) (*AzureIssuer, error) {
	if hcl == nil || quotes == nil || tpm == nil {
		return nil, errors.New("azure-tdx issuer: an HCL report source, a TD quote source and a vTPM are required")
	}
	return &AzureIssuer{hcl: hcl, quotes: quotes, tpm: tpm}, nil
}

// Variant returns attestation.AzureTDX.
func (i *AzureIssuer) Variant() attestation.Variant { return attestation.AzureTDX }

// Issue reads and checks the HCL report, obtains the quote of its TD report and a quote of the vTPM bound to
// nonce and userData, and returns the serialized evidence document. It refuses to issue evidence that no
// verifier would accept, and says why.
func (i *AzureIssuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	if i == nil || i.hcl == nil || i.quotes == nil || i.tpm == nil {
		return nil, errors.New("azure-tdx issuer not initialised; use NewAzureIssuer")
	}
	raw, hcl, err := azure.ReadForIssuing(ctx, i.hcl, azure.ReportTypeTDX, i.tpm.AttestationKey())
	if err != nil {
		return nil, err
	}
	td, err := ParseTDReport(hcl.HardwareReport)
	if err != nil {
		return nil, fmt.Errorf("the paravisor's TD report: %w", err)
	}
	want, err := hcl.ReportData()
	if err != nil {
		return nil, err
	}
	if td.ReportData != want {
		return nil, fmt.Errorf("the paravisor's TD report does not carry the %v of its runtime data as REPORTDATA; no verifier accepts it", hcl.Hash)
	}
	if td.Body.TDAttributes[0]&tdAttributesTUD != 0 {
		return nil, fmt.Errorf("this TD runs in debug mode (TD attributes %x): no verifier accepts its quotes", td.Body.TDAttributes)
	}
	padded, err := i.quotes.GetTDQuote(ctx, td.Raw())
	if err != nil {
		return nil, err
	}
	quote, err := TrimQuotePadding(padded)
	if err != nil {
		return nil, fmt.Errorf("the quote from the metadata service: %w", err)
	}
	q, err := ParseQuote(quote)
	if err != nil {
		return nil, fmt.Errorf("the quote from the metadata service: %w", err)
	}
	if err := td.MatchQuote(q); err != nil {
		return nil, fmt.Errorf("the metadata service returned a quote of another TD report: %w", err)
	}
	ev, err := attestation.QuoteBinding(ctx, i.tpm.Quote, attestation.AzureTDX, nonce, userData)
	if err != nil {
		return nil, err
	}
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  attestation.AzureTDX.Name,
		UserData: bytes.Clone(userData),
		TPM:      ev,
		TDX:      &attestation.TDXEvidence{Quote: bytes.Clone(quote), HCLReport: bytes.Clone(raw)},
	}
	return doc.Marshal()
}

// AzureValidator validates azure-tdx evidence. It implements attestation.Validator and is safe for
// concurrent use.
type AzureValidator struct {
	collateral *Collateral
	policy     *Policy
	pcrs       measurements.M
	now        func() time.Time
	log        *slog.Logger
	root       *x509.Certificate // nil: the embedded Intel SGX Root CA; tests set a test root
}

// NewAzureValidator returns a validator that verifies quotes with collateral at the time now returns (nil
// means time.Now), accepts them under policy (which must pass [Policy.ValidateForCluster]) and accepts the
// vTPM's PCR values under pcrs (which must not be empty).
func NewAzureValidator(collateral *Collateral, policy *Policy, pcrs measurements.M, now func() time.Time, log *slog.Logger) (*AzureValidator, error) {
	if collateral == nil || collateral.qeIdentity == nil {
		return nil, fmt.Errorf("%w: azure-tdx validator without collateral; load the collateral cache with LoadCollateral", ErrNoCollateral)
	}
	if err := policy.ValidateForCluster(); err != nil {
		return nil, err
	}
	if err := pcrs.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &AzureValidator{collateral: collateral, policy: policy.Clone(), pcrs: maps.Clone(pcrs), now: now, log: log}, nil
}

// Variant returns attestation.AzureTDX.
func (v *AzureValidator) Variant() attestation.Variant { return attestation.AzureTDX }

// Validate parses the evidence document and the quote; verifies the quote with the collateral (PCK chain to
// the embedded Intel root, revocation, QE report, signature, QE and TDX module identities, TCB level);
// checks that it is the quote of the HCL report's TD report and that this TD report binds the runtime data
// ([BindHCLReport]); checks the policy with REPORT_DATA = hash of the runtime data; then verifies the vTPM
// quote with the attestation key of the runtime data (signature, binding of nonce and user data, PCRs 0-23,
// event log, measurement policy). It returns the user data.
func (v *AzureValidator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if v == nil || v.collateral == nil || v.policy == nil || v.pcrs == nil || v.now == nil {
		return nil, errors.New("azure-tdx validator not initialised; use NewAzureValidator")
	}
	doc, err := attestation.OpenEvidence(attestation.AzureTDX, attestation.AKFromHCLReport, evidence, nonce)
	if err != nil {
		return nil, err
	}
	q, err := ParseQuote(doc.TDX.Quote)
	if err != nil {
		return nil, err
	}
	root := v.root
	if root == nil {
		root = mustIntelRoot()
	}
	verified, err := verify(q, v.collateral, root, v.now())
	if err != nil {
		if errors.Is(err, ErrNoCollateral) {
			return nil, fmt.Errorf("%s: %w; add Intel's collateral for this platform to the collateral directory (attestation.tdx.collateralDir) and reload it", attestation.AzureTDX, err)
		}
		return nil, err
	}
	bound, err := BindHCLReport(doc.TDX.HCLReport, q)
	if err != nil {
		return nil, err
	}
	if err := v.policy.WithReportData(bound.TDReport.ReportData).checkUnderParavisor(verified); err != nil {
		return nil, err
	}
	if err := vtpm.VerifyQuote(attestation.AzureTDX, doc.TPM, bound.AttestationKey, nonce, doc.UserData, v.pcrs, v.log); err != nil {
		return nil, fmt.Errorf("vTPM (attestation key bound by the TD report): %w", err)
	}
	return doc.UserData, nil
}
