package keyservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// syncBuffer is a log sink safe for the concurrent writes of a server and a test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testSecret(t testing.TB) *Secret {
	t.Helper()
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := kms.NewDeriver(ms)
	id, _ := d.ClusterID()
	return &Secret{MasterSecret: ms, ClusterID: id, Measurements: measurements.M{4: {Expected: measurements.Digest{0x44}}, 8: {Expected: measurements.Digest{0x88}}}}
}

// serveSecrets serves a holder on an owner-only socket, as the bootstrapper does.
func serveSecrets(t *testing.T, log *slog.Logger) (*SecretHolder, string) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "keys.sock")
	ln, err := agent.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	h := NewSecretHolder(log)
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return h, socket
}

// The bootstrapper hands the master secret to the key service over an owner-only socket, only once it has it,
// and logs the handover without the secret.
func TestSecretHandover(t *testing.T) {
	var logged syncBuffer
	h, socket := serveSecrets(t, slog.New(slog.NewJSONHandler(&logged, nil)))
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret socket: %v, mode %v; want owner-only", err, fi.Mode().Perm())
	}
	if _, err := FetchSecret(context.Background(), socket); !errors.Is(err, ErrNoSecretYet) {
		t.Fatalf("FetchSecret before the node has the secret = %v, want ErrNoSecretYet", err)
	}
	bad := testSecret(t)
	bad.MasterSecret.Key = bad.MasterSecret.Key[:16]
	if err := h.Set(bad); err == nil {
		t.Fatal("a short master secret was accepted")
	}
	noPolicy := testSecret(t)
	noPolicy.Measurements = nil
	if err := h.Set(noPolicy); err == nil || !strings.Contains(err.Error(), "neither measurements nor an attestation policy") {
		t.Fatalf("Set without measurements = %v", err)
	}
	if _, err := FetchSecret(context.Background(), socket); !errors.Is(err, ErrNoSecretYet) {
		t.Fatalf("FetchSecret after refused secrets = %v, want ErrNoSecretYet", err)
	}

	want := testSecret(t)
	if err := h.Set(want); err != nil {
		t.Fatal(err)
	}
	got, err := FetchSecret(context.Background(), socket)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.MasterSecret.Key, want.MasterSecret.Key) || !bytes.Equal(got.MasterSecret.Salt, want.MasterSecret.Salt) ||
		!bytes.Equal(got.ClusterID, want.ClusterID) || !maps.Equal(got.Measurements, want.Measurements) {
		t.Fatal("the key service got another secret than the bootstrapper handed over")
	}
	log := logged.String()
	if !strings.Contains(log, "master secret handed to the key service") {
		t.Fatalf("handover not logged:\n%s", log)
	}
	for _, enc := range []string{hex.EncodeToString(want.MasterSecret.Key), base64.StdEncoding.EncodeToString(want.MasterSecret.Key)} {
		if strings.Contains(log, enc) {
			t.Fatal("the log holds the master secret")
		}
	}
	if s := want.String(); strings.Contains(s, hex.EncodeToString(want.MasterSecret.Key)) {
		t.Fatal("Secret.String prints the master secret")
	}
	if _, err := FetchSecret(context.Background(), filepath.Join(t.TempDir(), "missing.sock")); err == nil || errors.Is(err, ErrNoSecretYet) {
		t.Fatalf("FetchSecret from a missing socket = %v", err)
	}
}

func secretWire(t testing.TB, edit func(m map[string]any)) []byte {
	t.Helper()
	s := testSecret(t)
	raw, _ := json.Marshal(secretJSON{Version: secretVersion, Key: s.MasterSecret.Key, Salt: s.MasterSecret.Salt, ClusterID: s.ClusterID, Measurements: s.Measurements})
	if edit == nil {
		return raw
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	edit(m)
	raw, _ = json.Marshal(m)
	return raw
}

func TestParseSecretRejects(t *testing.T) {
	if _, err := ParseSecret(secretWire(t, nil)); err != nil {
		t.Fatalf("valid secret refused: %v", err)
	}
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	for name, tc := range map[string]struct {
		raw  []byte
		want string
	}{
		"unknown field":    {secretWire(t, func(m map[string]any) { m["kek"] = "x" }), "unknown field"},
		"other version":    {secretWire(t, func(m map[string]any) { m["version"] = 2 }), "version 2"},
		"short key":        {secretWire(t, func(m map[string]any) { m["key"] = short }), "master secret key has 16 bytes"},
		"no salt":          {secretWire(t, func(m map[string]any) { delete(m, "salt") }), "salt has 0 bytes"},
		"short cluster ID": {secretWire(t, func(m map[string]any) { m["clusterID"] = short }), "cluster ID has 16 bytes"},
		"no measurements":  {secretWire(t, func(m map[string]any) { delete(m, "measurements") }), "neither measurements nor an attestation policy"},
		"empty policy":     {secretWire(t, func(m map[string]any) { m["measurements"] = map[string]any{} }), "neither measurements nor an attestation policy"},
		"bad PCR": {secretWire(t, func(m map[string]any) {
			m["measurements"] = map[string]any{"99": map[string]any{"expected": strings.Repeat("00", 32)}}
		}), "PCR"},
		"trailing data": {append(secretWire(t, nil), []byte(" {}")...), "trailing data"},
		// Two readers of a repeated key would disagree on the cluster ID (encoding/json takes the last).
		"cluster ID twice":  {append(bytes.TrimSuffix(secretWire(t, nil), []byte("}")), []byte(`,"clusterID":"`+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))+`"}`)...), "twice"},
		"truncated":         {secretWire(t, nil)[:40], "parsing"},
		"not JSON":          {[]byte("master secret"), "parsing"},
		"larger than limit": {bytes.Repeat([]byte(" "), maxSecret+1), "larger than"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseSecret(tc.raw); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseSecret = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// The bootstrapper's handover decides whom the key service serves: a policy that would accept any node image,
// or the genuine image booted with any boot parameters, is refused on both sides of the socket.
func TestSecretRefusesAcceptAnyImage(t *testing.T) {
	s := testSecret(t)
	s.Measurements[0] = measurements.Measurement{Expected: measurements.Digest{0x11}}
	for name, bad := range tpmtest.AcceptAnyImage(s.Measurements) {
		t.Run(name, func(t *testing.T) {
			raw := secretWire(t, func(m map[string]any) {
				pcrs, _ := json.Marshal(bad)
				var v any
				json.Unmarshal(pcrs, &v)
				m["measurements"] = v
			})
			if _, err := ParseSecret(raw); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
				t.Errorf("ParseSecret = %v, want ErrAcceptsAnyImage", err)
			}
			c := *s
			c.Measurements = bad
			if err := NewSecretHolder(slog.New(slog.DiscardHandler)).Set(&c); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
				t.Errorf("Set = %v, want ErrAcceptsAnyImage", err)
			}
		})
	}
}

func FuzzParseSecret(f *testing.F) {
	f.Add(secretWire(f, nil))
	f.Add(secretWire(f, func(m map[string]any) { m["version"] = 2 }))
	f.Add([]byte(`{"version":1}`))
	f.Add(snpSecretWire(f, snpAttestation(f)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := ParseSecret(raw)
		if err != nil {
			return
		}
		// What parses is a secret the bootstrapper would hand over, and it reads back the same.
		h := NewSecretHolder(slog.New(slog.DiscardHandler))
		if err := h.Set(s); err != nil {
			t.Fatalf("parsed secret refused by Set: %v", err)
		}
		again, err := ParseSecret(h.secret)
		if err != nil || !bytes.Equal(again.MasterSecret.Key, s.MasterSecret.Key) || !bytes.Equal(again.ClusterID, s.ClusterID) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// runKeyService runs the key service as in its pod, on node, with the shared disk bindings of api, letting
// the callers allowed names (control-plane nodes) get keys; the bootstrapper hands it secret. It returns the
// service's address; the service stops with the test.
func runKeyService(t *testing.T, node *tpmtest.Node, roots []*x509.Certificate, secret *Secret, api *kubeapitest.Server, allowed func(string) bool, log *slog.Logger) string {
	t.Helper()
	h, socket := serveSecrets(t, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			Listener: ln, SecretSocket: socket, Issuer: node.Issuer,
			AKRoots:      func(context.Context) ([]*x509.Certificate, error) { return roots, nil },
			Allowed:      func(_ context.Context, name string) (bool, error) { return allowed(name), nil },
			DiskBindings: NewAPIDiskBindings(api.Client(t)),
			PolicyFile:   filepath.Join(t.TempDir(), "measurement-policy.json"),
			Log:          log,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	})
	if err := h.Set(secret); err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String()
}

// bootPolicy is the policy of node's boot, without the cluster-ID PCR.
func bootPolicy(node *tpmtest.Node) measurements.M {
	policy := measurements.M{}
	for k, v := range node.Policy {
		if k != measurements.PCRClusterID {
			policy[k] = v
		}
	}
	return policy
}

// The key service as it runs in its pod: it waits for the bootstrapper's handover, then serves keys derived from
// that master secret, only to control-plane members of the cluster named in the handover.
func TestRunServesAfterHandover(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	secret := testSecret(t)
	policy := bootPolicy(node)
	secret.Measurements = policy
	// The first control-plane node's own disk, whose key it derived itself.
	secret.Node, secret.DiskUUID = "control-plane-0", "5d0e7c51-2b1e-4f3a-8c7d-9a0b1c2d3e4f"
	api := kubeapitest.New(t, DiskBindingsNamespace)
	var logged syncBuffer
	log := slog.New(slog.NewJSONHandler(&logged, nil))
	var allowed sync.Map
	addr := runKeyService(t, node, []*x509.Certificate{node.CA.Certificate()}, secret, api, func(name string) bool { _, ok := allowed.Load(name); return ok }, log)
	// The caller checks the key service against the cluster's measurements (both are the same node here).
	service, err := vtpm.NewValidator([]*x509.Certificate{node.CA.Certificate()}, policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A new connection per request: a refused handshake ends the connection it was made on.
	get := func(id string) ([]byte, error) {
		c, err := NewClient(addr, node.Issuer, []attestation.Validator{service})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.GetDiskKey(ctx, id, "node-0", kms.DiskKeySize)
	}
	id := "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	// Not yet a member: PCR 15 does not hold the cluster ID.
	allowed.Store("node-0", true)
	if _, err := get(id); err == nil {
		t.Fatal("a node that is not a member of the cluster got a key")
	}
	ev := measurements.ClusterIDEvent(secret.ClusterID)
	if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	key, err := get(id)
	if err != nil {
		t.Fatalf("GetDataKey by a member: %v", err)
	}
	d, _ := kms.NewDeriver(secret.MasterSecret)
	if want, _ := d.DiskKey("0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"); !bytes.Equal(key, want) {
		t.Fatal("the key service derived from another master secret than the one handed over")
	}
	// The first control-plane node's disk is bound to it from the start: a copy of it gets no key.
	if _, err := get(secret.DiskUUID); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the first control-plane node's disk for another node: %v, want PermissionDenied", err)
	}
	for disk, owner := range map[string]string{secret.DiskUUID: "control-plane-0", id: "node-0"} {
		if cm, ok := api.ConfigMap(t, DiskBindingsNamespace, "disk-"+disk); !ok || cm.Data["node"] != owner {
			t.Fatalf("recorded binding of %s: %+v %v, want %s", disk, cm, ok, owner)
		}
	}
	// A member that is not a control-plane node is refused.
	allowed.Delete("node-0")
	if _, err := get(id); err == nil {
		t.Fatal("a caller the restriction refuses got a key")
	}
	if !strings.Contains(logged.String(), `"msg":"key service serving over mutual aTLS, for control-plane members only"`) {
		t.Fatalf("log:\n%s", logged.String())
	}
}

func TestRunRefusesIncompleteOptions(t *testing.T) {
	if err := Run(context.Background(), Options{}); err == nil {
		t.Fatal("Run without options succeeded")
	}
	// Everything but the policy file: a key service that keeps the policy in memory only would forget an
	// update at its next start and admit the image the operator removed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := Options{
		Listener: ln, SecretSocket: filepath.Join(t.TempDir(), "secret.sock"), Issuer: agent.NewClient(filepath.Join(t.TempDir(), "agent.sock"), attestation.MiniVTPM),
		AKRoots:      func(context.Context) ([]*x509.Certificate, error) { return nil, nil },
		Allowed:      func(context.Context, string) (bool, error) { return true, nil },
		DiskBindings: NewAPIDiskBindings(nil),
		Log:          slog.New(slog.DiscardHandler),
	}
	if err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "policy file") {
		t.Fatalf("Run without a policy file: %v, want a refusal naming the policy file", err)
	}
}
