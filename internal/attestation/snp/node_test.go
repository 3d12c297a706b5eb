package snp

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// launchedReporter is a guest of the Milan test PKI that the host launched with hostData.
type launchedReporter struct {
	t        *testing.T
	hostData [HostDataSize]byte
	key      *ecdsa.PrivateKey
	table    []byte
}

func newLaunchedReporter(t *testing.T, hostData [HostDataSize]byte) *launchedReporter {
	pki := getTestPKI(t, Milan)
	cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB})
	return &launchedReporter{t: t, hostData: hostData, key: key, table: MarshalCertTable(&Certificates{VCEK: cert, Intermediate: pki.ask, ARK: pki.ark})}
}

func (r *launchedReporter) Report(_ context.Context, reportData [ReportDataSize]byte) (*Evidence, error) {
	o := reportOptions{product: Milan, tcb: defaultTestTCB, reportData: reportData, measurement: [48]byte{7}, hostData: r.hostData}
	return &Evidence{Report: signReport(r.t, buildReport(r.t, o), r.key), CertTable: r.table}, nil
}

// A qemu-sev-snp node is named by the HOST_DATA its host launched it with: evidence that claims another name,
// or a name although the cluster pins HOST_DATA, is refused; a guest launched for another name or for none
// cannot make a named issuer.
func TestQEMUNodeName(t *testing.T) {
	ctx := context.Background()
	worker1 := newLaunchedReporter(t, HostDataForNode("worker-1"))
	iss, err := NewNodeIssuer(ctx, worker1, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := iss.Issue(ctx, testNonce(4), []byte("tls key hash"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Node != "worker-1" || doc.AttestationKeySubject() != "worker-1" {
		t.Fatalf("the evidence names %q / %q, want worker-1", doc.Node, doc.AttestationKeySubject())
	}
	v := testQEMUValidator(t, clusterPolicy())
	if _, err := v.Validate(ctx, ev, testNonce(4)); err != nil {
		t.Fatalf("named node: %v", err)
	}

	// The guest of worker-1 claims to be worker-2 (the host, or anything that rewrites the document).
	renamed := mutateDoc(t, ev, func(d *attestation.Document) { d.Node = "worker-2" })
	if _, err := v.Validate(ctx, renamed, testNonce(4)); !errors.Is(err, ErrHostData) {
		t.Errorf("evidence of worker-1 that claims worker-2: %v, want ErrHostData", err)
	}
	// A cluster that pins HOST_DATA leaves the name unchecked: refused.
	pinned := clusterPolicy()
	h := HostDataForNode("worker-1")
	pinned.HostData = h[:]
	if _, err := testQEMUValidator(t, pinned).Validate(ctx, ev, testNonce(4)); err == nil || !strings.Contains(err.Error(), "pins HOST_DATA") {
		t.Errorf("named node under a policy that pins HOST_DATA: %v", err)
	}

	for name, r := range map[string]*launchedReporter{
		"another name": newLaunchedReporter(t, HostDataForNode("worker-2")),
		"no host data": newLaunchedReporter(t, [HostDataSize]byte{}),
	} {
		if _, err := NewNodeIssuer(ctx, r, "worker-1"); err == nil {
			t.Errorf("a guest launched with %s made an issuer for worker-1", name)
		}
	}
	if _, err := NewNodeIssuer(ctx, worker1, ""); err == nil {
		t.Error("an issuer for no name")
	}
}
