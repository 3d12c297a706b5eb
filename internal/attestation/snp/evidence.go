package snp

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// Issuer produces qemu-sev-snp evidence: a report whose REPORT_DATA is [ReportDataForNonce] of the verifier's
// nonce and the caller's user data, with the certificate table the host attached to it. It implements
// attestation.Issuer.
type Issuer struct {
	reporter Reporter
}

// NewIssuer returns an issuer that obtains reports from reporter (a [ConfigFSReporter] or a
// [DeviceReporter]).
func NewIssuer(reporter Reporter) *Issuer { return &Issuer{reporter: reporter} }

// Variant returns attestation.QEMUSEVSNP.
func (i *Issuer) Variant() attestation.Variant { return attestation.QEMUSEVSNP }

// Issue obtains a report bound to nonce and userData and returns the serialized evidence document.
func (i *Issuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	if i == nil || i.reporter == nil {
		return nil, errors.New("SNP issuer: no reporter")
	}
	ev, err := obtainReport(ctx, i.reporter, ReportDataForNonce(attestation.QEMUSEVSNP, nonce, userData), false)
	if err != nil {
		return nil, err
	}
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  attestation.QEMUSEVSNP.Name,
		UserData: bytes.Clone(userData),
		SNP:      ev,
	}
	return doc.Marshal()
}

// obtainReport requests a report with reportData and checks it before it leaves the guest: it parses
// strictly, carries reportData, comes from a guest that cannot be debugged, and has a parsable certificate
// table. Evidence that no verifier accepts fails here, where the cause is visible.
//
// Without a certificate table the report is refused unless certsOptional: on GCP the host attaches none, and
// verifiers take the VCEK from their offline cache.
func obtainReport(ctx context.Context, reporter Reporter, reportData [ReportDataSize]byte, certsOptional bool) (*attestation.SNPEvidence, error) {
	ev, err := reporter.Report(ctx, reportData)
	if err != nil {
		return nil, fmt.Errorf("obtaining an SEV-SNP report: %w", err)
	}
	report, err := ParseReport(ev.Report)
	if err != nil {
		return nil, fmt.Errorf("the reporter returned an unusable report: %w", err)
	}
	if report.ReportData != reportData {
		return nil, errors.New("the reporter returned a report for other REPORT_DATA")
	}
	if report.Policy.Debug() {
		return nil, fmt.Errorf("this guest was launched with a policy that allows debugging (guest policy 0x%x): no verifier accepts its reports", uint64(report.Policy))
	}
	if len(ev.CertTable) == 0 && certsOptional {
		return &attestation.SNPEvidence{Report: bytes.Clone(ev.Report)}, nil
	}
	if len(ev.CertTable) == 0 {
		return nil, errors.New("the host attached no certificate table to the report, so a verifier cannot check its signature; configure the host's SEV-SNP certificates (VCEK, ASK, ARK) for extended reports")
	}
	if _, err := ParseCertTable(ev.CertTable); err != nil {
		return nil, fmt.Errorf("the host's certificate table: %w", err)
	}
	return &attestation.SNPEvidence{Report: bytes.Clone(ev.Report), CertTable: bytes.Clone(ev.CertTable)}, nil
}

// Validator validates qemu-sev-snp evidence. It implements attestation.Validator and is safe for concurrent
// use.
type Validator struct {
	verifier *Verifier
	policy   *Policy
}

// NewValidator returns a validator that verifies reports with verifier and accepts them under policy. The
// policy must pass [Policy.ValidateForCluster]: the validator sets the expected REPORT_DATA itself for every
// request.
func NewValidator(verifier *Verifier, policy *Policy) (*Validator, error) {
	if verifier == nil {
		return nil, errors.New("SNP validator: no verifier")
	}
	if err := policy.ValidateForCluster(); err != nil {
		return nil, err
	}
	return &Validator{verifier: verifier, policy: policy.Clone()}, nil
}

// Variant returns attestation.QEMUSEVSNP.
func (v *Validator) Variant() attestation.Variant { return attestation.QEMUSEVSNP }

// Validate parses the evidence document, verifies the report (certificate chain to the embedded AMD root,
// revocation, signature), checks it against the policy with REPORT_DATA = ReportDataForNonce(nonce, user data),
// and returns the user data.
func (v *Validator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if v == nil || v.verifier == nil || v.policy == nil {
		return nil, errors.New("SNP validator not initialised; use NewValidator")
	}
	doc, err := attestation.OpenEvidence(attestation.QEMUSEVSNP, attestation.NoTPM, evidence, nonce)
	if err != nil {
		return nil, err
	}
	certs, err := evidenceCertificates(doc.SNP, v.verifier.vcekCache != nil)
	if err != nil {
		return nil, err
	}
	want := ReportDataForNonce(attestation.QEMUSEVSNP, nonce, doc.UserData)
	if _, err := Validate(v.verifier, v.policy.WithReportData(want), doc.SNP.Report, certs); err != nil {
		return nil, err
	}
	return doc.UserData, nil
}

// evidenceCertificates parses the certificates of an SNP evidence part: its certificate table, its
// certificate chain, or both (then no role may appear twice). Evidence without certificates is an error
// unless vcekCache says that the verifier can look up the VCEK in its offline cache.
func evidenceCertificates(ev *attestation.SNPEvidence, vcekCache bool) (*Certificates, error) {
	if len(ev.CertTable) == 0 && len(ev.CertChain) == 0 {
		if vcekCache {
			return &Certificates{}, nil
		}
		return nil, fmt.Errorf("%w: the evidence carries no certificate table and no certificate chain, so the report's signing key is unknown", ErrMissingCertificate)
	}
	certs := &Certificates{}
	if len(ev.CertTable) > 0 {
		t, err := ParseCertTable(ev.CertTable)
		if err != nil {
			return nil, err
		}
		certs = t
	}
	if len(ev.CertChain) > 0 {
		c, err := ParseCertificates(ev.CertChain)
		if err != nil {
			return nil, err
		}
		if err := certs.Merge(c); err != nil {
			return nil, err
		}
	}
	return certs, nil
}
