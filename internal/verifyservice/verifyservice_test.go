package verifyservice

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/verifyservice/verifypb"
	"github.com/constellation-dev/constellation/internal/wgmesh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// simulatorNode is a node on the reference TPM simulator, until the test ends, and the validator of its
// evidence.
func simulatorNode(t *testing.T) (*tpmtest.Node, attestation.Validator) {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	v, err := node.Validator()
	if err != nil {
		t.Fatal(err)
	}
	return node, v
}

func TestAttest(t *testing.T) {
	node, v := simulatorNode(t)
	srv := httptest.NewServer(Handler(node.Issuer, nil, nil))
	defer srv.Close()
	endpoint := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{5}, attestation.NonceSize)
	ev, err := Fetch(ctx, endpoint, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(ctx, ev, nonce); err != nil {
		t.Fatalf("evidence from the verification service does not validate: %v", err)
	}
	if _, err := v.Validate(ctx, ev, bytes.Repeat([]byte{6}, attestation.NonceSize)); err == nil {
		t.Fatal("evidence validated for another nonce")
	}
	for _, bad := range [][]byte{nil, []byte("short")} {
		if _, err := Fetch(ctx, endpoint, bad); err == nil || !strings.Contains(err.Error(), "400") {
			t.Fatalf("nonce %q: %v", bad, err)
		}
	}
}

// serveGRPC serves the gRPC verification service, issuing with issuer under limit (nil: none), on a loopback
// port until the test ends, and returns its address.
func serveGRPC(t *testing.T, issuer attestation.Issuer, limit *atls.IssuanceLimiter) string {
	t.Helper()
	srv := grpc.NewServer()
	verifypb.RegisterVerifyServer(srv, NewGRPCServer(issuer, nil, limit))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func TestAttestGRPC(t *testing.T) {
	node, v := simulatorNode(t)
	addr := serveGRPC(t, node.Issuer, nil)
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{7}, attestation.NonceSize)
	ev, err := FetchGRPC(ctx, addr, nonce)
	if err != nil {
		t.Fatal(err)
	}
	userData, err := v.Validate(ctx, ev, nonce)
	if err != nil {
		t.Fatalf("evidence from the gRPC verification service does not validate: %v", err)
	}
	if len(userData) != 0 {
		t.Fatal("the evidence binds user data")
	}
	for _, bad := range [][]byte{nil, []byte("short"), make([]byte, 65)} {
		if _, err := FetchGRPC(ctx, addr, bad); status.Code(errors.Unwrap(err)) != codes.InvalidArgument {
			t.Fatalf("nonce of %d bytes: %v, want InvalidArgument", len(bad), err)
		}
	}
}

// The cluster's verification service, as its pod runs it: both protocols on one [Server], with evidence from
// the node's attestation agent rather than from the TPM itself.
func TestServerThroughAgent(t *testing.T) {
	node, v := simulatorNode(t)
	socket := filepath.Join(t.TempDir(), "attest.sock")
	agentLn, err := agent.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	agentSrv := &http.Server{Handler: agent.Handler(node.Issuer, slog.New(slog.DiscardHandler))}
	go agentSrv.Serve(agentLn)
	defer agentSrv.Close()

	srv, err := Listen("127.0.0.1", 0, 0, agent.NewClient(socket, attestation.MiniVTPM), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	httpAddr, grpcAddr := srv.Addrs()
	ctx := context.Background()
	for name, fetch := range map[string]func(context.Context, string, []byte) ([]byte, error){httpAddr: Fetch, grpcAddr: FetchGRPC} {
		nonce := bytes.Repeat([]byte{9}, attestation.NonceSize)
		ev, err := fetch(ctx, name, nonce)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := v.Validate(ctx, ev, nonce); err != nil {
			t.Fatalf("evidence from %s through the agent does not validate: %v", name, err)
		}
	}
	// Another service holds the port: Listen says so.
	if _, err := Listen("127.0.0.1", mustPort(t, httpAddr), 0, node.Issuer, nil, nil); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Listen on a used port = %v", err)
	}
	srv.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
	if _, err := Fetch(ctx, httpAddr, bytes.Repeat([]byte{9}, attestation.NonceSize)); err == nil {
		t.Fatal("the closed service still answers")
	}
}

func mustPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestManifests(t *testing.T) {
	raw, err := Manifests()
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	for _, want := range []string{`"image": "` + Image() + `"`, `"imagePullPolicy": "Never"`, `"hostNetwork": true`, `"automountServiceAccountToken": false`, `"--port=9080"`, `"--grpc-port=9081"`, `"path": "/run/constellation/attest.sock"`, `"operator": "Exists"`} {
		if !strings.Contains(s, want) {
			t.Errorf("manifests lack %s:\n%s", want, s)
		}
	}
}

// TestMeshKeyBinding: asked to bind the mesh key, the node binds the key it uses, which the validated user
// data shows; a service without a mesh key refuses instead of issuing unbound evidence.
func TestMeshKeyBinding(t *testing.T) {
	node, v := simulatorNode(t)
	key := wgmesh.Key{1, 2, 3}
	srv := grpc.NewServer()
	gs := NewGRPCServer(node.Issuer, nil, nil)
	gs.BindMeshKey(func() (wgmesh.Key, error) { return key, nil })
	verifypb.RegisterVerifyServer(srv, gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{9}, attestation.NonceSize)
	ev, err := FetchGRPCMeshKey(ctx, ln.Addr().String(), nonce)
	if err != nil {
		t.Fatal(err)
	}
	userData, err := v.Validate(ctx, ev, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(userData, MeshKeyUserData(key)) {
		t.Fatalf("user data %x, want the mesh key's binding", userData)
	}
	unbound := serveGRPC(t, node.Issuer, nil)
	if _, err := FetchGRPCMeshKey(ctx, unbound, nonce); status.Code(errors.Unwrap(err)) != codes.FailedPrecondition {
		t.Fatalf("a service without a mesh key: %v, want FailedPrecondition", err)
	}
}
