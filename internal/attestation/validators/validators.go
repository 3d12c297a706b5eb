// Package validators turns a cluster's attestation policy into the validator of its variant. It is the one
// place that knows which constructor of packages vtpm, snp and tdx checks which variant, so that the CLI
// (verify, attestation verify) and the join service validate the same evidence the same way.
//
// A [Policy] names the variant and holds what its evidence must meet: the PCR measurements of the variants
// with a (v)TPM, the attestation-key roots of mini-vtpm and qemu-vtpm, the SEV-SNP policy with its offline CRLs and VCEK
// cache, or the TDX policy with Intel's collateral. [New] fails closed: an unknown or unsupported variant, a
// variant without its hardware policy, a policy of another variant's hardware, or an invalid policy
// (allowDebug, a fixed reportData, no measurements, measurements that accept any node image or boot
// parameters, a qemu-tdx policy without RTMR0-3, ...) is an error that says what to fix, never a validator that
// checks less. The validators compute the expected REPORT_DATA for every validation from the verifier's nonce
// (variants without a vTPM) or the attestation key the evidence names (variants with a vTPM, whose quote then
// binds the nonce).
//
// The node image and its boot parameters are pinned on the variants with a vTPM by the image PCRs of the
// variant's measured-boot scheme (vtpm.ImageScheme): PCRs 4, 11, 12 and 13 on qemu-vtpm (UEFI), PCRs 4 and 8
// on the others. The variants without a vTPM take no PCRs: there the hardware policy pins them, on
// qemu-tdx by RTMR0-3 (RTMR2 measures the kernel command line), on qemu-sev-snp by the launch measurement,
// which covers the kernel, initrd and command line only when the host boots the guest with measured direct
// boot (their hashes in the launch digest).
//
// Which cluster a node belongs to is PCR 15 in the measurements of the vTPM variants (measurements.FreshPolicy,
// MemberPolicy); qemu-sev-snp binds it in its REPORT_DATA instead, and a policy says what it requires with
// Policy.Fresh (no cluster yet: init and join) or Policy.ClusterID (a member of that cluster); without either
// the node's image alone is checked, as a vTPM policy without PCR 15 does.
package validators

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// Policy is what every node's evidence must meet.
type Policy struct {
	// Variant is the name of the attestation variant every node presents.
	Variant string
	// Measurements are the expected PCR values of the variants with a TPM or vTPM (required for them);
	// variants without a vTPM take none.
	Measurements measurements.M
	// AKRoots are the CA certificates that certify nodes' attestation keys; mini-vtpm and qemu-vtpm only
	// (required there). The other variants trust the attestation key only through the hardware report.
	AKRoots []*x509.Certificate
	// SNP is the SEV-SNP policy; required for the SEV-SNP variants, refused for the others.
	SNP *SNP
	// TDX is the TDX policy; required for the TDX variants, refused for the others.
	TDX *TDX
	// Fresh and ClusterID say which cluster a node of a variant without a vTPM must belong to, where the vTPM
	// variants say it with PCR 15 in Measurements (measurements.FreshPolicy, MemberPolicy): Fresh accepts only
	// nodes that belong to no cluster yet (the CLI at init, the join service at a join), ClusterID only the
	// members of that cluster; neither accepts any, and both is an error. Only qemu-sev-snp binds the
	// cluster (in REPORT_DATA, see BindsCluster); for every other variant they must be unset. They are no part
	// of the policy's file (MarshalPolicy): each use sets them.
	Fresh     bool
	ClusterID []byte
}

// BindsCluster tells whether a variant without a vTPM binds the cluster its nodes belong to in its hardware
// report, so that Policy.Fresh and Policy.ClusterID apply to it: qemu-sev-snp (snp.ReportDataForMember).
func BindsCluster(variant attestation.Variant) bool {
	return variant.Name == attestation.QEMUSEVSNP.Name
}

// SNP is the SEV-SNP part of a policy.
type SNP struct {
	// Policy must pass snp.Policy.ValidateForCluster.
	Policy snp.Policy
	// CRLs are AMD's revocation lists per product (see snp.LoadCRLDir). Without a CRL for the product of a
	// report, the policy must set AllowMissingCRL.
	CRLs map[snp.Product][][]byte
	// VCEKCache, if not nil, is the offline VCEK cache for evidence without a VCEK (see snp.LoadVCEKCache).
	VCEKCache *snp.VCEKCache
}

// TDX is the TDX part of a policy.
type TDX struct {
	// Policy must pass tdx.Policy.ValidateForCluster, and for a variant without a vTPM (qemu-tdx)
	// tdx.Policy.ValidateForClusterWithoutVTPM (RTMR0-3 set).
	Policy tdx.Policy
	// Collateral is Intel's collateral, as read by tdx.ReadCollateralFiles; New parses it strictly.
	Collateral tdx.CollateralFiles
}

// Options are what a validator trusts besides the policy. The zero value is the product's: the AMD and
// Intel roots embedded in the binary and the current time.
type Options struct {
	// Log receives the details of failed measurement checks (vTPM variants). Nil discards them.
	Log *slog.Logger
	// Now is the time at which certificates, CRLs and collateral must be valid; nil means time.Now.
	Now func() time.Time
	// SNPRoots replaces the embedded AMD roots. Only tests set it, with a test PKI.
	SNPRoots *snp.Roots
}

// ErrPolicy matches every error of [New] that a change of the attestation policy fixes.
var ErrPolicy = errors.New("attestation policy cannot be enforced")

func policyErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrPolicy, fmt.Sprintf(format, args...))
}

// New returns the validator of p.Variant that enforces p.
func New(p *Policy, opts Options) (attestation.Validator, error) {
	if p == nil {
		return nil, policyErr("no attestation policy")
	}
	variant, err := attestation.VariantByName(p.Variant)
	if err != nil {
		return nil, fmt.Errorf("%w: %w; set the variant your nodes' evidence is of", ErrPolicy, err)
	}
	if err := check(variant, p); err != nil {
		return nil, err
	}
	v, err := build(variant, p, opts)
	if err != nil {
		return nil, fmt.Errorf("%s validator: %w", variant, err)
	}
	if v.Variant().Name != variant.Name {
		// A constructor of another variant would accept the wrong evidence; never hand it out.
		return nil, fmt.Errorf("%s validator: the constructor returned a validator of %s", variant, v.Variant())
	}
	return v, nil
}

// check refuses a policy that does not fit its variant: missing or foreign parts. The parts themselves are
// validated by the constructors, which share their checks with internal/config.
func check(variant attestation.Variant, p *Policy) error {
	if variant.VTPM {
		if err := p.Measurements.ValidateScheme(vtpm.ImageScheme(variant)); err != nil {
			return fmt.Errorf("%w: %s: measurements: %w", ErrPolicy, variant, err)
		}
	} else if len(p.Measurements) > 0 {
		return policyErr("%s has no vTPM, so PCR measurements do not apply; remove them and put the launch measurement into the %s policy", variant, variant.Hardware)
	}
	if vtpm.ProviderCertified(variant) {
		if len(p.AKRoots) == 0 {
			return policyErr("%s needs the certificate of the CA that certifies the nodes' attestation keys", variant)
		}
	} else if len(p.AKRoots) > 0 {
		return policyErr("%s trusts the attestation key only through the hardware report; remove the attestation-key CA certificates", variant)
	}
	switch {
	case (p.Fresh || p.ClusterID != nil) && !BindsCluster(variant):
		if variant.VTPM {
			return policyErr("%s proves its cluster with PCR %d in the measurements; leave fresh and clusterID unset", variant, measurements.PCRClusterID)
		}
		return policyErr("%s evidence does not bind the cluster its node belongs to; leave fresh and clusterID unset", variant)
	case p.Fresh && p.ClusterID != nil:
		return policyErr("a node cannot be both fresh and a member of cluster %x", p.ClusterID)
	case p.ClusterID != nil && len(p.ClusterID) != snp.ClusterIDSize:
		return policyErr("a cluster ID has %d bytes, not %d", len(p.ClusterID), snp.ClusterIDSize)
	}
	switch {
	case variant.Hardware == attestation.SEVSNP && p.SNP == nil:
		return policyErr("%s needs an SEV-SNP policy (attestation.snp: at least measurements and minimumTCB, and crlDir or allowMissingCRL)", variant)
	case variant.Hardware != attestation.SEVSNP && p.SNP != nil:
		return policyErr("an SEV-SNP policy is set, but %s evidence has no SEV-SNP report; remove it", variant)
	case variant.Hardware == attestation.TDX && p.TDX == nil:
		return policyErr("%s needs a TDX policy (attestation.tdx: at least mrtd) and Intel's collateral (collateralDir)", variant)
	case variant.Hardware != attestation.TDX && p.TDX != nil:
		return policyErr("a TDX policy is set, but %s evidence has no TDX quote; remove it", variant)
	}
	return nil
}

func build(variant attestation.Variant, p *Policy, opts Options) (attestation.Validator, error) {
	switch variant.Hardware {
	case attestation.NoHardware:
		if !vtpm.ProviderCertified(variant) {
			break
		}
		return vtpm.NewValidatorFor(variant, p.AKRoots, p.Measurements, opts.Log)
	case attestation.SEVSNP:
		policy := p.SNP.Policy.Clone()
		if err := policy.ValidateForCluster(); err != nil {
			return nil, fmt.Errorf("%w: the SEV-SNP policy: %w", ErrPolicy, err)
		}
		verifier, err := snp.NewVerifier(snp.VerifierOptions{Roots: opts.SNPRoots, CRLs: p.SNP.CRLs, Now: opts.Now, VCEKCache: p.SNP.VCEKCache})
		if err != nil {
			return nil, fmt.Errorf("the AMD CRLs: %w", err)
		}
		switch variant.Name {
		case attestation.QEMUSEVSNP.Name:
			switch {
			case p.Fresh:
				return snp.NewValidator(verifier, policy)
			case p.ClusterID != nil:
				return snp.NewMemberValidator(verifier, policy, p.ClusterID)
			default:
				return snp.NewPeerValidator(verifier, policy)
			}
		case attestation.AzureSEVSNP.Name:
			return snp.NewAzureValidator(verifier, policy, p.Measurements, opts.Log)
		default:
			return snp.NewVTPMValidator(variant, verifier, policy, p.Measurements, opts.Log)
		}
	case attestation.TDX:
		policy := p.TDX.Policy.Clone()
		validate := policy.ValidateForCluster
		if !variant.VTPM {
			validate = policy.ValidateForClusterWithoutVTPM
		}
		if err := validate(); err != nil {
			return nil, fmt.Errorf("%w: the TDX policy: %w", ErrPolicy, err)
		}
		collateral, err := tdx.ParseCollateral(p.TDX.Collateral)
		if err != nil {
			return nil, fmt.Errorf("the TDX collateral: %w; refresh the collateral cache", err)
		}
		if variant.VTPM {
			return tdx.NewVTPMValidator(variant, collateral, policy, p.Measurements, opts.Now, opts.Log)
		}
		return tdx.NewValidator(collateral, policy, opts.Now)
	}
	return nil, fmt.Errorf("%w: no validator for variant %s", attestation.ErrNotSupported, variant)
}
