package bootstrapper

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/provider"
)

// How a node attests itself depends on its variant. A vTPM node (mini-vtpm, qemu-vtpm) quotes its TPM with an
// attestation key the provider certified, and extends into PCRs what it must prove later. A qemu-sev-snp node
// has no TPM: its evidence is a report of the SEV-SNP firmware, whose launch measurement covers the firmware,
// the kernel, initrd and command line (so this very code), and whose REPORT_DATA the node fills. What each
// former TPM use becomes on qemu-sev-snp:
//
//   - Attestation-key enrolment (akca.Enroll) and the provider's AK roots: none. The report is signed by the
//     chip's VCEK, which chains to the AMD root embedded in the verifier; the host certifies nothing.
//   - The node's name, which a vTPM node's attestation key certificate gives it (the join service binds the
//     state disk, the kubelet certificate and the WireGuard key to it): HOST_DATA, which the provider sets at
//     launch (snp.HostDataForNode) and the firmware signs in every report. The node checks at boot that
//     HOST_DATA names it (snp.NewNodeIssuer) and refuses to run otherwise.
//   - The boot event log and the image PCRs: none. The launch measurement stands for them, and the cluster's
//     policy (snp.Policy) lists the accepted ones.
//   - The node's own boot measurements, by which it trusts a join service of its own image (ownPolicy): its
//     own report's launch measurement, TCB, VMPL and platform (snp.Report.PeerPolicy).
//   - The cluster-ID PCR (PCR 15), extended at init and join: the second half of REPORT_DATA
//     (snp.Issuer.JoinCluster), zero for a fresh node, set once and never cleared by this code. A validator
//     requires a fresh node, a member of one cluster, or either (snp.NewValidator, NewMemberValidator,
//     NewPeerValidator), as vTPM validators do of PCR 15. The launch measurement cannot cover it: it is fixed
//     before the node runs. What holds the binding is this process in the guest's encrypted memory; root on
//     the node could ask the firmware for a report with any REPORT_DATA, as root on a vTPM node could extend
//     PCR 15 with any cluster ID: both trust the node's measured code and the absence of a compromise of it.
//   - The peer policy hint (PCR 14): there is no register to measure it into, and a hint the join service
//     cannot see is one it cannot check, so a qemu-sev-snp node ignores the hint and trusts peers of its own
//     launch measurement only (readPeerHint). Upgrades that need two images at once are not possible there;
//     the join service also refuses a measurement policy update for a variant without a vTPM.
//   - The services on a control-plane node: the key service gets the cluster's attestation policy with the
//     master secret (keyServiceSecret, keyservice.Secret.Attestation) and requires of its callers a report of
//     the policy's launch measurements that binds the cluster ID (keyservice.MemberValidator); measurement
//     policy updates are refused there. The node's join service, which learns the cluster ID only from the
//     configuration it still has to authenticate, trusts a key service of its own node's launch measurement
//     whose reports carry the same cluster binding as its own node's (joinservice.KeyServiceTrust).
//   - The measurement policy a control-plane node keeps on its state disk for a recovery (measurements.json):
//     the attestation policy's wire form instead (attestation.json, the key service's Secret.Attestation), on
//     the same encrypted disk; recovery reads back exactly one of the two, of the node's own variant
//     (readKeptPolicy).
//   - Sealing: no bootstrapper piece seals to the TPM; the state disk key comes from the join service (or is
//     derived from the master secret on the first node), as on vTPM nodes.

// peerTrust is how a node trusts peers of its own image: the join service it joins through, and on a
// control-plane node the key services of its cluster it gets the master secret from.
type peerTrust interface {
	// joinService returns the validator of a join service: a peer of this node's image, or of one of the
	// sets of hint, which the node has measured (nil: none).
	joinService(ctx context.Context, md provider.Node, hint *policyupdate.PeerHint, log *slog.Logger) (attestation.Validator, error)
	// keyService returns the validator of a key service: as joinService, and a member of the cluster this
	// node belongs to (issuer recorded it, recordClusterID).
	keyService(ctx context.Context, md provider.Node, issuer attestation.Issuer, hint *policyupdate.PeerHint, log *slog.Logger) (attestation.Validator, error)
}

// vtpmPeers trusts peers by the boot PCRs of this node's own vTPM, with attestation keys the provider's AK CA
// certified.
type vtpmPeers struct {
	own measurements.M
}

func (p vtpmPeers) joinService(ctx context.Context, md provider.Node, hint *policyupdate.PeerHint, log *slog.Logger) (attestation.Validator, error) {
	roots, err := md.AKRoots(ctx)
	if err != nil {
		return nil, err
	}
	return joinservice.PeerValidator(md.Variant(), roots, p.own, hint, log)
}

func (p vtpmPeers) keyService(ctx context.Context, md provider.Node, issuer attestation.Issuer, hint *policyupdate.PeerHint, log *slog.Logger) (attestation.Validator, error) {
	own, err := joinservice.OwnMemberPolicy(ctx, issuer)
	if err != nil {
		return nil, err
	}
	roots, err := md.AKRoots(ctx)
	if err != nil {
		return nil, err
	}
	return joinservice.MemberPeerValidator(md.Variant(), roots, own, hint, log)
}

// snpPeers trusts qemu-sev-snp peers by this node's own report (snp.Report.PeerPolicy), verified to the AMD
// roots of verifier.
type snpPeers struct {
	verifier *snp.Verifier
	policy   *snp.Policy
}

func (p snpPeers) joinService(_ context.Context, _ provider.Node, hint *policyupdate.PeerHint, _ *slog.Logger) (attestation.Validator, error) {
	if hint != nil {
		return nil, errSNPPeerHint
	}
	// Any cluster: the node learns which from the join service's answer.
	return snp.NewPeerValidator(p.verifier, p.policy)
}

func (p snpPeers) keyService(_ context.Context, _ provider.Node, issuer attestation.Issuer, hint *policyupdate.PeerHint, _ *slog.Logger) (attestation.Validator, error) {
	if hint != nil {
		return nil, errSNPPeerHint
	}
	i, ok := issuer.(*snp.Issuer)
	if !ok {
		return nil, fmt.Errorf("a %s node attests with a %T, not with the SEV-SNP firmware", attestation.QEMUSEVSNP, issuer)
	}
	id := i.ClusterID()
	if id == nil {
		return nil, errors.New("this node belongs to no cluster yet: it trusts no key service")
	}
	return snp.NewMemberValidator(p.verifier, p.policy, id)
}

// errSNPPeerHint says that a qemu-sev-snp node was to trust peers by a hint it cannot measure.
var errSNPPeerHint = fmt.Errorf("a %s node has no register to measure a peer policy hint into; it trusts peers of its own launch measurement only", attestation.QEMUSEVSNP)

// snpAttestation is the attestation of the qemu-sev-snp node name: an issuer of reports from reporter (the
// guest's configfs-tsm or sev-guest device, snp.GuestReporter) that name the node, and the trust in peers of its own image, from its own
// first report, verified by a verifier with vopts (the embedded AMD roots unless a test sets others). A node
// whose platform gives no usable report (no certificate table, a debuggable guest, a report for other
// REPORT_DATA) fails here, at boot, where the cause is visible.
func snpAttestation(ctx context.Context, reporter snp.Reporter, name string, vopts snp.VerifierOptions) (*snp.Issuer, peerTrust, error) {
	issuer, err := snp.NewNodeIssuer(ctx, reporter, name)
	if err != nil {
		return nil, nil, fmt.Errorf("this node's SEV-SNP identity: %w", err)
	}
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	raw, err := issuer.Issue(ctx, nonce, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("obtaining this node's own SEV-SNP report: %w", err)
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("this node's own evidence: %w", err)
	}
	own, err := snp.ParseReport(doc.SNP.Report)
	if err != nil {
		return nil, nil, fmt.Errorf("this node's own report: %w", err)
	}
	policy, err := own.PeerPolicy()
	if err != nil {
		return nil, nil, err
	}
	verifier, err := snp.NewVerifier(vopts)
	if err != nil {
		return nil, nil, err
	}
	return issuer, snpPeers{verifier: verifier, policy: policy}, nil
}

// recordClusterID makes the node of issuer a member of the cluster clusterID after init, join or recovery:
// on a vTPM it extends the cluster ID into PCR 15; on qemu-sev-snp it binds it into every later report
// (snp.Issuer.JoinCluster). Any other issuer is an error: a node that cannot record its membership does not
// go on as a member.
func recordClusterID(issuer attestation.Issuer, clusterID []byte) (where string, err error) {
	switch i := issuer.(type) {
	case *vtpm.Issuer:
		ev := measurements.ClusterIDEvent(clusterID)
		if err := i.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
			return "", fmt.Errorf("measuring the cluster ID into PCR %d: %w", ev.PCR, err)
		}
		return fmt.Sprintf("PCR %d", ev.PCR), nil
	case *snp.Issuer:
		if err := i.JoinCluster(clusterID); err != nil {
			return "", fmt.Errorf("binding the cluster ID into this node's SEV-SNP reports: %w", err)
		}
		return "SEV-SNP REPORT_DATA", nil
	default:
		return "", fmt.Errorf("this node's issuer (%T) cannot record the cluster it belongs to", issuer)
	}
}

// measurePeerHint measures the peer policy hint before the node trusts any peer by it: into PCR 14 on a vTPM
// (joinservice.MeasurePeerHint). A node without a vTPM cannot, and must have no hint (readPeerHint drops it).
func measurePeerHint(issuer attestation.Issuer, hint *policyupdate.PeerHint) error {
	if hint == nil {
		return nil
	}
	m, ok := issuer.(joinservice.Measurer)
	if !ok {
		return errSNPPeerHint
	}
	return joinservice.MeasurePeerHint(m, hint)
}
