package joinservice

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// The peers a joining node trusts: the join service it joins through and, on a control-plane node, the key
// services it gets the master secret from. A node trusts a peer that booted its own image; during an upgrade
// its provider hints the other image's measurement set too (policyupdate.PeerHint). The host writes the hint,
// so the node measures it into PCR 14 ([MeasurePeerHint]) before it trusts any peer by it, and the join service
// admits only nodes whose measured peer policy trusted nothing but the sets in force ([checkPeerPolicy]).

// Measurer extends a measurement into a PCR of the node's vTPM and logs it (vtpm.Issuer).
type Measurer interface {
	Measure(pcr uint32, typ eventlog.EventType, data []byte) error
}

// MeasurePeerHint measures the peer policy hint into PCR 14 (measurements.PCRPeerPolicy), as the node must
// before it trusts a peer by it; nil measures nothing, and PCR 14 stays zero.
func MeasurePeerHint(m Measurer, hint *policyupdate.PeerHint) error {
	if hint == nil {
		return nil
	}
	ev := hint.Event()
	if err := m.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		return fmt.Errorf("measuring the peer policy into PCR %d: %w", ev.PCR, err)
	}
	return nil
}

// PeerValidator returns the validator by which a joining node of variant trusts a join service: its
// attestation key certified by roots, its boot measurements own (the node's own image), or one of the sets of
// hint (nil: own only), which the node must have measured ([MeasurePeerHint]).
func PeerValidator(variant attestation.Variant, roots []*x509.Certificate, own measurements.M, hint *policyupdate.PeerHint, log *slog.Logger) (attestation.Validator, error) {
	sets := []measurements.M{own}
	if hint != nil {
		sets = append(sets, hint.Sets...)
	}
	vs := make([]attestation.Validator, 0, len(sets))
	for i, set := range sets {
		v, err := vtpm.NewValidatorFor(variant, roots, set, log)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("this node's own measurements: %w", err)
			}
			return nil, fmt.Errorf("peer policy set %d: %w", i, err)
		}
		vs = append(vs, v)
	}
	return policyupdate.AnySet(vs...)
}

// MemberPeerValidator returns the validator by which a control-plane node that joined trusts the key services
// of its cluster: as [PeerValidator], and a member of the same cluster, with the cluster-ID PCR of own (the
// node's own member policy, [OwnMemberPolicy]).
func MemberPeerValidator(variant attestation.Variant, roots []*x509.Certificate, own measurements.M, hint *policyupdate.PeerHint, log *slog.Logger) (attestation.Validator, error) {
	id, ok := own[measurements.PCRClusterID]
	if !ok {
		return nil, fmt.Errorf("this node's own member policy holds no cluster ID (PCR %d)", measurements.PCRClusterID)
	}
	if hint == nil {
		return PeerValidator(variant, roots, own, nil, log)
	}
	members := &policyupdate.PeerHint{}
	for _, set := range hint.Sets {
		m := maps.Clone(set)
		m[measurements.PCRClusterID] = id
		members.Sets = append(members.Sets, m)
	}
	return PeerValidator(variant, roots, own, members, log)
}

// errPeerPolicy is wrapped by the errors of checkPeerPolicy.
var errPeerPolicy = errors.New("the node's measured peer policy")

// checkPeerPolicy checks the peer policy that the node of evidence measured into PCR 14, which the caller has
// validated (quote, PCR values, event log): none (PCR 14 zero), or one whose every set is covered by one of
// sets, the sets in force. The event log must explain the quoted PCR 14 exactly (policyupdate.PeerHintsOf);
// if not, the node is refused.
func checkPeerPolicy(evidence []byte, sets []measurements.M) ([]*policyupdate.PeerHint, error) {
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errPeerPolicy, err)
	}
	if doc.TPM == nil || len(doc.TPM.Quotes) != 1 {
		return nil, fmt.Errorf("%w: the evidence holds no single vTPM quote", errPeerPolicy)
	}
	var events []eventlog.Event
	if len(doc.TPM.EventLog) > 0 {
		if events, err = eventlog.Parse(doc.TPM.EventLog); err != nil {
			return nil, fmt.Errorf("%w: parsing the event log: %w", errPeerPolicy, err)
		}
	}
	hints, err := policyupdate.PeerHintsOf(events, doc.TPM.Quotes[0].PCRs[measurements.PCRPeerPolicy])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errPeerPolicy, err)
	}
	if err := policyupdate.CheckPeerHints(hints, sets); err != nil {
		return hints, fmt.Errorf("%w: %w", errPeerPolicy, err)
	}
	return hints, nil
}
