package tdx_test

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/tdx"
)

// Verify a raw quote offline: load the collateral directory, parse, verify at the caller's time, then
// check the policy with the REPORT_DATA expected for this verification.
func Example() {
	raw, err := os.ReadFile("testdata/tdx_prod_quote_SPR_E4.dat")
	if err != nil {
		panic(err)
	}
	raw = raw[:4935] // the file carries a test suffix after the quote

	collateral, err := tdx.LoadCollateral("testdata/collateral")
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
