package azure

import (
	"context"
	"crypto"
	"errors"
	"fmt"
)

// HCLReportSource provides the HCL report of the paravisor (an [NVReader] on an Azure VM).
type HCLReportSource interface {
	ReadHCLReport(ctx context.Context) ([]byte, error)
}

// ReadForIssuing reads the HCL report from src and checks what an issuer must before it issues evidence with
// it: it parses, holds a hardware report of type want, and names quotingKey, the key the vTPM quotes with, as
// its attestation key (HCLAkPub). It returns the raw and the parsed report; the hardware report and its binding
// of the runtime data are the caller's to check.
func ReadForIssuing(ctx context.Context, src HCLReportSource, want ReportType, quotingKey crypto.PublicKey) ([]byte, *HCLReport, error) {
	raw, err := src.ReadHCLReport(ctx)
	if err != nil {
		return nil, nil, err
	}
	hcl, err := ParseHCLReport(raw)
	if err != nil {
		return nil, nil, err
	}
	if hcl.Type != want {
		return nil, nil, fmt.Errorf("the paravisor's HCL report holds a %v report, not a %v report: this VM is of another kind (use azure-sev-snp on SEV-SNP VMs, azure-tdx on TDX VMs)", hcl.Type, want)
	}
	ak, err := hcl.AttestationKey()
	if err != nil {
		return nil, nil, err
	}
	if !ak.Equal(quotingKey) {
		return nil, nil, errors.New("the vTPM's attestation key is not the HCLAkPub key the paravisor's HCL report binds; quote with the vTPM's persistent attestation key")
	}
	return raw, hcl, nil
}
