package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

// Variant returns attestation.QEMUTDX: as an attestation.Issuer, the issuer produces qemu-tdx evidence.
func (i *Issuer) Variant() attestation.Variant { return attestation.QEMUTDX }

// Issue obtains a quote whose REPORT_DATA is ReportDataForNonce(qemu-tdx, nonce, userData) and returns the
// serialized evidence document. It implements attestation.Issuer.
func (i *Issuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	if i == nil || i.provider == nil {
		return nil, errors.New("TDX issuer: no quote provider")
	}
	quote, err := i.Quote(ctx, ReportDataForNonce(attestation.QEMUTDX, nonce, userData))
	if err != nil {
		return nil, err
	}
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  attestation.QEMUTDX.Name,
		UserData: bytes.Clone(userData),
		TDX:      &attestation.TDXEvidence{Quote: quote},
	}
	return doc.Marshal()
}

// Validator validates qemu-tdx evidence against Intel's collateral from an offline cache and a policy. It
// implements attestation.Validator and is safe for concurrent use.
type Validator struct {
	collateral *Collateral
	policy     *Policy
	now        func() time.Time
	root       *x509.Certificate // nil: the embedded Intel SGX Root CA; tests set a test root
}

// NewValidator returns a validator that verifies quotes with collateral at the time now returns (nil means
// time.Now) and accepts them under policy. The policy must pass Policy.ValidateForClusterWithoutVTPM (RTMR0
// to RTMR3 set, no ReportData): the validator sets
// the expected REPORT_DATA itself for every request. Collateral has an expiry: once its next update is
// past, every validation fails until the collateral cache is refreshed.
func NewValidator(collateral *Collateral, policy *Policy, now func() time.Time) (*Validator, error) {
	if collateral == nil || collateral.qeIdentity == nil {
		return nil, fmt.Errorf("%w: TDX validator without collateral; load the collateral cache with LoadCollateral", ErrNoCollateral)
	}
	if err := policy.ValidateForClusterWithoutVTPM(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &Validator{collateral: collateral, policy: policy.Clone(), now: now}, nil
}

// Variant returns attestation.QEMUTDX.
func (v *Validator) Variant() attestation.Variant { return attestation.QEMUTDX }

// Validate parses the evidence document and the quote, verifies the quote with the collateral (PCK chain
// to the embedded Intel root, revocation, QE report, signature, TCB level), checks it against the policy
// with REPORT_DATA = ReportDataForNonce(qemu-tdx, nonce, user data), and returns the user data.
func (v *Validator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if v == nil || v.collateral == nil || v.policy == nil || v.now == nil {
		return nil, errors.New("TDX validator not initialised; use NewValidator")
	}
	doc, err := attestation.OpenEvidence(attestation.QEMUTDX, attestation.NoTPM, evidence, nonce)
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
		return nil, err
	}
	if err := v.policy.WithReportData(ReportDataForNonce(attestation.QEMUTDX, nonce, doc.UserData)).Check(verified); err != nil {
		return nil, err
	}
	return doc.UserData, nil
}

// NewVTPMValidator is the constructor of validators for TDX variants that combine the quote with a vTPM
// quote: for azure-tdx, it returns NewAzureValidator(collateral, policy, pcrs, now, log).
func NewVTPMValidator(variant attestation.Variant, collateral *Collateral, policy *Policy, pcrs measurements.M, now func() time.Time, log *slog.Logger) (attestation.Validator, error) {
	if variant.Name != attestation.AzureTDX.Name {
		return nil, fmt.Errorf("variant %q is not a TDX variant with a vTPM (the only one is %s)", variant.Name, attestation.AzureTDX)
	}
	return NewAzureValidator(collateral, policy, pcrs, now, log)
}
