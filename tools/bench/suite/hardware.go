package suite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
)

func init() {
	register(Suite{Names: []string{"snp-validate"}, Run: runSNPValidate})
	register(Suite{Names: []string{"tdx-verify"}, Run: runTDXVerify})
}

// SNPTestdata holds the genuine SEV-SNP test vectors the hardware figures use, relative to the repository
// root (where `make bench` runs). The TDX ones are embedded in package tdxtest.
var SNPTestdata = "internal/attestation/snp/testdata"

// Verification times inside the validity of the recorded certificates and collateral.
var (
	snpBenchTime = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	tdxBenchTime = tdxtest.Time
)

// perSecondOneCore runs fn as a Go benchmark on one core and returns its rate.
func perSecondOneCore(fn func() error) (float64, error) {
	if err := fn(); err != nil {
		return 0, err
	}
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	var ferr error
	res := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			if err := fn(); err != nil {
				ferr = err
				b.FailNow()
			}
		}
	})
	if ferr != nil {
		return 0, ferr
	}
	return float64(time.Second) / float64(res.NsPerOp()), nil
}

// runSNPValidate measures full validations per second of the genuine Milan report on one core: certificate
// table and report parsing, the chain to the embedded AMD root, the ECDSA P-384 signature and the policy.
func runSNPValidate(context.Context) ([]Result, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(SNPTestdata, name)) }
	raw, err := read("attestation.bin")
	if err != nil {
		return nil, fmt.Errorf("reading the genuine SEV-SNP report (run from the repository root): %w", err)
	}
	certs := &snp.Certificates{}
	for _, name := range []string{"vcek.testcer", "milan.testcer"} {
		data, err := read(name)
		if err != nil {
			return nil, err
		}
		c, err := snp.ParseCertificates(data)
		if err != nil {
			return nil, err
		}
		if err := certs.Merge(c); err != nil {
			return nil, err
		}
	}
	table := snp.MarshalCertTable(certs)
	report, err := snp.ParseReport(raw)
	if err != nil {
		return nil, err
	}
	// The recorded guest is debuggable, runs with SMT and comes without a CRL: the policy allows that.
	policy := &snp.Policy{
		ReportData:   report.ReportData[:],
		Measurements: []snp.HexBytes{report.Measurement[:]},
		MinimumTCB:   map[snp.Product]snp.TCB{snp.Milan: {Bootloader: 2, SNP: 5, Microcode: 68}},
		AllowDebug:   true, AllowSMT: true, AllowMissingCRL: true,
	}
	verifier, err := snp.NewVerifier(snp.VerifierOptions{Now: func() time.Time { return snpBenchTime }})
	if err != nil {
		return nil, err
	}
	rate, err := perSecondOneCore(func() error {
		c, err := snp.ParseCertTable(table)
		if err != nil {
			return err
		}
		_, err = snp.Validate(verifier, policy, raw, c)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{{"snp-validate", rate, "validations/s"}}, nil
}

// runTDXVerify measures verifications per second of the genuine TDX quote on one core with the recorded
// collateral: quote parsing, the PCK chain to the embedded Intel root, the CRLs, the TCB info and QE identity
// signatures, the QE report and quote signatures, and the TCB level. (The policy step is left out: this
// quote's TCB status under its collateral is NotSupported, which no policy accepts.)
func runTDXVerify(context.Context) ([]Result, error) {
	raw := tdxtest.Quote()
	collateral, err := tdx.ParseCollateral(tdx.CollateralFiles{
		TCBInfos:        [][]byte{tdxtest.Collateral(tdxtest.TCBInfoFile)},
		QEIdentity:      tdxtest.Collateral(tdx.FileQEIdentity),
		TCBSigningChain: tdxtest.Collateral(tdx.FileTCBSigningChain),
		RootCACRL:       tdxtest.Collateral(tdx.FileRootCACRL),
		PCKPlatformCRL:  tdxtest.Collateral(tdx.FilePCKPlatformCRL),
	})
	if err != nil {
		return nil, fmt.Errorf("the genuine TDX collateral: %w", err)
	}
	rate, err := perSecondOneCore(func() error {
		q, err := tdx.ParseQuote(raw)
		if err != nil {
			return err
		}
		_, err = tdx.Verify(q, collateral, tdxBenchTime)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{{"tdx-verify", rate, "verifications/s"}}, nil
}
