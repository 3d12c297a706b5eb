package validators

import (
	"crypto/x509"
	"fmt"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/config"
)

// FromConfig returns the policy of the attestation section of a configuration that config.Load validated
// (its directories resolved): it reads the offline caches the section names (AMD CRLs, VCEK cache, Intel's
// collateral). akRoots are the attestation-key CA certificates of mini-vtpm; pass nil for other variants.
func FromConfig(a *config.Attestation, akRoots []*x509.Certificate) (*Policy, error) {
	if a == nil {
		return nil, policyErr("no attestation section")
	}
	p := &Policy{Variant: a.Variant, Measurements: maps.Clone(a.Measurements)}
	if a.Variant == attestation.MiniVTPM.Name {
		p.AKRoots = akRoots
	}
	if a.SNP != nil {
		p.SNP = &SNP{Policy: *a.SNP.Policy.Clone()}
		if a.SNP.CRLDir != "" {
			crls, err := snp.LoadCRLDir(a.SNP.CRLDir)
			if err != nil {
				return nil, fmt.Errorf("attestation.snp.crlDir: %w", err)
			}
			p.SNP.CRLs = crls
		}
		if a.SNP.VCEKCacheDir != "" {
			cache, err := snp.LoadVCEKCache(a.SNP.VCEKCacheDir)
			if err != nil {
				return nil, fmt.Errorf("attestation.snp.vcekCacheDir: %w", err)
			}
			p.SNP.VCEKCache = cache
		}
	}
	if a.TDX != nil {
		p.TDX = &TDX{Policy: *a.TDX.Policy.Clone()}
		if a.TDX.CollateralDir == "" {
			return nil, policyErr("attestation.tdx.collateralDir: not set; a verifier needs the offline cache of Intel's collateral")
		}
		files, err := tdx.ReadCollateralFiles(a.TDX.CollateralDir)
		if err != nil {
			return nil, fmt.Errorf("attestation.tdx.collateralDir: %w", err)
		}
		p.TDX.Collateral = *files
	}
	return p, nil
}
