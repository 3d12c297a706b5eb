package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// NVReader reads the HCL report from the vTPM NV index in which the Azure paravisor stores it
// ([NVIndexHCLReport]), with owner authorization (empty on Azure confidential VMs). It is safe for
// concurrent use; TPM commands are serialized.
type NVReader struct {
	mu  sync.Mutex
	tpm io.ReadWriter
}

// NewNVReader returns a reader of the HCL report of tpm.
func NewNVReader(tpm io.ReadWriter) *NVReader { return &NVReader{tpm: tpm} }

// ReadHCLReport returns the contents of the NV index, padding included.
func (r *NVReader) ReadHCLReport(context.Context) ([]byte, error) {
	if r == nil || r.tpm == nil {
		return nil, errors.New("HCL report reader: no TPM")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pub, err := tpm2.NVReadPublic(r.tpm, tpmutil.Handle(NVIndexHCLReport))
	if err != nil {
		return nil, fmt.Errorf("the vTPM has no HCL report at NV index 0x%08x (is this an Azure confidential VM with a paravisor?): %w", NVIndexHCLReport, err)
	}
	if int(pub.DataSize) > MaxHCLReportSize {
		return nil, fmt.Errorf("NV index 0x%08x holds %d bytes, more than an HCL report's limit of %d", NVIndexHCLReport, pub.DataSize, MaxHCLReportSize)
	}
	raw, err := tpm2.NVReadEx(r.tpm, tpmutil.Handle(NVIndexHCLReport), tpm2.HandleOwner, "", 0)
	if err != nil {
		return nil, fmt.Errorf("reading the HCL report from NV index 0x%08x: %w", NVIndexHCLReport, err)
	}
	return raw, nil
}
