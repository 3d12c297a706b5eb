package snp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// Issuer produces qemu-sev-snp evidence: a report whose REPORT_DATA is [ReportDataForMember] of the
// verifier's nonce, the caller's user data and the cluster the node belongs to (none until
// [Issuer.JoinCluster]), with the certificate table the host attached to it. It implements
// attestation.Issuer and is safe for concurrent use.
type Issuer struct {
	reporter Reporter
	node     string // the node name its HOST_DATA binds ("": none claimed)

	mu        sync.Mutex
	clusterID []byte // nil: a fresh node
}

// NewIssuer returns an issuer that obtains reports from reporter (a [ConfigFSReporter] or a
// [DeviceReporter], see [GuestReporter]).
func NewIssuer(reporter Reporter) *Issuer { return &Issuer{reporter: reporter} }

// NewNodeIssuer is [NewIssuer] for the node name that the guest's HOST_DATA binds ([HostDataForNode]): its
// evidence names the node (attestation.Document.Node), and validators check the name against HOST_DATA. It
// fails if the guest's own report does not bind name: the host launched it for another node, or for none.
func NewNodeIssuer(ctx context.Context, reporter Reporter, name string) (*Issuer, error) {
	if name == "" || len(name) > attestation.MaxNodeNameSize {
		return nil, fmt.Errorf("a node name of %d bytes; want 1 to %d", len(name), attestation.MaxNodeNameSize)
	}
	// Any REPORT_DATA will do: only HOST_DATA is read.
	ev, err := obtainReport(ctx, reporter, [ReportDataSize]byte{}, false)
	if err != nil {
		return nil, err
	}
	r, err := ParseReport(ev.Report)
	if err != nil {
		return nil, err
	}
	if want := HostDataForNode(name); r.HostData != want {
		if isZero(r.HostData[:]) {
			return nil, fmt.Errorf("the host launched this guest without HOST_DATA, so its reports name no node; the provider must launch node %q with host-data %x", name, want)
		}
		return nil, fmt.Errorf("this guest's HOST_DATA %x does not name node %q (want %x): the host launched it for another node", r.HostData, name, want)
	}
	return &Issuer{reporter: reporter, node: name}, nil
}

// Variant returns attestation.QEMUSEVSNP.
func (i *Issuer) Variant() attestation.Variant { return attestation.QEMUSEVSNP }

// ErrAlreadyMember says that a node that belongs to a cluster was asked to join one again.
var ErrAlreadyMember = errors.New("this node already belongs to a cluster")

// JoinCluster makes the node a member of the cluster clusterID (ClusterIDSize bytes): every report it issues
// from now on binds the cluster ID in the second half of REPORT_DATA ([ReportDataForMember]), where fresh
// nodes have zeros. It is what extending the cluster ID into PCR 15 is on a vTPM: once per boot, never
// undone; a second call fails with [ErrAlreadyMember], whatever the ID, as a second extend makes a vTPM node a
// member of no cluster. The binding lives in this process, in the guest's encrypted memory, so the node's
// measured code (the launch measurement covers it) keeps it until the node reboots.
func (i *Issuer) JoinCluster(clusterID []byte) error {
	if len(clusterID) != ClusterIDSize {
		return fmt.Errorf("a cluster ID has %d bytes, not %d", len(clusterID), ClusterIDSize)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.clusterID != nil {
		return fmt.Errorf("%w (%x); it does not join another without a reboot", ErrAlreadyMember, i.clusterID[:8])
	}
	i.clusterID = bytes.Clone(clusterID)
	return nil
}

// ClusterID returns the cluster the node joined ([Issuer.JoinCluster]), or nil for a fresh node.
func (i *Issuer) ClusterID() []byte {
	i.mu.Lock()
	defer i.mu.Unlock()
	return bytes.Clone(i.clusterID)
}

// Issue obtains a report bound to nonce, userData and the node's cluster, and returns the serialized
// evidence document.
func (i *Issuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	if i == nil || i.reporter == nil {
		return nil, errors.New("SNP issuer: no reporter")
	}
	ev, err := obtainReport(ctx, i.reporter, ReportDataForMember(attestation.QEMUSEVSNP, nonce, userData, i.ClusterID()), false)
	if err != nil {
		return nil, err
	}
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  attestation.QEMUSEVSNP.Name,
		UserData: bytes.Clone(userData),
		SNP:      ev,
		Node:     i.node,
	}
	return doc.Marshal()
}

// obtainReport requests a report with reportData and checks it before it leaves the guest: it parses
// strictly, carries reportData, comes from a guest that cannot be debugged, and has a parsable certificate
// table. Evidence that no verifier accepts fails here, where the cause is visible.
//
// Without a certificate table the report is refused unless certsOptional: on GCP the host attaches none, and
// verifiers take the VCEK from their offline cache.
func obtainReport(ctx context.Context, reporter Reporter, reportData [ReportDataSize]byte, certsOptional bool) (*attestation.SNPEvidence, error) {
	ev, err := reporter.Report(ctx, reportData)
	if err != nil {
		return nil, fmt.Errorf("obtaining an SEV-SNP report: %w", err)
	}
	report, err := ParseReport(ev.Report)
	if err != nil {
		return nil, fmt.Errorf("the reporter returned an unusable report: %w", err)
	}
	if report.ReportData != reportData {
		return nil, errors.New("the reporter returned a report for other REPORT_DATA")
	}
	if report.Policy.Debug() {
		return nil, fmt.Errorf("this guest was launched with a policy that allows debugging (guest policy 0x%x): no verifier accepts its reports", uint64(report.Policy))
	}
	if len(ev.CertTable) == 0 && certsOptional {
		return &attestation.SNPEvidence{Report: bytes.Clone(ev.Report)}, nil
	}
	if len(ev.CertTable) == 0 {
		return nil, errors.New("the host attached no certificate table to the report, so a verifier cannot check its signature; configure the host's SEV-SNP certificates (VCEK, ASK, ARK) for extended reports")
	}
	if _, err := ParseCertTable(ev.CertTable); err != nil {
		return nil, fmt.Errorf("the host's certificate table: %w", err)
	}
	return &attestation.SNPEvidence{Report: bytes.Clone(ev.Report), CertTable: bytes.Clone(ev.CertTable)}, nil
}

// Validator validates qemu-sev-snp evidence. It implements attestation.Validator and is safe for concurrent
// use.
//
// Which cluster the node belongs to is bound in the second half of REPORT_DATA ([ReportDataForMember]); a
// validator requires one of three things of it, as the vTPM validators do of PCR 15: a fresh node (zero,
// [NewValidator]: the CLI at init, the join service at a join, so that a node that belongs to a cluster, this
// or another, cannot pose as fresh), a member of one cluster ([NewMemberValidator]), or any ([NewPeerValidator]:
// a joining node that trusts a join service of its own image, whose cluster it does not know yet).
type Validator struct {
	verifier *Verifier
	policy   *Policy
	// member is the second half of REPORT_DATA of the cluster the node must belong to ([ClusterBinding]; nil:
	// a fresh node, zero), unless anyCluster.
	member     *[ReportDataSize / 2]byte
	anyCluster bool
}

// NewValidator returns a validator that verifies reports with verifier and accepts them under policy, from
// fresh nodes only (that belong to no cluster yet). The policy must pass [Policy.ValidateForCluster]: the
// validator sets the expected REPORT_DATA itself for every request.
func NewValidator(verifier *Verifier, policy *Policy) (*Validator, error) {
	if verifier == nil {
		return nil, errors.New("SNP validator: no verifier")
	}
	if err := policy.ValidateForCluster(); err != nil {
		return nil, err
	}
	return &Validator{verifier: verifier, policy: policy.Clone()}, nil
}

// NewMemberValidator is [NewValidator] for the nodes that belong to the cluster clusterID
// ([Issuer.JoinCluster]): it refuses fresh nodes and members of other clusters.
func NewMemberValidator(verifier *Verifier, policy *Policy, clusterID []byte) (*Validator, error) {
	if len(clusterID) != ClusterIDSize {
		return nil, fmt.Errorf("SNP member validator: a cluster ID has %d bytes, not %d", len(clusterID), ClusterIDSize)
	}
	return NewBindingValidator(verifier, policy, ClusterBinding(clusterID))
}

// ClusterBinding returns the second half of the REPORT_DATA of every report of a member of the cluster
// clusterID ([ReportDataForMember]).
func ClusterBinding(clusterID []byte) [ReportDataSize / 2]byte {
	var b [ReportDataSize / 2]byte
	rd := ReportDataForMember(attestation.QEMUSEVSNP, nil, nil, clusterID)
	copy(b[:], rd[ReportDataSize/2:])
	return b
}

// OwnClusterBinding returns the cluster binding that r, a report of this node's own, carries: the second half
// of its REPORT_DATA. A node that knows its cluster only by its own reports (a service on the node, which gets
// them from the node's attestation agent) requires the same binding of its peers ([NewBindingValidator]),
// which makes them members of its cluster without learning the cluster ID. A fresh node's binding (zero) is an
// error: it belongs to no cluster.
func OwnClusterBinding(r *Report) ([ReportDataSize / 2]byte, error) {
	var b [ReportDataSize / 2]byte
	if r == nil {
		return b, fmt.Errorf("%w: no report", ErrPolicy)
	}
	copy(b[:], r.ReportData[ReportDataSize/2:])
	if isZero(b[:]) {
		return b, errors.New("this node's own report binds no cluster: the node belongs to no cluster yet")
	}
	return b, nil
}

// NewBindingValidator is [NewMemberValidator] for the cluster whose members' reports carry binding in the
// second half of REPORT_DATA ([ClusterBinding], [OwnClusterBinding]). A zero binding (a fresh node's) is an
// error: use [NewValidator] for fresh nodes.
func NewBindingValidator(verifier *Verifier, policy *Policy, binding [ReportDataSize / 2]byte) (*Validator, error) {
	if isZero(binding[:]) {
		return nil, errors.New("SNP member validator: a zero cluster binding is that of a fresh node, not of a cluster's members")
	}
	v, err := NewValidator(verifier, policy)
	if err != nil {
		return nil, err
	}
	v.member = &binding
	return v, nil
}

// NewPeerValidator is [NewValidator] for nodes that may belong to any cluster or none: the cluster binding
// goes unchecked, everything else (the chain to the AMD root, the policy, nonce and user data) is checked. A
// node that looks for a join service of its own image uses it (it learns the cluster from that service's
// answer), and a verifier that checks a node's image alone (package validators without Fresh or ClusterID),
// as a vTPM validator whose policy leaves PCR 15 out.
func NewPeerValidator(verifier *Verifier, policy *Policy) (*Validator, error) {
	v, err := NewValidator(verifier, policy)
	if err != nil {
		return nil, err
	}
	v.anyCluster = true
	return v, nil
}

// Variant returns attestation.QEMUSEVSNP.
func (v *Validator) Variant() attestation.Variant { return attestation.QEMUSEVSNP }

// Validate parses the evidence document, verifies the report (certificate chain to the embedded AMD root,
// revocation, signature), checks it against the policy with REPORT_DATA = ReportDataForMember(nonce, user
// data, the cluster the validator requires), and returns the user data.
func (v *Validator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if v == nil || v.verifier == nil || v.policy == nil {
		return nil, errors.New("SNP validator not initialised; use NewValidator")
	}
	doc, err := attestation.OpenEvidence(attestation.QEMUSEVSNP, attestation.NoTPM, evidence, nonce)
	if err != nil {
		return nil, err
	}
	certs, err := evidenceCertificates(doc.SNP, v.verifier.vcekCache != nil)
	if err != nil {
		return nil, err
	}
	want := ReportDataForNonce(attestation.QEMUSEVSNP, nonce, doc.UserData)
	if v.member != nil {
		copy(want[ReportDataSize/2:], v.member[:])
	}
	if v.anyCluster {
		// The second half is left as the report has it: the signature check below still covers all of
		// REPORT_DATA, and the first half (nonce and user data) is compared.
		r, err := ParseReport(doc.SNP.Report)
		if err != nil {
			return nil, err
		}
		copy(want[ReportDataSize/2:], r.ReportData[ReportDataSize/2:])
	}
	policy := v.policy.WithReportData(want)
	if doc.Node != "" {
		// The name counts only if HOST_DATA binds it. A cluster that pins HOST_DATA itself leaves no room for
		// names: the evidence of a named node is refused rather than its name taken unchecked.
		if len(policy.HostData) != 0 {
			return nil, fmt.Errorf("%w: the evidence names node %q by HOST_DATA, but the policy pins HOST_DATA to %x; remove hostData from the policy of a cluster whose provider names its nodes", ErrPolicy, doc.Node, []byte(policy.HostData))
		}
		h := HostDataForNode(doc.Node)
		policy.HostData = h[:]
	}
	if _, err := Validate(v.verifier, policy, doc.SNP.Report, certs); err != nil {
		if errors.Is(err, ErrHostData) {
			err = fmt.Errorf("%w (the evidence claims to be node %q, but the host launched the guest for another name)", err, doc.Node)
		}
		return nil, v.explainClusterBinding(err, doc.SNP.Report, want)
	}
	return doc.UserData, nil
}

// explainClusterBinding adds to a failed validation whose REPORT_DATA differs only in its cluster binding
// what the node is, for the operator's log: a member where a fresh node was required, or the other way.
func (v *Validator) explainClusterBinding(err error, raw []byte, want [ReportDataSize]byte) error {
	if !errors.Is(err, ErrReportData) {
		return err
	}
	r, perr := ParseReport(raw)
	if perr != nil || !bytes.Equal(r.ReportData[:ReportDataSize/2], want[:ReportDataSize/2]) {
		return err
	}
	switch {
	case v.member == nil:
		return fmt.Errorf("%w (the node already belongs to a cluster, this or another; a fresh node is required, so it must reboot first)", err)
	case isZero(r.ReportData[ReportDataSize/2:]):
		return fmt.Errorf("%w (the node belongs to no cluster yet; a member of this cluster is required)", err)
	default:
		return fmt.Errorf("%w (the node belongs to another cluster than this one)", err)
	}
}

// evidenceCertificates parses the certificates of an SNP evidence part: its certificate table, its
// certificate chain, or both (then no role may appear twice). Evidence without certificates is an error
// unless vcekCache says that the verifier can look up the VCEK in its offline cache.
func evidenceCertificates(ev *attestation.SNPEvidence, vcekCache bool) (*Certificates, error) {
	if len(ev.CertTable) == 0 && len(ev.CertChain) == 0 {
		if vcekCache {
			return &Certificates{}, nil
		}
		return nil, fmt.Errorf("%w: the evidence carries no certificate table and no certificate chain, so the report's signing key is unknown", ErrMissingCertificate)
	}
	certs := &Certificates{}
	if len(ev.CertTable) > 0 {
		t, err := ParseCertTable(ev.CertTable)
		if err != nil {
			return nil, err
		}
		certs = t
	}
	if len(ev.CertChain) > 0 {
		c, err := ParseCertificates(ev.CertChain)
		if err != nil {
			return nil, err
		}
		if err := certs.Merge(c); err != nil {
			return nil, err
		}
	}
	return certs, nil
}
