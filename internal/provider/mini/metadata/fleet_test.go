package metadata

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/provider"
)

// recordingFleet is the provider's side behind the fleet API: it records what it was asked to do.
type recordingFleet struct {
	mu    sync.Mutex
	calls []string
}

func (f *recordingFleet) CreateNode(_ context.Context, role, digest string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "create "+role+" "+digest)
	return fmt.Sprintf("worker-%d", len(f.calls)), nil
}

func (f *recordingFleet) DeleteNode(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == "control-plane-0" {
		return fmt.Errorf("%s is the cluster's last running control-plane node", name)
	}
	f.calls = append(f.calls, "delete "+name)
	return nil
}

func (f *recordingFleet) done() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// syncBuffer collects log output written from the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fleetFixture struct {
	srv        *Server
	url        string
	fleet      *recordingFleet
	credential []byte
	log        *syncBuffer
}

func newFleetServer(t *testing.T) *fleetFixture {
	t.Helper()
	s, c := newServer(t)
	logs := &syncBuffer{}
	s.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cred := make([]byte, provider.FleetCredentialSize)
	rand.Read(cred)
	hash := sha256.Sum256(cred)
	f := &recordingFleet{}
	if err := s.SetFleet(f, hash[:]); err != nil {
		t.Fatal(err)
	}
	return &fleetFixture{srv: s, url: c.base, fleet: f, credential: cred, log: logs}
}

const testDigest = "sha256:869c58ec9ff38032095c612bb97dfe270c07f1707107d66f174bd427116ee3e0"

// send sends a fleet request with the given Authorization headers and returns the status and body.
func send(t *testing.T, method, url, body string, auth ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// The attack: someone who can reach the metadata service (any node, any pod with the node's network, anyone
// on the node network) asks it to create or delete nodes without the controller credential: without one,
// with a wrong one, with its hash (what the provider holds, and what leaks from it), in another scheme, twice,
// or with what a node knows from its own metadata (its init-secret hash). Every request is refused with 401
// before its body is read, and the provider is asked nothing.
func TestFleetRefusesWithoutTheCredential(t *testing.T) {
	fx := newFleetServer(t)
	credHex := hex.EncodeToString(fx.credential)
	hash := sha256.Sum256(fx.credential)
	other := make([]byte, provider.FleetCredentialSize)
	rand.Read(other)
	// The requests come from 127.0.0.1: make that a control-plane node of the cluster, which knows the
	// init-secret hash from its metadata.
	fx.srv.SetInstance(Instance{Name: "control-plane-0", Role: RoleControlPlane, IP: "127.0.0.1"}, nil, nil)
	initHash := sha256.Sum256([]byte("init secret"))
	if err := fx.srv.SetInitSecretHash(initHash[:]); err != nil {
		t.Fatal(err)
	}
	nodeKnows, err := NewClient(fx.url).InitSecretHash(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for name, auth := range map[string][]string{
		"no credential":               nil,
		"empty bearer":                {"Bearer "},
		"wrong credential":            {"Bearer " + hex.EncodeToString(other)},
		"the credential's hash":       {"Bearer " + hex.EncodeToString(hash[:])},
		"the hash, base64":            {"Bearer " + base64.StdEncoding.EncodeToString(hash[:])},
		"the credential, base64":      {"Bearer " + base64.StdEncoding.EncodeToString(fx.credential)},
		"the credential, Basic":       {"Basic " + credHex},
		"the credential, no scheme":   {credHex},
		"a prefix of the credential":  {"Bearer " + credHex[:32]},
		"the credential, uppercase":   {"bearer " + credHex},
		"twice":                       {"Bearer " + hex.EncodeToString(other), "Bearer " + credHex},
		"the node's init-secret hash": {"Bearer " + hex.EncodeToString(nodeKnows)},
	} {
		for _, req := range []struct{ method, path, body string }{
			{http.MethodPost, "/v1/fleet/nodes", `{"role":"worker","imageDigest":"` + testDigest + `"}`},
			{http.MethodPost, "/v1/fleet/nodes", `garbage`}, // refused as unauthorised, not as malformed: the body is not read
			{http.MethodDelete, "/v1/fleet/nodes/worker-0", ""},
		} {
			code, body := send(t, req.method, fx.url+req.path, req.body, auth...)
			if code != http.StatusUnauthorized || !strings.Contains(body, "unauthorized") {
				t.Errorf("%s: %s %s: %d %s, want 401", name, req.method, req.path, code, body)
			}
		}
	}
	if calls := fx.fleet.done(); len(calls) != 0 {
		t.Fatalf("the provider was asked without the credential: %v", calls)
	}
	// The same requests with the credential get through.
	if code, body := send(t, http.MethodPost, fx.url+"/v1/fleet/nodes", `{"role":"worker","imageDigest":"`+testDigest+`"}`, "Bearer "+credHex); code != http.StatusOK || !strings.Contains(body, `"worker-1"`) {
		t.Fatalf("create with the credential: %d %s", code, body)
	}
	if code, body := send(t, http.MethodDelete, fx.url+"/v1/fleet/nodes/worker-0", "", "Bearer "+credHex); code != http.StatusNoContent {
		t.Fatalf("delete with the credential: %d %s", code, body)
	}
	if calls := fx.fleet.done(); len(calls) != 2 {
		t.Fatalf("calls with the credential: %v", calls)
	}
}

// A provider that was given no controller credential changes no nodes for anyone, whatever they present.
func TestFleetWithoutCredentialHashRefusesAll(t *testing.T) {
	s, c := newServer(t)
	for _, auth := range []string{"Bearer " + strings.Repeat("00", 32), "Bearer " + hex.EncodeToString(make([]byte, 0))} {
		if code, body := send(t, http.MethodDelete, c.base+"/v1/fleet/nodes/worker-0", "", auth); code != http.StatusUnauthorized || !strings.Contains(body, "no controller credential") {
			t.Fatalf("%q: %d %s", auth, code, body)
		}
	}
	if err := s.SetFleet(&recordingFleet{}, []byte("short")); err == nil {
		t.Fatal("a credential hash that is no SHA-256 was accepted")
	}
	if err := s.SetFleet(nil, make([]byte, 32)); err == nil {
		t.Fatal("no fleet was accepted")
	}
}

// The upgrade controller's client: creates and deletes through the API, the provider's refusals come back as
// errors, and what it sends is checked before it goes.
func TestFleetClient(t *testing.T) {
	fx := newFleetServer(t)
	ctx := context.Background()
	fleet, err := NewFleetClient(fx.url, fx.credential)
	if err != nil {
		t.Fatal(err)
	}
	name, err := fleet.CreateNode(ctx, provider.RoleControlPlane, testDigest)
	if err != nil || name != "worker-1" {
		t.Fatalf("CreateNode = %q, %v", name, err)
	}
	if err := fleet.DeleteNode(ctx, "worker-7"); err != nil {
		t.Fatal(err)
	}
	if err := fleet.DeleteNode(ctx, "control-plane-0"); err == nil || !strings.Contains(err.Error(), "409") || !strings.Contains(err.Error(), "last running control-plane") {
		t.Fatalf("DeleteNode of the last control plane = %v", err)
	}
	for name, call := range map[string]func() error{
		"bad role":   func() error { _, err := fleet.CreateNode(ctx, "etcd", testDigest); return err },
		"bad digest": func() error { _, err := fleet.CreateNode(ctx, provider.RoleWorker, "sha256:ab"); return err },
		"bad name":   func() error { return fleet.DeleteNode(ctx, "../control-plane-0") },
		"empty name": func() error { return fleet.DeleteNode(ctx, "") },
		"upper digest": func() error {
			_, err := fleet.CreateNode(ctx, provider.RoleWorker, strings.ToUpper(testDigest))
			return err
		},
	} {
		if err := call(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if calls := fx.fleet.done(); strings.Join(calls, ";") != "create control-plane "+testDigest+";delete worker-7" {
		t.Fatalf("calls: %v", calls)
	}
	if _, err := NewFleetClient(fx.url, fx.credential[:16]); err == nil {
		t.Fatal("a short credential was accepted")
	}
	// A wrong credential: the client says the provider refused, and its error does not carry the credential.
	wrong := make([]byte, provider.FleetCredentialSize)
	bad, _ := NewFleetClient(fx.url, wrong)
	if err := bad.DeleteNode(ctx, "worker-1"); err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), hex.EncodeToString(wrong)) {
		t.Fatalf("DeleteNode with a wrong credential = %v", err)
	}
}

// With the credential, malformed requests are refused before the provider is asked.
func TestFleetRejectsMalformedRequests(t *testing.T) {
	fx := newFleetServer(t)
	auth := "Bearer " + hex.EncodeToString(fx.credential)
	for name, body := range map[string]string{
		"unknown field":  `{"role":"worker","imageDigest":"` + testDigest + `","image":"/etc/shadow"}`,
		"bad role":       `{"role":"admin","imageDigest":"` + testDigest + `"}`,
		"no digest":      `{"role":"worker"}`,
		"a path":         `{"role":"worker","imageDigest":"/tmp/x.squashfs"}`,
		"duplicate key":  `{"role":"worker","role":"control-plane","imageDigest":"` + testDigest + `"}`,
		"trailing data":  `{"role":"worker","imageDigest":"` + testDigest + `"}{}`,
		"oversized body": `{"role":"worker","imageDigest":"` + testDigest + `"` + strings.Repeat(" ", maxFleetMessage) + `}`,
	} {
		if code, resp := send(t, http.MethodPost, fx.url+"/v1/fleet/nodes", body, auth); code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", name, code, resp)
		}
	}
	if code, resp := send(t, http.MethodDelete, fx.url+"/v1/fleet/nodes/Worker_0", "", auth); code != http.StatusBadRequest {
		t.Errorf("bad node name: %d %s", code, resp)
	}
	if calls := fx.fleet.done(); len(calls) != 0 {
		t.Fatalf("the provider was asked: %v", calls)
	}
}

// The attack: reading the credential from the provider's log. Neither the credential (in any encoding) nor
// the header that carries it appears in a log line, for requests that pass or fail.
func TestFleetNeverLogsTheCredential(t *testing.T) {
	fx := newFleetServer(t)
	credHex := hex.EncodeToString(fx.credential)
	wrong := make([]byte, provider.FleetCredentialSize)
	rand.Read(wrong)
	for _, auth := range []string{"Bearer " + credHex, "Bearer " + hex.EncodeToString(wrong), "Basic " + credHex, credHex} {
		send(t, http.MethodPost, fx.url+"/v1/fleet/nodes", `{"role":"worker","imageDigest":"`+testDigest+`"}`, auth)
		send(t, http.MethodDelete, fx.url+"/v1/fleet/nodes/control-plane-0", "", auth)
		send(t, http.MethodPost, fx.url+"/v1/fleet/nodes", `{"role":"bad"}`, auth)
	}
	logs := fx.log.String()
	if !strings.Contains(logs, "fleet request refused") || !strings.Contains(logs, "fleet: node created") || !strings.Contains(logs, "fleet: node not deleted") {
		t.Fatalf("the log lacks the fleet's lines:\n%s", logs)
	}
	for name, secret := range map[string]string{
		"hex":              credHex,
		"hex, upper":       strings.ToUpper(credHex),
		"base64":           base64.StdEncoding.EncodeToString(fx.credential),
		"raw":              string(fx.credential),
		"the wrong one":    hex.EncodeToString(wrong),
		"a bearer scheme":  "Bearer",
		"a part of it":     credHex[8:24],
		"the wrong, part":  hex.EncodeToString(wrong)[8:24],
		"the basic scheme": "Basic",
	} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds %s:\n%s", name, logs)
		}
	}
}

// The upgrade controller parses the provider's answer and the provider the controller's request: whatever the
// bytes, the result is an error or exactly a valid role and digest, or a valid node name.
func FuzzFleetMessages(f *testing.F) {
	for _, seed := range []string{
		`{"role":"worker","imageDigest":"` + testDigest + `"}`, `{"role":"control-plane","imageDigest":"` + testDigest + `"}`,
		`{"role":"worker","imageDigest":"sha256:"}`, `{"role":"worker","Role":"x","imageDigest":"` + testDigest + `"}`,
		`{"name":"worker-3"}`, `{"name":"../x"}`, `{"name":""}`, `{"name":"a","name":"b"}`, `{"name":"worker-3"}{}`,
		``, `null`, `[]`, `{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if req, err := parseCreateNodeRequest(raw); err == nil {
			if provider.CheckRole(req.Role) != nil || provider.CheckImageDigest(req.ImageDigest) != nil {
				t.Fatalf("accepted %+v", req)
			}
		}
		if name, err := parseCreateNodeResponse(raw); err == nil {
			if provider.CheckNodeName(name) != nil || strings.ContainsAny(name, "/.") {
				t.Fatalf("accepted the name %q", name)
			}
		} else if name != "" {
			t.Fatal("a name with an error")
		}
	})
}
