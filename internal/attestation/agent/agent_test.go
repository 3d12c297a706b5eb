package agent_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func serve(t *testing.T) (*tpmtest.Node, string) {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	// Unix socket paths are limited to 108 bytes; test temp dirs can be longer.
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "attest.sock")
	if err := os.WriteFile(path, nil, 0o644); err != nil { // a stale file from an earlier run
		t.Fatal(err)
	}
	ln, err := agent.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: agent.Handler(node.Issuer, slog.New(slog.DiscardHandler))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return node, path
}

// Evidence from the agent is the node's own evidence: the node's validator accepts it, bound to the caller's
// nonce and user data.
func TestClientIssuesNodeEvidence(t *testing.T) {
	node, path := serve(t)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent socket mode = %v, %v; want owner-only", fi.Mode().Perm(), err)
	}
	c := agent.NewClient(path, attestation.MiniVTPM)
	nonce := bytes.Repeat([]byte{1}, 32)
	ev, err := c.Issue(context.Background(), nonce, []byte("key hash"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := node.Validator()
	if err != nil {
		t.Fatal(err)
	}
	userData, err := v.Validate(context.Background(), ev, nonce)
	if err != nil || string(userData) != "key hash" {
		t.Fatalf("Validate = %q, %v", userData, err)
	}
	if _, err := v.Validate(context.Background(), ev, bytes.Repeat([]byte{2}, 32)); err == nil {
		t.Fatal("evidence validated for another nonce")
	}
}

func TestAgentRefusesBadRequests(t *testing.T) {
	_, path := serve(t)
	c := agent.NewClient(path, attestation.MiniVTPM)
	for name, tc := range map[string]struct{ nonce, userData []byte }{
		"short nonce":    {make([]byte, 8), nil},
		"long nonce":     {make([]byte, 65), nil},
		"huge user data": {make([]byte, 32), make([]byte, attestation.MaxUserDataSize+1)},
	} {
		if _, err := c.Issue(context.Background(), tc.nonce, tc.userData); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: Issue = %v, want a refusal", name, err)
		}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	for name, body := range map[string]string{
		"not JSON":      "nonce",
		"unknown field": `{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","extra":1}`,
		"too large":     `{"userData":"` + strings.Repeat("A", 8000) + `"}`,
	} {
		resp, err := hc.Post("http://agent/v1/evidence", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %s, want 400", name, resp.Status)
		}
	}
	if _, err := agent.NewClient(filepath.Join(filepath.Dir(path), "missing.sock"), attestation.MiniVTPM).Issue(context.Background(), make([]byte, 32), nil); err == nil || !strings.Contains(err.Error(), "attestation agent") {
		t.Fatalf("no agent: %v", err)
	}
}

// A runtime measurement through the agent changes the node's PCR: its next evidence no longer matches the
// policy of its boot.
func TestMeasure(t *testing.T) {
	node, path := serve(t)
	c := agent.SocketClient(path, 0)
	post := func(body string) int {
		resp, err := c.Post("http://agent/v1/measure", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, bad := range []string{`{"pcr": 24, "event": "x"}`, `{"pcr": 4}`, `{"pcr": 4, "event": "x", "more": 1}`, `not json`} {
		if code := post(bad); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
	v, err := node.Validator()
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{1}, attestation.NonceSize)
	issue := func() error {
		ev, err := agent.NewClient(path, attestation.MiniVTPM).Issue(context.Background(), nonce, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Validate(context.Background(), ev, nonce)
		return err
	}
	if err := issue(); err != nil {
		t.Fatal(err)
	}
	if code := post(`{"pcr": 4, "event": "a component loaded at runtime"}`); code != http.StatusNoContent {
		t.Fatalf("measure: %d", code)
	}
	if err := issue(); err == nil || !strings.Contains(err.Error(), "PCR 4") {
		t.Fatalf("evidence after a runtime measurement of PCR 4: %v, want a mismatch of PCR 4", err)
	}
}
