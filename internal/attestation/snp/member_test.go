package snp

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// The cluster binding in the second half of REPORT_DATA replaces PCR 15 for qemu-sev-snp: a node that joined a
// cluster cannot pose as fresh (replaying its membership into a second join, or joining another cluster), a
// fresh node or a member of another cluster cannot pose as a member, and a joining node's peer validator
// accepts a join service of any cluster.
func TestQEMUClusterBinding(t *testing.T) {
	ctx := context.Background()
	verifier := testVerifier(t, testRoots(t, Milan), nil)
	clusterA, clusterB := bytes.Repeat([]byte{0xaa}, ClusterIDSize), bytes.Repeat([]byte{0xbb}, ClusterIDSize)
	fresh := testQEMUValidator(t, clusterPolicy())
	memberA, err := NewMemberValidator(verifier, clusterPolicy(), clusterA)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := NewPeerValidator(verifier, clusterPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewMemberValidator(verifier, clusterPolicy(), nil); err == nil {
		t.Error("a member validator without a cluster ID was made")
	}

	iss := qemuIssuer(t)
	issue := func() []byte {
		t.Helper()
		ev, err := iss.Issue(ctx, testNonce(3), []byte("tls key hash"))
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	check := func(stage string, ev []byte, v *Validator, name string, accept bool, why string) {
		t.Helper()
		got, err := v.Validate(ctx, ev, testNonce(3))
		switch {
		case accept && err != nil:
			t.Errorf("%s, %s validator: %v", stage, name, err)
		case accept && string(got) != "tls key hash":
			t.Errorf("%s, %s validator: user data %q", stage, name, got)
		case !accept && err == nil:
			t.Errorf("%s, %s validator: accepted", stage, name)
		case !accept && (!errors.Is(err, ErrReportData) || !strings.Contains(err.Error(), why)):
			t.Errorf("%s, %s validator: error %v, want a REPORT_DATA mismatch that says %q", stage, name, err, why)
		}
	}

	ev := issue()
	check("fresh node", ev, fresh, "fresh", true, "")
	check("fresh node", ev, peer, "peer", true, "")
	check("fresh node", ev, memberA, "member", false, "belongs to no cluster yet")

	if err := iss.JoinCluster(clusterA[:16]); err == nil {
		t.Error("a cluster ID of 16 bytes was accepted")
	}
	if err := iss.JoinCluster(clusterA); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(iss.ClusterID(), clusterA) {
		t.Fatalf("cluster ID %x", iss.ClusterID())
	}
	ev = issue()
	check("member of A", ev, memberA, "member of A", true, "")
	check("member of A", ev, peer, "peer", true, "")
	check("member of A", ev, fresh, "fresh", false, "already belongs to a cluster")
	memberB, err := NewMemberValidator(verifier, clusterPolicy(), clusterB)
	if err != nil {
		t.Fatal(err)
	}
	check("member of A", ev, memberB, "member of B", false, "another cluster")

	// Joined once, the node joins no other cluster, nor the same again, until it reboots.
	for _, id := range [][]byte{clusterB, clusterA} {
		if err := iss.JoinCluster(id); !errors.Is(err, ErrAlreadyMember) {
			t.Errorf("joining %x again: %v, want ErrAlreadyMember", id[:1], err)
		}
	}
	if !bytes.Equal(iss.ClusterID(), clusterA) {
		t.Errorf("cluster ID changed to %x", iss.ClusterID())
	}
}

// A fresh node's REPORT_DATA is ReportDataForNonce's, whose second half is zero; a member's second half
// depends on the cluster ID only.
func TestReportDataForMember(t *testing.T) {
	v := attestation.QEMUSEVSNP
	nonce, ud := testNonce(1), []byte("u")
	if ReportDataForMember(v, nonce, ud, nil) != ReportDataForNonce(v, nonce, ud) {
		t.Error("a fresh node's REPORT_DATA differs from ReportDataForNonce")
	}
	a := ReportDataForMember(v, nonce, ud, bytes.Repeat([]byte{1}, 32))
	b := ReportDataForMember(v, nonce, ud, bytes.Repeat([]byte{2}, 32))
	if !bytes.Equal(a[:32], b[:32]) || bytes.Equal(a[32:], b[32:]) || isZero(a[32:]) {
		t.Errorf("member bindings: %x / %x", a, b)
	}
}

// A service on a member node that knows its cluster only by its own reports requires the binding they carry
// of its peers (OwnClusterBinding, NewBindingValidator): members of its cluster pass, a fresh node and a
// member of another cluster do not, and a fresh node's own binding is no binding.
func TestQEMUOwnClusterBinding(t *testing.T) {
	ctx := context.Background()
	verifier := testVerifier(t, testRoots(t, Milan), nil)
	clusterA, clusterB := bytes.Repeat([]byte{0xaa}, ClusterIDSize), bytes.Repeat([]byte{0xbb}, ClusterIDSize)
	reportOf := func(iss *Issuer) (*Report, []byte) {
		t.Helper()
		ev, err := iss.Issue(ctx, testNonce(4), []byte("tls key hash"))
		if err != nil {
			t.Fatal(err)
		}
		doc, err := attestation.ParseDocument(ev)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ParseReport(doc.SNP.Report)
		if err != nil {
			t.Fatal(err)
		}
		return r, ev
	}
	fresh := qemuIssuer(t)
	freshReport, freshEvidence := reportOf(fresh)
	if _, err := OwnClusterBinding(freshReport); err == nil {
		t.Error("a fresh node's own report gives a cluster binding")
	}
	if _, err := NewBindingValidator(verifier, clusterPolicy(), [ReportDataSize / 2]byte{}); err == nil {
		t.Error("a member validator of the zero binding was made")
	}
	memberOf := func(id []byte) *Issuer {
		t.Helper()
		iss := qemuIssuer(t)
		if err := iss.JoinCluster(id); err != nil {
			t.Fatal(err)
		}
		return iss
	}
	self, _ := reportOf(memberOf(clusterA))
	binding, err := OwnClusterBinding(self)
	if err != nil {
		t.Fatal(err)
	}
	if binding != ClusterBinding(clusterA) {
		t.Fatalf("own binding %x, want that of cluster A %x", binding, ClusterBinding(clusterA))
	}
	v, err := NewBindingValidator(verifier, clusterPolicy(), binding)
	if err != nil {
		t.Fatal(err)
	}
	_, peerA := reportOf(memberOf(clusterA))
	_, peerB := reportOf(memberOf(clusterB))
	if _, err := v.Validate(ctx, peerA, testNonce(4)); err != nil {
		t.Errorf("a member of the same cluster: %v", err)
	}
	for name, ev := range map[string][]byte{"a fresh node": freshEvidence, "a member of another cluster": peerB} {
		if _, err := v.Validate(ctx, ev, testNonce(4)); !errors.Is(err, ErrReportData) {
			t.Errorf("%s: %v, want a REPORT_DATA mismatch", name, err)
		}
	}
}
