package atls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"maps"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func newNode(t *testing.T) (*tpmtest.Node, attestation.Validator) {
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

// handshake runs one TLS handshake over a loopback TCP connection and an echo of one message.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, serverCfg)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(tc, buf); err != nil {
			done <- err
			return
		}
		_, err = tc.Write(buf)
		done <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := tls.Client(conn, clientCfg)
	clientErr = tc.Handshake()
	if clientErr == nil {
		if _, err := tc.Write([]byte("hello")); err != nil {
			clientErr = err
		} else {
			buf := make([]byte, 5)
			_, clientErr = io.ReadFull(tc, buf)
		}
	}
	conn.Close()
	return <-done, clientErr
}

func TestModes(t *testing.T) {
	node, v := newNode(t)
	validators := []attestation.Validator{v}
	tests := map[string]struct {
		serverIssuer     attestation.Issuer
		serverValidators []attestation.Validator
		clientIssuer     attestation.Issuer
		clientValidators []attestation.Validator
	}{
		"server attested": {serverIssuer: node.Issuer, clientValidators: validators},
		"client attested": {serverValidators: validators, clientIssuer: node.Issuer},
		"mutual":          {serverIssuer: node.Issuer, serverValidators: validators, clientIssuer: node.Issuer, clientValidators: validators},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			serverCfg, err := CreateServerConfig(tc.serverIssuer, tc.serverValidators)
			if err != nil {
				t.Fatal(err)
			}
			clientCfg, err := CreateClientConfig(tc.clientIssuer, tc.clientValidators)
			if err != nil {
				t.Fatal(err)
			}
			if serr, cerr := handshake(t, serverCfg, clientCfg); serr != nil || cerr != nil {
				t.Fatalf("server: %v, client: %v", serr, cerr)
			}
		})
	}
}

func TestRejectsUnattestedOrWrongPeers(t *testing.T) {
	node, v := newNode(t)
	validators := []attestation.Validator{v}

	// A validator whose policy expects another node image (and the node's boot parameters).
	strictPolicy := measurements.M{
		measurements.PCRNodeImage:  {Expected: measurements.Digest{0xcd}},
		measurements.PCRBootParams: node.Policy[measurements.PCRBootParams],
	}
	strict, err := vtpm.NewValidator([]*x509.Certificate{node.CA.Certificate()}, strictPolicy, nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("server with wrong measurements", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(node.Issuer, nil)
		clientCfg, _ := CreateClientConfig(nil, []attestation.Validator{strict})
		_, cerr := handshake(t, serverCfg, clientCfg)
		var verr *VerificationError
		if !errors.As(cerr, &verr) || !strings.Contains(cerr.Error(), "PCR 4") {
			t.Fatalf("client error = %v, want a VerificationError naming PCR 4", cerr)
		}
	})
	t.Run("client with wrong measurements", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(nil, []attestation.Validator{strict})
		clientCfg, _ := CreateClientConfig(node.Issuer, nil)
		serr, _ := handshake(t, serverCfg, clientCfg)
		if serr == nil || !strings.Contains(serr.Error(), "PCR 4") {
			t.Fatalf("server error = %v, want an attestation failure naming PCR 4", serr)
		}
	})
	t.Run("unattested server", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(nil, validators) // only verifies clients, presents a plain cert
		clientCfg, _ := CreateClientConfig(node.Issuer, validators)
		_, cerr := handshake(t, serverCfg, clientCfg)
		if cerr == nil || !strings.Contains(cerr.Error(), "no attestation evidence") {
			t.Fatalf("client error = %v", cerr)
		}
	})
	t.Run("client without certificate", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(node.Issuer, validators)
		clientCfg, _ := CreateClientConfig(nil, validators)
		serr, _ := handshake(t, serverCfg, clientCfg)
		if serr == nil || !strings.Contains(serr.Error(), "no attestation evidence") {
			t.Fatalf("server error = %v", serr)
		}
	})
	t.Run("plain TLS client", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(node.Issuer, nil)
		serr, cerr := handshake(t, serverCfg, &tls.Config{InsecureSkipVerify: true})
		if serr == nil || !strings.Contains(serr.Error(), "no attestation nonce") || cerr == nil {
			t.Fatalf("server error = %v, client error = %v", serr, cerr)
		}
	})
	t.Run("evidence for another key", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(&keySwapIssuer{node.Issuer}, nil)
		clientCfg, _ := CreateClientConfig(nil, validators)
		_, cerr := handshake(t, serverCfg, clientCfg)
		if cerr == nil || !strings.Contains(cerr.Error(), "made for another key") {
			t.Fatalf("client error = %v", cerr)
		}
	})
	t.Run("old nonce", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(&staleNonceIssuer{Issuer: node.Issuer}, nil)
		for range 2 { // the first handshake records a nonce, the second replays it
			clientCfg, _ := CreateClientConfig(nil, validators)
			_, cerr := handshake(t, serverCfg, clientCfg)
			if cerr == nil || !strings.Contains(cerr.Error(), "not bound to this nonce") {
				t.Fatalf("client error = %v", cerr)
			}
		}
	})
	t.Run("another variant", func(t *testing.T) {
		serverCfg, _ := CreateServerConfig(node.Issuer, nil)
		clientCfg, _ := CreateClientConfig(nil, []attestation.Validator{otherVariant{v}})
		_, cerr := handshake(t, serverCfg, clientCfg)
		if cerr == nil || !strings.Contains(cerr.Error(), "peer attests with mini-vtpm, accepted variants: other") {
			t.Fatalf("client error = %v", cerr)
		}
	})
}

// keySwapIssuer binds evidence to a key other than the certificate's.
type keySwapIssuer struct{ attestation.Issuer }

func (i *keySwapIssuer) Issue(ctx context.Context, nonce, _ []byte) ([]byte, error) {
	other := sha256.Sum256([]byte("another key"))
	return i.Issuer.Issue(ctx, nonce, other[:])
}

// staleNonceIssuer always uses the first nonce it saw, as an attacker replaying recorded evidence.
type staleNonceIssuer struct {
	attestation.Issuer
	first []byte
}

func (i *staleNonceIssuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if i.first == nil {
		i.first = make([]byte, len(nonce))
		rand.Read(i.first)
	}
	return i.Issuer.Issue(ctx, i.first, userData)
}

type otherVariant struct{ attestation.Validator }

func (otherVariant) Variant() attestation.Variant {
	return attestation.Variant{Name: "other", OID: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1, 1, 99}}
}

// certWith creates a self-signed certificate with the given evidence extension and validity.
func certWith(t *testing.T, key *ecdsa.PrivateKey, ext []pkix.Extension, notBefore, notAfter time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: notBefore, NotAfter: notAfter, ExtraExtensions: ext}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestVerifyPeerCert(t *testing.T) {
	node, v := newNode(t)
	validators := []attestation.Validator{v}
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	userData := sha256.Sum256(spki)
	nonce := make([]byte, attestation.NonceSize)
	evidence, err := node.Issuer.Issue(ctx, nonce, userData[:])
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(ev []byte) []pkix.Extension {
		val, _ := asn1.Marshal(ev)
		return []pkix.Extension{{Id: attestation.MiniVTPM.OID, Value: val}}
	}
	now := time.Now()
	valid := certWith(t, key, wrap(evidence), now.Add(-time.Minute), now.Add(time.Minute))
	if err := verifyPeerCert(ctx, validators, nonce, parse(t, valid)); err != nil {
		t.Fatalf("valid certificate rejected: %v", err)
	}

	tampered := append([]byte(nil), evidence...)
	tampered[len(tampered)/2] ^= 0x01
	notOctet := []pkix.Extension{{Id: attestation.MiniVTPM.OID, Value: evidence}}
	tests := map[string]struct {
		cert    []byte
		wantErr string
	}{
		"tampered extension":       {certWith(t, key, wrap(tampered), now.Add(-time.Minute), now.Add(time.Minute)), "validating mini-vtpm evidence"},
		"extension not DER":        {certWith(t, key, notOctet, now.Add(-time.Minute), now.Add(time.Minute)), "not a single DER octet string"},
		"expired certificate":      {certWith(t, key, wrap(evidence), now.Add(-time.Hour), now.Add(-time.Minute)), "not now"},
		"not yet valid":            {certWith(t, key, wrap(evidence), now.Add(time.Hour), now.Add(2*time.Hour)), "not now"},
		"no evidence":              {certWith(t, key, nil, now.Add(-time.Minute), now.Add(time.Minute)), "no attestation evidence"},
		"evidence for another key": {certWith(t, mustKey(t), wrap(evidence), now.Add(-time.Minute), now.Add(time.Minute)), "made for another key"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := verifyPeerCert(ctx, validators, nonce, parse(t, tc.cert))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("verifyPeerCert = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
	if err := verifyPeerCert(ctx, validators, nonce, nil); err == nil {
		t.Fatal("no certificate accepted")
	}
}

func parse(t *testing.T, der []byte) []*x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{c}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGRPC(t *testing.T) {
	node, v := newNode(t)
	serverCreds, err := NewCredentials(node.Issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(serverCreds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Stop()

	call := func(validators []attestation.Validator) error {
		creds, err := NewCredentials(nil, validators)
		if err != nil {
			return err
		}
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	// Two calls on fresh connections: each handshake has its own nonce.
	for range 2 {
		if err := call([]attestation.Validator{v}); err != nil {
			t.Fatalf("gRPC call over aTLS: %v", err)
		}
	}
	wrong := maps.Clone(node.Policy)
	wrong[measurements.PCRBootParams] = measurements.Measurement{}
	strict, err := vtpm.NewValidator([]*x509.Certificate{node.CA.Certificate()}, wrong, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := call([]attestation.Validator{strict}); err == nil || !strings.Contains(err.Error(), "PCR 8") {
		t.Fatalf("gRPC call to a server with wrong measurements = %v", err)
	}
}

func FuzzNonceFromCAs(f *testing.F) {
	pool, _ := noncePool(make([]byte, attestation.NonceSize))
	f.Add(pool.Subjects()[0]) //lint:ignore SA1019 Subjects is what the TLS stack sends; this pool holds no system roots.
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		nonce, err := nonceFromCAs([][]byte{raw})
		if err == nil && attestation.CheckNonce(nonce) != nil {
			t.Fatalf("accepted nonce of invalid size %d", len(nonce))
		}
	})
}

func FuzzFindEvidence(f *testing.F) {
	val, _ := asn1.Marshal([]byte(`{"version":1}`))
	f.Add(val)
	f.Add([]byte{0x04, 0x00})
	f.Fuzz(func(t *testing.T, value []byte) {
		cert := &x509.Certificate{Extensions: []pkix.Extension{{Id: attestation.MiniVTPM.OID, Value: value}}}
		ev, _, err := findEvidence(cert, []attestation.Validator{vtpmValidatorStub{}})
		if err == nil && len(ev) > len(value) {
			t.Fatal("evidence longer than the extension")
		}
	})
}

type vtpmValidatorStub struct{ attestation.Validator }

func (vtpmValidatorStub) Variant() attestation.Variant { return attestation.MiniVTPM }

// Every aTLS handshake negotiates the post-quantum hybrid key exchange, on both ends.
func TestKeyExchangeIsPostQuantum(t *testing.T) {
	node, v := newNode(t)
	serverCfg, err := CreateServerConfig(node.Issuer, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	clientCfg, err := CreateClientConfig(node.Issuer, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	server, client := curves(t, serverCfg, clientCfg)
	if server != tls.X25519MLKEM768 || client != tls.X25519MLKEM768 {
		t.Fatalf("negotiated key exchange: server %s, client %s; want %s", server, client, tls.X25519MLKEM768)
	}
}

// A client that offers only classical X25519 (a downgrade by a peer or a man in the middle that rewrites the
// offer) is refused; so is a server that accepts only X25519.
func TestClassicalKeyExchangeRefused(t *testing.T) {
	node, v := newNode(t)
	serverCfg, err := CreateServerConfig(node.Issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	clientCfg, err := CreateClientConfig(nil, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	classical := clientCfg.Clone()
	classical.CurvePreferences = []tls.CurveID{tls.X25519}
	serr, cerr := handshake(t, serverCfg, classical)
	if serr == nil || cerr == nil {
		t.Fatalf("a client offering only X25519 got through: server %v, client %v", serr, cerr)
	}
	if !strings.Contains(serr.Error(), "key exchange") {
		t.Errorf("the server's refusal does not say why: %v", serr)
	}

	plainServer, err := CreateServerConfig(node.Issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner := plainServer.GetConfigForClient
	plainServer.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		chi.SupportedCurves = append(chi.SupportedCurves, tls.X25519) // pass the server's own check
		cfg, err := inner(chi)
		if cfg != nil {
			cfg.CurvePreferences = []tls.CurveID{tls.X25519}
		}
		return cfg, err
	}
	if serr, cerr := handshake(t, plainServer, clientCfg); serr == nil || cerr == nil {
		t.Fatalf("a client accepted a server that accepts only X25519: server %v, client %v", serr, cerr)
	}
}

// curves runs one handshake and returns the key exchange each end negotiated.
func curves(t *testing.T, serverCfg, clientCfg *tls.Config) (server, client tls.CurveID) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan tls.CurveID, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, serverCfg)
		if err := tc.Handshake(); err != nil {
			done <- 0
			return
		}
		done <- tc.ConnectionState().CurveID
		io.Copy(io.Discard, tc)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(conn, clientCfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	client = tc.ConnectionState().CurveID
	tc.Close()
	return <-done, client
}
