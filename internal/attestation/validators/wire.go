package validators

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// The wire form of a policy (the attestation file of the join configuration, InitRequest.attestation) names the
// variant and carries its hardware policy with the offline material the verifier checks with, since it fetches
// nothing:
//
//	{
//	  "version": 1,
//	  "variant": "aws-sev-snp",
//	  "snp": {"policy": {<snp.Policy without reportData>}, "crls": {"Milan": ["<base64 DER or PEM CRL>", ...]}},
//	  "tdx": {"policy": {<tdx.Policy without reportData>}, "collateral": {"tcbInfos": ["<base64>", ...],
//	          "qeIdentity": "<base64>", "tcbSigningChain": "<base64>", "rootCACRL": "<base64>",
//	          "pckPlatformCRL": "<base64>", "pckProcessorCRL": "<base64>"}}
//	}
//
// "snp" is there exactly for the SEV-SNP variants, "tdx" for the TDX variants. The measurements and the
// attestation-key roots stay in their own files. The SEV-SNP part may carry the entries of an offline VCEK
// cache ("vceks": {"<entry name>": "<base64 DER>"}), for evidence without a VCEK (GCP attaches none); a
// VCEK from there is checked like one in the evidence.

// PolicyFileVersion is the version of the wire form.
const PolicyFileVersion = 1

// MaxPolicyFileSize bounds the wire form: it travels in a ConfigMap, which holds at most 1 MiB.
const MaxPolicyFileSize = 1 << 20

type attestationFile struct {
	Version int      `json:"version"`
	Variant string   `json:"variant"`
	SNP     *snpFile `json:"snp,omitempty"`
	TDX     *tdxFile `json:"tdx,omitempty"`
}

type snpFile struct {
	Policy *snp.Policy              `json:"policy"`
	CRLs   map[snp.Product][][]byte `json:"crls,omitempty"`
	// VCEKs are the entries of the offline VCEK cache (file name -> DER), for evidence without a VCEK.
	VCEKs map[string][]byte `json:"vceks,omitempty"`
}

type tdxFile struct {
	Policy     *tdx.Policy     `json:"policy"`
	Collateral *collateralFile `json:"collateral"`
}

type collateralFile struct {
	TCBInfos        [][]byte `json:"tcbInfos"`
	QEIdentity      []byte   `json:"qeIdentity"`
	TCBSigningChain []byte   `json:"tcbSigningChain"`
	RootCACRL       []byte   `json:"rootCACRL"`
	PCKPlatformCRL  []byte   `json:"pckPlatformCRL,omitempty"`
	PCKProcessorCRL []byte   `json:"pckProcessorCRL,omitempty"`
}

// MarshalPolicy encodes the variant and hardware policy of p in the wire form, with the entries of its VCEK
// cache. Measurements and attestation-key roots are not part of it.
func MarshalPolicy(p *Policy) ([]byte, error) {
	f := attestationFile{Version: PolicyFileVersion, Variant: p.Variant}
	if p.SNP != nil {
		f.SNP = &snpFile{Policy: p.SNP.Policy.Clone(), CRLs: p.SNP.CRLs}
		if p.SNP.VCEKCache != nil {
			entries, err := p.SNP.VCEKCache.Entries()
			if err != nil {
				return nil, err
			}
			if len(entries) > 0 {
				f.SNP.VCEKs = entries
			}
		}
	}
	if p.TDX != nil {
		c := p.TDX.Collateral
		f.TDX = &tdxFile{Policy: p.TDX.Policy.Clone(), Collateral: &collateralFile{
			TCBInfos: c.TCBInfos, QEIdentity: c.QEIdentity, TCBSigningChain: c.TCBSigningChain,
			RootCACRL: c.RootCACRL, PCKPlatformCRL: c.PCKPlatformCRL, PCKProcessorCRL: c.PCKProcessorCRL,
		}}
	}
	raw, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxPolicyFileSize {
		return nil, fmt.Errorf("the attestation policy takes %d bytes, more than the %d a join configuration holds; keep only the CRLs and collateral the cluster's machines need", len(raw), MaxPolicyFileSize)
	}
	return raw, nil
}

// ParsePolicy parses the wire form strictly: at most MaxPolicyFileSize bytes, one JSON
// object of the current version, no unknown fields, no trailing data, a known variant, and the hardware
// sections present and complete as their parts require. It returns a policy without measurements and
// attestation-key roots; whether the policy can be enforced, [New] decides.
func ParsePolicy(raw []byte) (*Policy, error) {
	if len(raw) > MaxPolicyFileSize {
		return nil, fmt.Errorf("%d bytes, more than the limit of %d", len(raw), MaxPolicyFileSize)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errors.New("empty; the join configuration must name the attestation variant")
	}
	var f attestationFile
	if err := strictjson.Decode(raw, &f, MaxPolicyFileSize); err != nil {
		return nil, fmt.Errorf("not a valid attestation policy: %w", err)
	}
	if f.Version != PolicyFileVersion {
		return nil, fmt.Errorf("version %d is not supported, want %d; the policy was written by another release; run the CLI, the bootstrapper and the join service of one release", f.Version, PolicyFileVersion)
	}
	if _, err := attestation.VariantByName(f.Variant); err != nil {
		return nil, err
	}
	p := &Policy{Variant: f.Variant}
	if f.SNP != nil {
		if f.SNP.Policy == nil {
			return nil, errors.New("snp: no policy")
		}
		for product, list := range f.SNP.CRLs {
			if len(list) == 0 {
				return nil, fmt.Errorf("snp.crls: no CRL listed for %v", product)
			}
		}
		p.SNP = &SNP{Policy: *f.SNP.Policy, CRLs: maps.Clone(f.SNP.CRLs)}
		if f.SNP.VCEKs != nil {
			cache, err := snp.NewVCEKCacheFromEntries(f.SNP.VCEKs)
			if err != nil {
				return nil, fmt.Errorf("snp.vceks: %w", err)
			}
			p.SNP.VCEKCache = cache
		}
	}
	if f.TDX != nil {
		if f.TDX.Policy == nil || f.TDX.Collateral == nil {
			return nil, errors.New("tdx: want both policy and collateral")
		}
		c := f.TDX.Collateral
		p.TDX = &TDX{Policy: *f.TDX.Policy, Collateral: tdx.CollateralFiles{
			TCBInfos: c.TCBInfos, QEIdentity: c.QEIdentity, TCBSigningChain: c.TCBSigningChain,
			RootCACRL: c.RootCACRL, PCKPlatformCRL: c.PCKPlatformCRL, PCKProcessorCRL: c.PCKProcessorCRL,
		}}
	}
	return p, nil
}
