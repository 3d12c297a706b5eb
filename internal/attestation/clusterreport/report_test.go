package clusterreport_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/tpmtest/reporttest"
)

const otherImage = "sha256:2222222222222222222222222222222222222222222222222222222222222222"

// fx is a cluster of three nodes with real TPMs and two reports of it, made once; the transparency log is
// stopped before any test verifies, so every verification is offline.
var fx struct {
	once sync.Once
	err  error
	dir  string
	c    *reporttest.Cluster
	// good and second are reports of the cluster for two seeds.
	good, second []byte
	// otherImageBundle signs the same measurements for another image digest.
	otherImageBundle []byte
	// otherLogRoot is the trusted root with another log key.
	otherLogRoot []byte
	// snpMeasurements are the PCRs of the SEV-SNP test vTPMs, signed for aws-sev-snp in snpBundle.
	snpMeasurements     measurements.M
	snpMeasurementsJSON []byte
	snpBundle           []byte
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fx.c != nil {
		fx.c.Close()
	}
	if fx.dir != "" {
		os.RemoveAll(fx.dir)
	}
	os.Exit(code)
}

func fixtures(t testing.TB) {
	t.Helper()
	fx.once.Do(func() { fx.err = setup() })
	if fx.err != nil {
		t.Fatalf("setting up the test cluster: %v", fx.err)
	}
}

func setup() error {
	ctx := context.Background()
	var err error
	if fx.dir, err = reporttest.TempDir(); err != nil {
		return err
	}
	if fx.c, err = reporttest.Start(ctx, fx.dir, 2); err != nil {
		return err
	}
	if fx.otherImageBundle, err = fx.c.Sign(ctx, fx.c.Image.Measurements, otherImage, fx.c.Image.Variant); err != nil {
		return err
	}
	vtpm, err := snptest.NewVTPM()
	if err != nil {
		return err
	}
	fx.snpMeasurements = vtpm.Policy()
	if fx.snpMeasurementsJSON, err = json.Marshal(fx.snpMeasurements); err != nil {
		return err
	}
	if fx.snpBundle, err = fx.c.Sign(ctx, fx.snpMeasurementsJSON, reporttest.ImageDigest, attestation.AWSSEVSNP.Name); err != nil {
		return err
	}
	fx.c.StopLog()
	root, err := signed.ParseRoot(fx.c.RootJSON)
	if err != nil {
		return err
	}
	root.Log.PublicKey = &signtest.NewKey().PublicKey
	if fx.otherLogRoot, err = json.Marshal(root); err != nil {
		return err
	}
	for _, out := range []*[]byte{&fx.good, &fx.second} {
		r, err := fx.c.Report(ctx, reporttest.NewSeed(), time.Now())
		if err != nil {
			return err
		}
		if *out, err = r.Marshal(); err != nil {
			return err
		}
	}
	return nil
}

// parse returns a fresh copy of a fixture report.
func parse(t *testing.T, raw []byte) *clusterreport.Report {
	t.Helper()
	r, err := clusterreport.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func verify(r *clusterreport.Report, root []byte) (*clusterreport.Result, error) {
	return clusterreport.Verify(context.Background(), r, root, clusterreport.VerifyOptions{AllowDevelopment: true, TrustReportAKRoots: true})
}

func TestVerifyGenuineReport(t *testing.T) {
	fixtures(t)
	r := parse(t, fx.good)
	res, err := verify(r, fx.c.RootJSON)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Nodes) != 3 || !res.AKRootsFromReport || !res.Signature.Key.Development || res.Signature.Predicate.ImageDigest != reporttest.ImageDigest {
		t.Fatalf("result: %+v", res)
	}
	for i, want := range []string{"control-plane-0", "worker-0", "worker-1"} {
		n := res.Nodes[i]
		if n.Name != want || n.Subject != want || n.Err != nil || len(n.Nonce) != 32 {
			t.Errorf("node %d: %+v", i, n)
		}
	}
	// Every node has a nonce of its own.
	if bytes.Equal(res.Nodes[0].Nonce, res.Nodes[1].Nonce) {
		t.Error("two nodes share a nonce")
	}
	// The policy is the signed measurements and PCR 15.
	if len(res.Policy.Measurements) != 4 {
		t.Errorf("policy: %v", res.Policy.Measurements)
	}
	// ATTACK: the report's writer certified the nodes' attestation keys with a CA of its own (as a forger with
	// software TPMs extended to the signed measurements would): unless the reader pins the CA, or says it
	// accepts the report's, nothing verifies.
	if _, err := clusterreport.Verify(context.Background(), r, fx.c.RootJSON, clusterreport.VerifyOptions{AllowDevelopment: true}); !errors.Is(err, clusterreport.ErrUnpinnedAKRoots) {
		t.Fatalf("a report with the writer's own attestation-key CA, nothing pinned: %v", err)
	}
	// Pinned roots that are the report's verify; the result says they were pinned.
	res, err = clusterreport.Verify(context.Background(), r, fx.c.RootJSON, clusterreport.VerifyOptions{AllowDevelopment: true, AKRoots: fx.c.AKRoots, Seed: r.Seed})
	if err != nil || res.AKRootsFromReport {
		t.Fatalf("with pinned roots and seed: %v %+v", err, res)
	}
	// Measurements signed with the development key verify only on request.
	if _, err := clusterreport.Verify(context.Background(), r, fx.c.RootJSON, clusterreport.VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "--allow-dev-signed") {
		t.Fatalf("development-signed measurements without AllowDevelopment: %v", err)
	}
	// Marshal and Parse round-trip to the same bytes.
	again, err := r.Marshal()
	if err != nil || !bytes.Equal(again, fx.good) {
		t.Fatalf("the report does not round-trip: %v", err)
	}
}

// TestAttacks performs the attacks on a report that a verifier must catch; each must fail verification.
func TestAttacks(t *testing.T) {
	fixtures(t)
	second := parse(t, fx.second)
	for _, tc := range []struct {
		name string
		// attack alters the report; root is the trusted root the verifier uses (the genuine one if nil).
		attack func(r *clusterreport.Report)
		root   []byte
		opts   *clusterreport.VerifyOptions
		// want is in the error; failed are the nodes whose evidence must fail (none: nothing is checked).
		want   string
		failed []string
	}{
		{
			name: "swap the evidence of two nodes",
			attack: func(r *clusterreport.Report) {
				r.Nodes[0].Evidence, r.Nodes[1].Evidence = r.Nodes[1].Evidence, r.Nodes[0].Evidence
			},
			want: "2 of 3 nodes failed: control-plane-0, worker-0", failed: []string{"control-plane-0", "worker-0"},
		},
		{
			name:   "evidence of the same node from another report",
			attack: func(r *clusterreport.Report) { r.Nodes[1].Evidence = second.Nodes[1].Evidence },
			want:   "1 of 3 nodes failed: worker-0", failed: []string{"worker-0"},
		},
		{
			name:   "another report's seed",
			attack: func(r *clusterreport.Report) { r.Seed = second.Seed },
			want:   "3 of 3 nodes failed", failed: []string{"control-plane-0", "worker-0", "worker-1"},
		},
		{
			name:   "drop a node listed in the report",
			attack: func(r *clusterreport.Report) { r.Nodes = r.Nodes[:2] },
			want:   "2 of 2 nodes failed", failed: []string{"control-plane-0", "worker-0"},
		},
		{
			name:   "rename a node",
			attack: func(r *clusterreport.Report) { r.Nodes[2].Name = "worker-9" },
			want:   "3 of 3 nodes failed", failed: []string{"control-plane-0", "worker-0", "worker-9"},
		},
		{
			name:   "change a node's role",
			attack: func(r *clusterreport.Report) { r.Nodes[2].Role = clusterreport.RoleControlPlane },
			want:   "3 of 3 nodes failed", failed: []string{"control-plane-0", "worker-0", "worker-1"},
		},
		{
			name:   "bundle signed for another image digest",
			attack: func(r *clusterreport.Report) { r.Image.Bundle = fx.otherImageBundle },
			want:   "not for image " + reporttest.ImageDigest,
		},
		{
			name: "another image digest with its genuine bundle",
			attack: func(r *clusterreport.Report) {
				r.Image.Bundle, r.Image.Digest = fx.otherImageBundle, otherImage
			},
			want: "3 of 3 nodes failed", failed: []string{"control-plane-0", "worker-0", "worker-1"},
		},
		{
			name:   "trusted root with another log key",
			attack: func(*clusterreport.Report) {},
			root:   fx.otherLogRoot,
			want:   "the measurements bundle does not verify",
		},
		{
			// A weaker policy that the genuine evidence still meets: without PCR 0, in the file and the policy.
			name: "modified measurements file",
			attack: func(r *clusterreport.Report) {
				var m map[string]any
				if err := json.Unmarshal(r.Image.Measurements, &m); err != nil {
					t.Fatal(err)
				}
				delete(m, "0")
				r.Image.Measurements, _ = json.Marshal(m)
				delete(r.Policy.Measurements, 0)
			},
			want: "does not verify",
		},
		{
			name: "measurements file with one byte more",
			attack: func(r *clusterreport.Report) {
				r.Image.Measurements = append(r.Image.Measurements, '\n')
			},
			want: "does not verify",
		},
		{
			name: "policy in the report other than the signed measurements",
			attack: func(r *clusterreport.Report) {
				m := r.Policy.Measurements[8]
				m.WarnOnly = true
				r.Policy.Measurements[8] = m
			},
			want: "the report's policy is not the signed measurements with the cluster ID: PCRs [8] differ",
		},
		{
			name:   "another cluster ID",
			attack: func(r *clusterreport.Report) { r.ClusterID = strings.Repeat("ab", 32) },
			want:   "PCRs [15] differ",
		},
		{
			name: "another cluster ID in report and policy",
			attack: func(r *clusterreport.Report) {
				r.ClusterID = strings.Repeat("ab", 32)
				r.Policy.Measurements[measurements.PCRClusterID] = measurements.Measurement{Expected: measurements.ExpectedClusterIDPCR(bytes.Repeat([]byte{0xab}, 32))}
			},
			want: "3 of 3 nodes failed", failed: []string{"control-plane-0", "worker-0", "worker-1"},
		},
		{
			name:   "another creation time",
			attack: func(r *clusterreport.Report) { r.Created = "2020-01-01T00:00:00Z" },
			want:   "3 of 3 nodes failed", failed: []string{"control-plane-0", "worker-0", "worker-1"},
		},
		{
			name:   "attestation-key roots other than the pinned ones",
			attack: func(*clusterreport.Report) {},
			opts:   &clusterreport.VerifyOptions{AllowDevelopment: true, AKRoots: otherRoots(t)},
			want:   "not the pinned ones",
		},
		{
			name:   "a seed other than the one the reader chose",
			attack: func(*clusterreport.Report) {},
			opts:   &clusterreport.VerifyOptions{AllowDevelopment: true, TrustReportAKRoots: true, Seed: second.Seed},
			want:   "is not the seed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := parse(t, fx.good)
			tc.attack(r)
			root := fx.c.RootJSON
			if tc.root != nil {
				root = tc.root
			}
			opts := clusterreport.VerifyOptions{AllowDevelopment: true, TrustReportAKRoots: true}
			if tc.opts != nil {
				opts = *tc.opts
			}
			res, err := clusterreport.Verify(context.Background(), r, root, opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want an error with %q", err, tc.want)
			}
			if tc.failed == nil {
				if res != nil && len(res.Nodes) > 0 {
					t.Fatalf("nodes were checked although the report is refused as a whole: %+v", res.Nodes)
				}
				return
			}
			if !errors.Is(err, clusterreport.ErrNodes) {
				t.Fatalf("error %v is not about nodes", err)
			}
			var failed []string
			for _, n := range res.Nodes {
				if n.Err != nil {
					failed = append(failed, n.Name)
				}
			}
			if strings.Join(failed, ",") != strings.Join(tc.failed, ",") {
				t.Fatalf("failed nodes %v, want %v", failed, tc.failed)
			}
			// The same report, written and read again, fails the same way.
			raw, err := r.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := clusterreport.Verify(context.Background(), parse(t, raw), root, opts); err == nil {
				t.Fatal("the written report verifies")
			}
		})
	}
}

// TestFlipEvidenceBytes flips bytes all over every node's evidence; every altered report must fail, on that
// node.
func TestFlipEvidenceBytes(t *testing.T) {
	fixtures(t)
	base := parse(t, fx.good)
	for i := range base.Nodes {
		ev := base.Nodes[i].Evidence
		step := max(1, len(ev)/150)
		for off := i; off < len(ev); off += step {
			r := *base
			r.Nodes = slices.Clone(base.Nodes)
			r.Nodes[i].Evidence = bytes.Clone(ev)
			r.Nodes[i].Evidence[off] ^= 0x01
			res, err := verify(&r, fx.c.RootJSON)
			if err == nil {
				t.Fatalf("node %s: evidence with byte %d flipped (%q) verifies", r.Nodes[i].Name, off, ev[max(0, off-20):min(len(ev), off+20)])
			}
			for j, n := range res.Nodes {
				if (n.Err != nil) != (j == i) {
					t.Fatalf("byte %d of %s flipped: node %s: %v", off, r.Nodes[i].Name, n.Name, n.Err)
				}
			}
		}
	}
}

func otherRoots(t *testing.T) []*x509.Certificate {
	t.Helper()
	ca, err := tpmtest.NewAKCA(fx.c.AKRoots...)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{ca.Certificate()}
}
