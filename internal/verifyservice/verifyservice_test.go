package verifyservice

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/verifyservice/verifypb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestAttest(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	v, err := node.Validator()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(node.Issuer, nil))
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

func TestAttestGRPC(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	v, err := node.Validator()
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	verifypb.RegisterVerifyServer(srv, NewGRPCServer(node.Issuer, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Stop()
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{7}, attestation.NonceSize)
	ev, err := FetchGRPC(ctx, ln.Addr().String(), nonce)
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
		if _, err := FetchGRPC(ctx, ln.Addr().String(), bad); status.Code(errors.Unwrap(err)) != codes.InvalidArgument {
			t.Fatalf("nonce of %d bytes: %v, want InvalidArgument", len(bad), err)
		}
	}
}
