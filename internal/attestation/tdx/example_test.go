package tdx_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
)

// Verify a raw quote offline: parse Intel's collateral (LoadCollateral reads it from a directory), parse
// the quote, verify at the caller's time, then check the policy with the REPORT_DATA expected for this
// verification.
func Example() {
	raw := tdxtest.Quote()
	collateral, err := tdx.ParseCollateral(tdx.CollateralFiles{
		TCBInfos:        [][]byte{tdxtest.Collateral(tdxtest.TCBInfoFile)},
		QEIdentity:      tdxtest.Collateral(tdx.FileQEIdentity),
		TCBSigningChain: tdxtest.Collateral(tdx.FileTCBSigningChain),
		RootCACRL:       tdxtest.Collateral(tdx.FileRootCACRL),
		PCKPlatformCRL:  tdxtest.Collateral(tdx.FilePCKPlatformCRL),
	})
	if err != nil {
		panic(err)
	}
	quote, err := tdx.ParseQuote(raw)
	if err != nil {
		panic(err)
	}
	// A time inside the validity of this (old) collateral; a verifier passes its clock.
	now := time.Date(2023, time.July, 1, 0, 0, 0, 0, time.UTC)
	v, err := tdx.Verify(quote, collateral, now)
	if err != nil {
		panic(err)
	}
	fmt.Println("FMSPC:", fmt.Sprintf("%x", v.PCK.FMSPC), "TCB status:", v.TCB.Status, "QE:", v.TCB.QE)

	// In a real verifier, the expected REPORT_DATA comes from the nonce it chose (tdx.ReportDataForNonce).
	policy := (&tdx.Policy{MRTD: []tdx.HexBytes{quote.Body.MRTD[:]}}).WithReportData(quote.Body.ReportData)
	err = policy.Check(v)
	fmt.Println("accepted:", err == nil, "policy violation:", errors.Is(err, tdx.ErrPolicy))
	// Output:
	// FMSPC: 50806f000000 TCB status: NotSupported QE: UpToDate
	// accepted: false policy violation: true
}
