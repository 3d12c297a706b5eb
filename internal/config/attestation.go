package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// Policy returns the attestation policy of a section that Load or LoadAttestation validated (its directories
// resolved), for validators.New: it reads the offline caches the section names (AMD CRLs, VCEK cache, Intel's
// collateral). akRoots are the attestation-key CA certificates of mini-vtpm and qemu-vtpm; pass nil for other
// variants.
func (a *Attestation) Policy(akRoots []*x509.Certificate) (*validators.Policy, error) {
	if a == nil {
		return nil, fmt.Errorf("%w: no attestation section", validators.ErrPolicy)
	}
	p := &validators.Policy{Variant: a.Variant, Measurements: maps.Clone(a.Measurements)}
	if v, err := attestation.VariantByName(a.Variant); err == nil && vtpm.ProviderCertified(v) {
		p.AKRoots = akRoots
	}
	if a.SNP != nil {
		p.SNP = &validators.SNP{Policy: *a.SNP.Policy.Clone()}
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
		p.TDX = &validators.TDX{Policy: *a.TDX.Policy.Clone()}
		if a.TDX.CollateralDir == "" {
			return nil, fmt.Errorf("%w: attestation.tdx.collateralDir: not set; a verifier needs the offline cache of Intel's collateral", validators.ErrPolicy)
		}
		files, err := tdx.ReadCollateralFiles(a.TDX.CollateralDir)
		if err != nil {
			return nil, fmt.Errorf("attestation.tdx.collateralDir: %w", err)
		}
		p.TDX.Collateral = *files
	}
	return p, nil
}

// problems lists every problem of the attestation section, for the configured provider.
func (a *Attestation) problems(provider Provider) []string {
	var p []string
	variant, err := attestation.VariantByName(a.Variant)
	if err != nil {
		p = append(p, "attestation.variant: "+err.Error())
	} else if provider.Mini != nil && variant.Name != attestation.MiniVTPM.Name {
		p = append(p, fmt.Sprintf("attestation.variant: the mini provider runs only %s (its nodes are local sandboxes with software TPMs, without SEV-SNP or TDX); %s needs nodes on confidential hardware", attestation.MiniVTPM, variant))
	}
	if provider.QEMU != nil && err == nil {
		switch snpMachines := provider.QEMU.Confidential == ConfidentialSEVSNP; {
		case snpMachines && variant.Name != attestation.QEMUSEVSNP.Name:
			p = append(p, fmt.Sprintf("attestation.variant: the qemu provider's SEV-SNP machines (confidential: sev-snp) present %s evidence (an SEV-SNP report, no TPM), not %s; set attestation.variant: %s", attestation.QEMUSEVSNP, variant, attestation.QEMUSEVSNP))
		case !snpMachines && variant.Name != attestation.QEMUVTPM.Name:
			p = append(p, fmt.Sprintf("attestation.variant: the qemu provider's machines present only %s evidence (UEFI firmware, a software TPM each, no SEV-SNP or TDX), not %s; set attestation.variant: %s (or confidential: sev-snp on an SEV-SNP host)", attestation.QEMUVTPM, variant, attestation.QEMUVTPM))
		}
	}
	known := err == nil
	switch {
	case known && variant.VTPM:
		if err := a.Measurements.ValidateScheme(vtpm.ImageScheme(variant)); err != nil {
			p = append(p, "attestation.measurements: "+err.Error())
		}
	case !known:
		if err := a.Measurements.Validate(); err != nil {
			p = append(p, "attestation.measurements: "+err.Error())
		}
	case len(a.Measurements) > 0:
		p = append(p, fmt.Sprintf("attestation.measurements: %s has no vTPM, so PCR measurements do not apply; remove them and put the launch measurement into attestation.%s", variant, sectionOf(variant.Hardware)))
	}
	if !known {
		// The hardware sections are checked on their own, without knowing which one the variant needs.
		if a.SNP != nil {
			p = append(p, a.SNP.problems()...)
		}
		if a.TDX != nil {
			p = append(p, a.TDX.problems(true)...)
		}
		return p
	}
	switch {
	case variant.Hardware == attestation.SEVSNP && a.SNP == nil:
		p = append(p, fmt.Sprintf("attestation.snp: %s needs an SEV-SNP policy (at least measurements and minimumTCB)", variant))
	case variant.Hardware == attestation.SEVSNP:
		p = append(p, a.SNP.problems()...)
		if variant.Name == attestation.QEMUSEVSNP.Name && a.SNP.HostData != nil {
			p = append(p, fmt.Sprintf("attestation.snp.hostData: on %s, HOST_DATA names each node (the provider launches every machine with its own, and the validator checks it against the node's name), so one fixed value would refuse every node but one; remove it", variant))
		}
	case a.SNP != nil:
		p = append(p, fmt.Sprintf("attestation.snp: set, but %s evidence has no SEV-SNP report; remove it", variant))
	}
	switch {
	case variant.Hardware == attestation.TDX && a.TDX == nil:
		p = append(p, fmt.Sprintf("attestation.tdx: %s needs a TDX policy (at least mrtd) and collateralDir", variant))
	case variant.Hardware == attestation.TDX:
		p = append(p, a.TDX.problems(variant.VTPM)...)
	case a.TDX != nil:
		p = append(p, fmt.Sprintf("attestation.tdx: set, but %s evidence has no TDX quote; remove it", variant))
	}
	return p
}

func sectionOf(h attestation.Hardware) string {
	if h == attestation.TDX {
		return "tdx.mrtd"
	}
	return "snp.measurements"
}

func (s *SNP) problems() []string {
	var p []string
	p = append(p, policyProblems("attestation.snp", s.Policy.ValidateForCluster())...)
	if s.CRLDir == "" && !s.AllowMissingCRL {
		p = append(p, "attestation.snp.crlDir: no CRL cache and allowMissingCRL is false, so every report would be refused; set crlDir to the offline cache of AMD CRLs")
	}
	for _, d := range []struct{ name, path string }{{"crlDir", s.CRLDir}, {"vcekCacheDir", s.VCEKCacheDir}} {
		if problem := dirProblem(d.path); problem != "" {
			p = append(p, "attestation.snp."+d.name+": "+problem)
		}
	}
	if s.CRLDir != "" && s.VCEKCacheDir != "" && filepath.Clean(s.CRLDir) == filepath.Clean(s.VCEKCacheDir) {
		p = append(p, "attestation.snp.vcekCacheDir: the same directory as crlDir; give the VCEK cache a directory of its own, so that neither cache's files are mistaken for the other's")
	}
	return p
}

// dirProblem says what is wrong with a configured cache directory path, or returns "" (an empty path is
// unset, which the caller judges).
func dirProblem(path string) string {
	switch {
	case path == "":
		return ""
	case strings.TrimSpace(path) != path:
		return fmt.Sprintf("%q has leading or trailing white space; remove it", path)
	case strings.ContainsRune(path, 0):
		return "contains a NUL byte; give a directory path"
	}
	return ""
}

// problems lists the problems of the TDX section; a variant without a vTPM (qemu-tdx) needs rtmr0 to rtmr3.
func (t *TDX) problems(withVTPM bool) []string {
	validate := t.Policy.ValidateForCluster
	if !withVTPM {
		validate = t.Policy.ValidateForClusterWithoutVTPM
	}
	p := policyProblems("attestation.tdx", validate())
	if t.CollateralDir == "" {
		p = append(p, "attestation.tdx.collateralDir: not set; a verifier needs the offline cache of Intel's collateral (TCB info, QE identity, CRLs, TCB signing chain)")
	}
	return p
}

// policyProblems returns one line per problem of a policy error.
func policyProblems(section string, err error) []string {
	if err == nil {
		return nil
	}
	var list []string
	var snpErr *snp.InvalidPolicyError
	var tdxErr *tdx.InvalidPolicyError
	switch {
	case errors.As(err, &snpErr):
		list = snpErr.Problems
	case errors.As(err, &tdxErr):
		list = tdxErr.Problems
	default:
		list = []string{err.Error()}
	}
	out := make([]string, len(list))
	for i, problem := range list {
		out[i] = section + ": " + problem
	}
	return out
}

// resolve makes the cache directories absolute, relative to dir (the configuration file's directory).
func (a *Attestation) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if a.SNP != nil {
		abs(&a.SNP.CRLDir)
		abs(&a.SNP.VCEKCacheDir)
	}
	if a.TDX != nil {
		abs(&a.TDX.CollateralDir)
	}
}

// SNPPolicy returns a copy of the SEV-SNP policy, for the validators of an SEV-SNP variant.
func (a *Attestation) SNPPolicy() (*snp.Policy, error) {
	if a.SNP == nil {
		return nil, errors.New("attestation.snp: no SEV-SNP policy configured")
	}
	p := a.SNP.Policy
	return &p, nil
}

// TDXPolicy returns a copy of the TDX policy, for the validators of a TDX variant.
func (a *Attestation) TDXPolicy() (*tdx.Policy, error) {
	if a.TDX == nil {
		return nil, errors.New("attestation.tdx: no TDX policy configured")
	}
	p := a.TDX.Policy
	return &p, nil
}
