package metadata

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func newServer(t *testing.T) (*Server, *Client) {
	t.Helper()
	key, cert, err := tpmtest.NewCACert("ak ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, ekRoot, err := tpmtest.NewCACert("ek root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := akca.New(key, cert, []*x509.Certificate{ekRoot})
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ca, nil)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return s, NewClient(hs.URL)
}

func TestInstances(t *testing.T) {
	s, c := newServer(t)
	ctx := context.Background()
	if _, err := c.Self(ctx); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Self from an unknown address = %v", err)
	}
	if _, err := c.EventLog(ctx); err == nil {
		t.Fatal("event log served to an unknown address")
	}
	s.SetInstance(Instance{Name: "worker-0", Role: RoleWorker, IP: "10.0.0.3"}, nil, nil)
	s.SetInstance(Instance{Name: "cp-0", Role: RoleControlPlane, IP: "127.0.0.1"}, []byte("log"), nil)
	self, err := c.Self(ctx)
	if err != nil || self.Name != "cp-0" {
		t.Fatalf("Self = %+v, %v", self, err)
	}
	if log, err := c.EventLog(ctx); err != nil || string(log) != "log" {
		t.Fatalf("EventLog = %q, %v", log, err)
	}
	// An instance whose firmware keeps its own log gets none from the provider.
	s.SetInstance(Instance{Name: "cp-0", Role: RoleControlPlane, IP: "127.0.0.1"}, nil, nil)
	if log, err := c.EventLog(ctx); err == nil || !strings.Contains(err.Error(), "own kernel") {
		t.Fatalf("EventLog of a machine with its own firmware = %q, %v", log, err)
	}
	list, err := c.Instances(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "cp-0" {
		t.Fatalf("Instances = %+v, %v", list, err)
	}
	s.RemoveInstance("127.0.0.1")
	if _, err := c.Self(ctx); err == nil {
		t.Fatal("removed instance still known")
	}
	if pem, err := c.AKCA(ctx); err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Fatalf("AKCA = %q, %v", pem, err)
	}
}

func TestEnrollmentRejectsBadRequests(t *testing.T) {
	s, c := newServer(t)
	ctx := context.Background()
	if _, err := c.Challenge(ctx, akca.EnrollRequest{Name: "n", EKCert: []byte("ek"), AKPublic: []byte{1}}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Challenge from an unknown address = %v", err)
	}
	s.SetInstance(Instance{Name: "n", Role: RoleWorker, IP: "127.0.0.1"}, nil, [][]byte{[]byte("ek")})
	for name, req := range map[string]akca.EnrollRequest{
		"another instance's name": {Name: "control-plane-1", EKCert: []byte("ek"), AKPublic: []byte{1}},
		"another TPM":             {Name: "n", EKCert: []byte("other ek"), AKPublic: []byte{1}},
	} {
		if _, err := c.Challenge(ctx, req); err == nil || !strings.Contains(err.Error(), "only in its own name") {
			t.Fatalf("%s: Challenge = %v", name, err)
		}
	}
	// The instance's own name and TPM pass this check; the CA then refuses the garbage EK certificate.
	if _, err := c.Challenge(ctx, akca.EnrollRequest{Name: "n", EKCert: []byte("ek"), AKPublic: []byte{1}}); err == nil || !strings.Contains(err.Error(), "403") || strings.Contains(err.Error(), "own name") {
		t.Fatalf("Challenge with a garbage EK certificate = %v", err)
	}
	if _, err := c.Complete(ctx, "unknown", make([]byte, 32)); err == nil || !strings.Contains(err.Error(), "unknown or expired") {
		t.Fatalf("Complete of an unknown challenge = %v", err)
	}
	resp, err := http.Post(c.base+"/v1/ak/challenge", "application/json", strings.NewReader(`{"name":"n","extra":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("unknown field: status %d, want 400", resp.StatusCode)
	}
	resp, err = http.Post(c.base+"/v1/ak/challenge", "application/json", strings.NewReader(strings.Repeat("[", 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("oversized body: status %d, want 400", resp.StatusCode)
	}
}

// A node reads the hash of the cluster's init secret from its instance metadata: only an instance of the
// cluster gets an answer, and a provider that was given no hash says so (the node then refuses Init).
func TestInitSecretHash(t *testing.T) {
	s, c := newServer(t)
	ctx := context.Background()
	if _, err := c.InitSecretHash(ctx); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("InitSecretHash from an unknown address = %v", err)
	}
	s.SetInstance(Instance{Name: "control-plane-0", Role: RoleControlPlane, IP: "127.0.0.1"}, nil, nil)
	if hash, err := c.InitSecretHash(ctx); err != nil || hash != nil {
		t.Fatalf("InitSecretHash without one = %x, %v; want none", hash, err)
	}
	if err := s.SetInitSecretHash([]byte("short")); err == nil {
		t.Fatal("a hash that is no SHA-256 was accepted")
	}
	want := sha256.Sum256([]byte("init secret"))
	if err := s.SetInitSecretHash(want[:]); err != nil {
		t.Fatal(err)
	}
	if hash, err := c.InitSecretHash(ctx); err != nil || !bytes.Equal(hash, want[:]) {
		t.Fatalf("InitSecretHash = %x, %v; want %x", hash, err, want)
	}
}

// The node parses the init-secret hash from the metadata service, which the host runs: whatever it answers,
// the result is no hash (refuse Init), an error, or exactly a SHA-256.
func FuzzParseInitSecretHash(f *testing.F) {
	sum := sha256.Sum256([]byte("init secret"))
	for _, seed := range []string{
		`{"sha256":""}`, `{"sha256":"` + hex.EncodeToString(sum[:]) + `"}`, `{"sha256":"ab"}`, `{"sha256":"zz"}`,
		`{"sha256":"` + hex.EncodeToString(sum[:]) + `","extra":1}`, `{"sha256":""}{}`, `[]`, ``, `null`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		hash, err := parseInitSecretHash(raw)
		if err != nil && hash != nil {
			t.Fatal("a hash with an error")
		}
		if hash != nil && len(hash) != sha256.Size {
			t.Fatalf("a hash of %d bytes", len(hash))
		}
	})
}

// The peer policy the operator sets reaches the nodes in its canonical form; an invalid one is refused when
// it is set, and removing it leaves none.
func TestPeerPolicy(t *testing.T) {
	s, c := newServer(t)
	ctx := context.Background()
	if _, err := c.PeerPolicy(ctx); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("PeerPolicy from an unknown address = %v", err)
	}
	s.SetInstance(Instance{Name: "worker-0", Role: RoleWorker, IP: "127.0.0.1"}, nil, nil)
	if raw, err := c.PeerPolicy(ctx); err != nil || raw != nil {
		t.Fatalf("PeerPolicy without one = %q, %v; want none", raw, err)
	}
	set := func(b byte) measurements.M {
		return measurements.M{
			0:                          {Expected: measurements.Digest(bytes.Repeat([]byte{0x0f}, 32))},
			measurements.PCRNodeImage:  {Expected: measurements.Digest(bytes.Repeat([]byte{b}, 32))},
			measurements.PCRBootParams: {Expected: measurements.Digest(bytes.Repeat([]byte{0x88}, 32))},
		}
	}
	hint, err := policyupdate.NewPeerHint(set(1), set(2))
	if err != nil {
		t.Fatal(err)
	}
	spaced := bytes.ReplaceAll(hint.Marshal(), []byte(","), []byte(", "))
	if err := s.SetPeerPolicy(spaced); err != nil {
		t.Fatal(err)
	}
	if raw, err := c.PeerPolicy(ctx); err != nil || !bytes.Equal(raw, hint.Marshal()) {
		t.Fatalf("PeerPolicy = %q, %v; want %q", raw, err, hint.Marshal())
	}
	if err := s.SetPeerPolicy([]byte(`{"version":1,"sets":[]}`)); err == nil {
		t.Fatal("a peer policy without sets was accepted")
	}
	if err := s.SetPeerPolicy(nil); err != nil {
		t.Fatal(err)
	}
	if raw, err := c.PeerPolicy(ctx); err != nil || raw != nil {
		t.Fatalf("PeerPolicy after its removal = %q, %v; want none", raw, err)
	}
}
