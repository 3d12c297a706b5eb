package suite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/azure"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
)

func init() {
	register(Suite{Names: []string{"azure-snp-validate"}, Run: runAzureSNPValidate})
}

// AzureTestdata holds the genuine Azure HCL report and its VCEK chain, relative to the repository root.
var AzureTestdata = "internal/attestation/azure/testdata"

// runAzureSNPValidate measures verifications per second of the genuine Azure HCL report on one core: the
// PEM chain as the metadata service serves it, the HCL report's structure, the chain to the embedded AMD
// root, the ECDSA P-384 signature, the policy with REPORT_DATA = SHA-256 of the runtime data and Azure's ID
// key digest, and the attestation key from the runtime data. The recording has no vTPM quote; verifying
// one is the smaller part of a validation (see attestation-validate).
func runAzureSNPValidate(context.Context) ([]Result, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(AzureTestdata, name)) }
	raw, err := read("hcl-report-snp.bin")
	if err != nil {
		return nil, fmt.Errorf("reading the genuine HCL report (run from the repository root): %w", err)
	}
	vcek, err := read("vcek.pem")
	if err != nil {
		return nil, err
	}
	chain, err := read("thim-chain.pem")
	if err != nil {
		return nil, err
	}
	pem := append(vcek, chain...)
	hcl, err := azure.ParseHCLReport(raw)
	if err != nil {
		return nil, err
	}
	report, err := snp.ParseReport(hcl.HardwareReport)
	if err != nil {
		return nil, err
	}
	policy := &snp.Policy{
		Measurements:    []snp.HexBytes{report.Measurement[:]},
		MinimumTCB:      map[snp.Product]snp.TCB{snp.Milan: {Bootloader: 2, SNP: 6, Microcode: 93}},
		AllowSMT:        true,
		AllowMissingCRL: true,
		IDKeyDigests:    []snp.HexBytes{report.IDKeyDigest[:]},
	}
	verifier, err := snp.NewVerifier(snp.VerifierOptions{Now: func() time.Time { return snpBenchTime }})
	if err != nil {
		return nil, err
	}
	rate, err := perSecondOneCore(func() error {
		certs, err := snp.ParseCertificates(pem)
		if err != nil {
			return err
		}
		_, err = snp.VerifyHCLReport(verifier, policy, raw, nil, certs)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{{"azure-snp-validate", rate, "validations/s"}}, nil
}
