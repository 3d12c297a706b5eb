package suite

import (
	"context"
	"os"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/tpmtest/reporttest"
)

func init() {
	register(Suite{Names: []string{"cluster-report-verify"}, Run: runClusterReportVerify})
}

// runClusterReportVerify measures the offline verification of a report of three nodes on one core, as
// verify-report does it: parse the report, verify the measurements bundle (signature, inclusion proof,
// checkpoint), rebuild the policy, and validate each node's evidence (a swtpm quote with its AK certificate
// chain and event log) for its derived nonce. The log that signed the measurements is stopped first.
func runClusterReportVerify(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-report-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	c, err := reporttest.Start(ctx, dir, 2)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.StopLog()
	r, err := c.Report(ctx, reporttest.NewSeed(), time.Now())
	if err != nil {
		return nil, err
	}
	raw, err := r.Marshal()
	if err != nil {
		return nil, err
	}
	verify := func() error {
		r, err := clusterreport.Parse(raw)
		if err != nil {
			return err
		}
		_, err = clusterreport.Verify(ctx, r, c.RootJSON, clusterreport.VerifyOptions{AllowDevelopment: true})
		return err
	}
	rate, err := perSecondOneCore(verify)
	if err != nil {
		return nil, err
	}
	return []Result{{"cluster-report-verify", 1000 / rate, "ms"}}, nil
}
