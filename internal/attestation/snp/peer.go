package snp

import (
	"bytes"
	"fmt"
)

// PeerPolicy returns the policy by which a node trusts a peer of its own image before it belongs to a
// cluster (the join service it joins through), from the node's own report r, which it obtained itself and
// does not verify: the launch measurement of r (the same firmware, kernel, initrd, command line and machine),
// the TCB r was reported at as the minimum for r's product (a peer at least as patched as this node), r's
// VMPL, no migration agent, no VLEK, and SMT allowed only if this node's own platform runs with it.
//
// A node has no revocation lists of its own, so the policy sets AllowMissingCRL: revocation is enforced where
// the cluster's policy is (the CLI and the join service check the node against the CRLs the operator
// configured); here a peer is accepted on a VCEK chain to the embedded AMD root alone. A node never joins
// through a peer of another launch measurement, whatever the host says.
func (r *Report) PeerPolicy() (*Policy, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: no report", ErrInvalidPolicy)
	}
	product, err := r.CPUProduct()
	if err != nil {
		return nil, fmt.Errorf("this node's own report: %w", err)
	}
	tcb, err := DecodeTCB(product, r.ReportedTCB)
	if err != nil {
		return nil, fmt.Errorf("this node's own report: %w", err)
	}
	p := &Policy{
		Measurements:    []HexBytes{bytes.Clone(r.Measurement[:])},
		MinimumTCB:      map[Product]TCB{product: tcb},
		VMPL:            r.VMPL,
		AllowSMT:        r.PlatformInfo.SMTEnabled(),
		AllowMissingCRL: true,
	}
	if err := p.ValidateForCluster(); err != nil {
		return nil, fmt.Errorf("this node's own report gives no usable peer policy: %w", err)
	}
	return p, nil
}
