package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
)

// This file holds `attestation fetch-vcek`, which fills the offline VCEK cache that verifiers use for
// SEV-SNP evidence without a VCEK certificate.

type fetchVCEKFlags struct {
	report, cache, kdsURL, product, at string
	timeout                            time.Duration
}

func newAttestationFetchVCEKCmd() *cobra.Command {
	var f fetchVCEKFlags
	cmd := &cobra.Command{
		Use:   "fetch-vcek --report FILE --cache DIR [--kds-url URL] [--product NAME]",
		Short: "Fetch the VCEK of an SEV-SNP report into the offline VCEK cache",
		Long: "Fetch the VCEK certificate that signed an SEV-SNP report from AMD's key distribution service (or a\n" +
			"compatible one, --kds-url) and store it in the offline VCEK cache, where verifiers look it up when\n" +
			"evidence carries no VCEK (verify-report --vcek-cache, attestation.snp.vcekCacheDir). The certificate is\n" +
			"written only after it verified: it must chain to the AMD root embedded in this binary, match the\n" +
			"report's chip ID and TCB, and verify the report's signature. An entry that verifies already is kept\n" +
			"without a request. --report is a raw report (1184 bytes) or an evidence document.\n" +
			"Exit code 0: the cache holds the verified VCEK. 1: the service has no such VCEK, cannot be reached, or\n" +
			"sent a certificate that does not verify (nothing is written). 2: an input is unusable.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runFetchVCEK(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.report, "report", "", "SEV-SNP report (raw, 1184 bytes) or evidence document (required)")
	fl.StringVar(&f.cache, "cache", "", "VCEK cache directory, created if missing (required)")
	fl.StringVar(&f.kdsURL, "kds-url", snp.DefaultKDSURL, "base URL of the key distribution service")
	fl.StringVar(&f.product, "product", "", "Milan, Genoa or Turin (default: the report's CPUID; for a version 2 report Milan, then Genoa)")
	fl.StringVar(&f.at, "time", "", "time at which the certificates must be valid, RFC 3339 or YYYY-MM-DD (default now)")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Second, "timeout of the request")
	_ = cmd.MarkFlagRequired("report")
	_ = cmd.MarkFlagRequired("cache")
	return cmd
}

func runFetchVCEK(cmd *cobra.Command, f fetchVCEKFlags) error {
	now, err := timeFlag(f.at)
	if err != nil {
		return err
	}
	product := snp.ProductUnknown
	if f.product != "" {
		p, err := snp.ParseProduct(f.product)
		if err != nil {
			return badInput("--product: %w", err)
		}
		product = p
	}
	if f.timeout <= 0 {
		return badInput("--timeout must be positive, got %v", f.timeout)
	}
	if err := snp.CheckKDSURL(f.kdsURL); err != nil {
		return badInput("--kds-url: %w", err)
	}
	raw, err := readFile(f.report, "SEV-SNP report")
	if err != nil {
		return err
	}
	report, err := reportFromFile(f.report, raw)
	if err != nil {
		return err
	}
	keys, err := snp.VCEKKeys(report, product)
	if err != nil {
		return badInput("%s: %w", f.report, err)
	}
	if err := os.MkdirAll(f.cache, 0o755); err != nil {
		return badInput("--cache: %w", err)
	}
	cache, err := snp.LoadVCEKCache(f.cache)
	if err != nil {
		return badInput("--cache: %w", err)
	}
	verifier, err := snp.NewVerifier(snp.VerifierOptions{Now: func() time.Time { return now }})
	if err != nil {
		return failed(err)
	}
	w := cmd.OutOrStdout()

	// An entry that verifies the report already is kept.
	for _, k := range keys {
		cert, err := cache.Lookup(k)
		if err != nil {
			continue
		}
		if v, err := verifier.Verify(report, &snp.Certificates{VCEK: cert}); err == nil && v.Product == k.Product {
			fmt.Fprintf(w, "The VCEK of %s is in the cache already and verifies the report: %s\n", k, cache.Path(k))
			return nil
		}
	}

	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	k, _, err := cache.Fetch(ctx, verifier, report, snp.FetchOptions{KDSURL: f.kdsURL, Product: product})
	switch {
	case errors.Is(err, snp.ErrMalformedCertificates), errors.Is(err, snp.ErrChain), errors.Is(err, snp.ErrSignature), errors.Is(err, snp.ErrRevoked):
		return checkFailed(fmt.Errorf("fetching the VCEK: %w", err))
	case err != nil:
		return failed(fmt.Errorf("fetching the VCEK: %w", err))
	}
	fmt.Fprintf(w, "Fetched the VCEK of %s from %s,\nverified it against the embedded AMD %s root and the report, and stored it in %s\n", k, f.kdsURL, k.Product, cache.Path(k))
	return nil
}

// reportFromFile parses a raw SEV-SNP report or the report of an evidence document.
func reportFromFile(path string, raw []byte) (*snp.Report, error) {
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		doc, err := attestation.ParseDocument(raw)
		if err != nil {
			return nil, badInput("%s: %w", path, err)
		}
		if doc.SNP == nil {
			return nil, badInput("%s: evidence of variant %s has no SEV-SNP report", path, doc.Variant)
		}
		raw = doc.SNP.Report
	}
	r, err := snp.ParseReport(raw)
	if err != nil {
		return nil, badInput("%s: %w", path, err)
	}
	return r, nil
}
