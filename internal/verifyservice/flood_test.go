package verifyservice

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/atls/atlstest"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/verifyservice/verifypb"
)

// clientFrom is an HTTP client whose connections come from the loopback address src.
func clientFrom(src string) *http.Client {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// testLimits give each source exactly its burst within a test: the bucket refills at one request in 30 years.
var testLimits = atls.IssuanceLimits{Concurrent: 2, Queue: 8, PerSource: 2, Rate: 1e-9, Burst: 4, Sources: 16}

// Flooders from one source hammer the verification service while a verifier from another source asks for
// evidence: the verifier gets valid evidence, the flooders get their source's burst and then 429, at once.
func TestVerifyDuringAFlood(t *testing.T) {
	node, v := simulatorNode(t)
	limit, err := atls.NewIssuanceLimiter(testLimits)
	if err != nil {
		t.Fatal(err)
	}
	quotes := &atlstest.CountingIssuer{Issuer: node.Issuer}
	srv := httptest.NewServer(Handler(quotes, nil, limit))
	defer srv.Close()
	url := srv.URL + "/v1/attest?nonce=" + hex.EncodeToString(bytes.Repeat([]byte{5}, attestation.NonceSize))

	const flooders = 8
	var ok, limited atomic.Int64
	client := clientFrom("127.0.0.2")
	flood := atlstest.StartFlood(t, flooders, func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			ok.Add(1)
		case http.StatusTooManyRequests:
			limited.Add(1)
		default:
			t.Errorf("flooder got %s", resp.Status)
		}
		return nil
	})
	flood.AwaitBurst(quotes, int64(testLimits.Burst))

	nonce := bytes.Repeat([]byte{9}, attestation.NonceSize)
	resp, err := clientFrom("127.0.0.3").Get(srv.URL + "/v1/attest?nonce=" + hex.EncodeToString(nonce))
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	flood.Stop()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the verifier from another source during the flood: %s: %s", resp.Status, ev)
	}
	if _, err := v.Validate(context.Background(), ev, nonce); err != nil {
		t.Fatalf("the verifier's evidence: %v", err)
	}
	if n := quotes.Count(); n != int64(testLimits.Burst)+1 || ok.Load() != int64(testLimits.Burst) || limited.Load() != flood.Attempts()-int64(testLimits.Burst) {
		t.Fatalf("%d quotes for %d flooding requests (%d answered, %d refused) and one verifier; want the source's burst (%d) and the verifier's", n, flood.Attempts(), ok.Load(), limited.Load(), testLimits.Burst)
	}
}

// The gRPC service has the same limit: a source past its burst gets RESOURCE_EXHAUSTED, another source
// still gets evidence.
func TestVerifyGRPCLimitsPerSource(t *testing.T) {
	node, _ := simulatorNode(t)
	limit, err := atls.NewIssuanceLimiter(testLimits)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveGRPC(t, node.Issuer, limit)
	ask := func(src string) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(atlstest.DialFrom(src)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = verifypb.NewVerifyClient(conn).GetAttestation(context.Background(), &verifypb.GetAttestationRequest{Nonce: bytes.Repeat([]byte{1}, attestation.NonceSize)})
		return err
	}
	for i := range testLimits.Burst {
		if err := ask("127.0.0.2"); err != nil {
			t.Fatalf("request %d within the burst: %v", i, err)
		}
	}
	if err := ask("127.0.0.2"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("request past the burst: %v, want ResourceExhausted", err)
	}
	if err := ask("127.0.0.3"); err != nil {
		t.Fatalf("another source: %v", err)
	}
}
