package suite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/tdx"
)

func init() {
	register(Suite{Names: []string{"azure-tdx-validate"}, Run: runAzureTDXValidate})
}

// azureTDXBenchTime lies in the validity of the genuine Azure TDX quote's PCK certificate.
var azureTDXBenchTime = time.Date(2024, time.June, 1, 0, 0, 0, 0, time.UTC)

// runAzureTDXValidate measures checks per second of the genuine Azure TDX recording on one core: trimming
// the metadata service's padding, parsing the quote, the PCK chain to the embedded Intel root, the QE report
// and quote signatures, the HCL report's structure, the TD report and its match with the quote, REPORTDATA =
// SHA-256 of the runtime data and the attestation key. No Intel collateral of the recording's platform is
// public, so the collateral checks (revocation, identities, TCB level; see tdx-verify) and the vTPM quote (see
// attestation-validate) are not part of the figure.
func runAzureTDXValidate(context.Context) ([]Result, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(AzureTestdata, name)) }
	hcl, err := read("hcl-report-tdx.bin")
	if err != nil {
		return nil, fmt.Errorf("reading the genuine Azure TDX HCL report (run from the repository root): %w", err)
	}
	padded, err := read("tdx-quote-imds.bin")
	if err != nil {
		return nil, err
	}
	rate, err := perSecondOneCore(func() error {
		raw, err := tdx.TrimQuotePadding(padded)
		if err != nil {
			return err
		}
		q, err := tdx.ParseQuote(raw)
		if err != nil {
			return err
		}
		if _, err := tdx.VerifySignatures(q, azureTDXBenchTime); err != nil {
			return err
		}
		_, err = tdx.BindHCLReport(hcl, q)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{{"azure-tdx-validate", rate, "checks/s"}}, nil
}
