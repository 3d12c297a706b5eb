package joinservice

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/atls/atlstest"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
)

// Flooders from one source hammer the join service's handshakes (each would make the service quote with its
// TPM) while a genuine node joins from another source: the join completes, the flooders get no more quotes
// than their source's burst, and every other flooding handshake is refused at once rather than queued.
func TestJoinDuringAHandshakeFlood(t *testing.T) {
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	_, config := joinConfig(t, clusterPolicy(node), roots, bytes.Repeat([]byte{1}, 32), nil)
	// The bucket refills at one quote in 30 years: within the test, a source gets exactly its burst.
	const burst = 6
	limit, err := atls.NewIssuanceLimiter(atls.IssuanceLimits{Concurrent: 2, Queue: 8, PerSource: 2, Rate: 1e-9, Burst: burst, Sources: 16})
	if err != nil {
		t.Fatal(err)
	}
	tokens := &countingTokens{}
	quotes := &atlstest.CountingIssuer{Issuer: node.Issuer}
	addr := startJoinService(t, Options{Config: config, Tokens: tokens, IssuanceLimiter: limit}, quotes)
	v, err := vtpm.NewValidator(roots, clusterPolicy(node), nil)
	if err != nil {
		t.Fatal(err)
	}

	// The flood: aTLS handshakes from 127.0.0.2 that ask the service for evidence, until the join is done.
	// Each gets an answer: refused at once, or failed after the quote (the flooder cannot attest itself).
	const flooders = 8
	flood := atlstest.StartFlood(t, flooders, func() error {
		cfg, err := atls.CreateClientConfig(nil, []attestation.Validator{v})
		if err != nil {
			return err
		}
		raw, err := atlstest.DialFrom("127.0.0.2")(context.Background(), addr)
		if err != nil {
			return err
		}
		// The flooder is no node: the service refuses it after the quote, if the limiter lets it that far.
		conn := tls.Client(raw, cfg)
		_ = conn.Handshake()
		conn.Close()
		return nil
	})
	// The join starts once the flood has had its source's quotes and hammers on.
	flood.AwaitBurst(quotes, burst)

	creds, err := atls.NewCredentials(node.Issuer, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithContextDialer(atlstest.DialFrom("127.0.0.3")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, joinErr := joinpb.NewJoinClient(conn).Join(context.Background(), &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
	attemptsDuringJoin := flood.Attempts()
	flood.Stop()
	if joinErr != nil {
		t.Fatalf("a genuine join from another source during the flood: %v", joinErr)
	}
	if tokens.n != 1 {
		t.Fatalf("%d tokens, want 1", tokens.n)
	}
	// The service quoted the flooders' burst and the join, nothing more; all other flooding handshakes were
	// refused, and every flooding client got its answer (the flood stopped).
	if n := quotes.Count(); n != burst+1 {
		t.Fatalf("the service quoted %d times for %d flooding handshakes and a join, want the flooding source's burst (%d) and the join (1)", n, flood.Attempts(), burst)
	}
	admitted, refused := limit.Stats()
	if admitted != burst+1 || refused != uint64(flood.Attempts())-burst {
		t.Fatalf("flood: %d handshakes; limiter: %d admitted, %d refused; want %d admitted and the rest of the flood refused", flood.Attempts(), admitted, refused, burst+1)
	}
	if attemptsDuringJoin < burst+2*flooders {
		t.Fatalf("only %d flooding handshakes before the join ended", attemptsDuringJoin)
	}
}
