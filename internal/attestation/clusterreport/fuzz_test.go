package clusterreport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
)

// seedReport is a well-formed report whose signatures and evidence are not genuine: it passes Parse, and
// Verify refuses it.
func seedReport(f *testing.F) []byte {
	f.Helper()
	p := &validators.Policy{Variant: attestation.MiniVTPM.Name}
	r, err := clusterreport.New(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), bytes.Repeat([]byte{7}, clusterreport.SeedSize), strings.Repeat("ab", 32),
		clusterreport.Image{Digest: "sha256:" + strings.Repeat("11", 32), Variant: attestation.MiniVTPM.Name, Measurements: []byte(`{"4":{"expected":"` + strings.Repeat("22", 32) + `"}}`), Bundle: []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`)},
		p, []clusterreport.NodeEntry{{Name: "worker-0", Role: clusterreport.RoleWorker, Endpoint: "10.217.0.12:9090"}, {Name: "control-plane-0", Role: clusterreport.RoleControlPlane, Endpoint: "10.217.0.11:9090"}})
	if err != nil {
		f.Fatal(err)
	}
	for i := range r.Nodes {
		r.Nodes[i].Evidence = []byte(`{"version":1,"variant":"mini-vtpm","tpm":{"quotes":[]}}`)
	}
	raw, err := r.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	if _, err := clusterreport.Parse(raw); err != nil {
		f.Fatalf("the seed report does not parse: %v", err)
	}
	return raw
}

// FuzzParse feeds arbitrary bytes to the report parser, and what it accepts to the verifier (with a trusted
// root of its own, so nothing verifies): neither may panic, and an accepted report must encode and parse again
// to the same report.
func FuzzParse(f *testing.F) {
	good := seedReport(f)
	f.Add(good)
	// A genuine report of three nodes with their own swtpm, as TestVerifyGenuineReport's fixture writes it.
	recorded, err := os.ReadFile("testdata/report.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(recorded)
	f.Add(bytes.Replace(good, []byte(`"version": 1`), []byte(`"version": 2`), 1))
	f.Add(bytes.Replace(good, []byte(`"role": "worker"`), []byte(`"role": "admin"`), 1))
	f.Add(bytes.Replace(good, []byte(`"clusterID"`), []byte(`"ClusterID"`), 1))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":1,"nodes":[]}`))
	key := signtest.NewKey()
	var root []byte
	root, err = json.Marshal(signed.Root{
		Keys: []signed.Key{{Name: "fuzz", PublicKey: &key.PublicKey}},
		Log:  signed.Log{Origin: "log.fuzz.invalid", PublicKey: &signtest.NewKey().PublicKey},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := clusterreport.Parse(raw)
		if err != nil {
			return
		}
		again, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		r2, err := clusterreport.Parse(again)
		if err != nil {
			t.Fatalf("a parsed report does not parse again: %v", err)
		}
		if r2.NodeList().Digest() != r.NodeList().Digest() {
			t.Fatal("the node list changed in a round trip")
		}
		if _, err := clusterreport.Verify(context.Background(), r, root, clusterreport.VerifyOptions{AllowDevelopment: true}); err == nil {
			t.Fatal("a report verified against a root no one signs with")
		}
	})
}
