package clusterreport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/tpmtest/reporttest"
)

// TestVerifySEVSNPReport checks a report of aws-sev-snp nodes (SEV-SNP reports of a test PKI, vTPM quotes):
// the report carries the hardware policy and what the offline verifier needs besides the AMD roots, and
// every node's evidence verifies from it alone; evidence moved between nodes does not.
func TestVerifySEVSNPReport(t *testing.T) {
	fixtures(t)
	ctx := context.Background()
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	platform, err := pki.NewPlatform([snp.MeasurementSize]byte{0x4d})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.Roots()
	if err != nil {
		t.Fatal(err)
	}
	clusterID := bytes.Repeat([]byte{0x5c}, 32)
	var entries []clusterreport.NodeEntry
	var issuers []*snp.VTPMIssuer
	for i, name := range []string{"control-plane-0", "worker-0", "worker-1"} {
		tpm, err := snptest.NewVTPM()
		if err != nil {
			t.Fatal(err)
		}
		tpm.Extend(measurements.PCRClusterID, measurements.ClusterIDEvent(clusterID).Data)
		iss, err := snp.NewVTPMIssuer(attestation.AWSSEVSNP, platform, tpm)
		if err != nil {
			t.Fatal(err)
		}
		issuers = append(issuers, iss)
		role := clusterreport.RoleWorker
		if i == 0 {
			role = clusterreport.RoleControlPlane
		}
		entries = append(entries, clusterreport.NodeEntry{Name: name, Role: role, Endpoint: "10.0.0." + string(rune('1'+i)) + ":9090"})
	}
	img := clusterreport.Image{Digest: reporttest.ImageDigest, Variant: attestation.AWSSEVSNP.Name, Measurements: fx.snpMeasurementsJSON, Bundle: fx.snpBundle}
	policy := &validators.Policy{
		Variant:      attestation.AWSSEVSNP.Name,
		Measurements: measurements.MemberPolicy(fx.snpMeasurements, clusterID),
		SNP:          &validators.SNP{Policy: *platform.Policy()},
	}
	seed := reporttest.NewSeed()
	r, err := clusterreport.New(time.Now(), seed, strings.Repeat("5c", 32), img, policy, entries)
	if err != nil {
		t.Fatal(err)
	}
	list := r.NodeList()
	for i := range r.Nodes {
		if r.Nodes[i].Evidence, err = issuers[i].Issue(ctx, list.Nonce(seed, r.Nodes[i].Name), nil); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The hardware policy travels in the report, readable.
	if !bytes.Contains(raw, []byte(`"minimumTCB"`)) || !bytes.Contains(raw, []byte(`"variant": "aws-sev-snp"`)) {
		t.Fatalf("the report lacks the SEV-SNP policy:\n%s", raw)
	}
	opts := clusterreport.VerifyOptions{AllowDevelopment: true, Validators: validators.Options{SNPRoots: roots, Now: func() time.Time { return snptest.Now }}}
	res, err := clusterreport.Verify(ctx, parse(t, raw), fx.c.RootJSON, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Nodes) != 3 || res.Policy.SNP == nil || res.AKRootsFromReport {
		t.Fatalf("result: %+v", res)
	}

	// Evidence moved to another node fails there.
	swapped := parse(t, raw)
	swapped.Nodes[1].Evidence, swapped.Nodes[2].Evidence = swapped.Nodes[2].Evidence, swapped.Nodes[1].Evidence
	if _, err := clusterreport.Verify(ctx, swapped, fx.c.RootJSON, opts); err == nil || !strings.Contains(err.Error(), "2 of 3 nodes failed: worker-0, worker-1") {
		t.Fatalf("swapped SEV-SNP evidence: %v", err)
	}
	// Against the embedded AMD roots, the test PKI's reports fail: the report brings no root of its own.
	embedded := opts
	embedded.Validators.SNPRoots = nil
	if _, err := clusterreport.Verify(ctx, parse(t, raw), fx.c.RootJSON, embedded); err == nil {
		t.Fatal("a report of the test PKI verified against the embedded AMD roots")
	}
	// Measurements signed for mini-vtpm do not verify as aws-sev-snp measurements.
	other := parse(t, raw)
	other.Image.Bundle = fx.c.Image.Bundle
	other.Image.Measurements = fx.c.Image.Measurements
	if _, err := clusterreport.Verify(ctx, other, fx.c.RootJSON, opts); err == nil {
		t.Fatal("mini-vtpm measurements verified for an aws-sev-snp report")
	}
	var hw map[string]any
	if err := json.Unmarshal(r.Policy.Hardware, &hw); err != nil || hw["snp"] == nil {
		t.Fatalf("hardware policy: %v %v", hw, err)
	}
}
