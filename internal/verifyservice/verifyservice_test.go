package verifyservice

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
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
