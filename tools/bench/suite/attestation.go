package suite

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func init() {
	register(Suite{Names: []string{"attestation-validate", "attestation-validate-rsa"}, Run: runValidate})
	register(Suite{Names: []string{"atls-handshake", "tls-handshake", "swtpm-quote", "swtpm-issue", "atls-handshake-ratio"}, Run: runATLS})
}

// runValidate measures full validations per second on one core: AK certificate chain, quote signature and
// structure, PCR digest, event-log parse and replay, measurement policy.
func runValidate(ctx context.Context) ([]Result, error) {
	var results []Result
	for _, tc := range []struct {
		name string
		alg  vtpm.KeyAlgorithm
	}{{"attestation-validate", vtpm.ECC}, {"attestation-validate-rsa", vtpm.RSA}} {
		rate, err := validateRate(ctx, tc.alg)
		if err != nil {
			return nil, err
		}
		results = append(results, Result{tc.name, rate, "validations/s"})
	}
	return results, nil
}

func validateRate(ctx context.Context, alg vtpm.KeyAlgorithm) (float64, error) {
	node, err := tpmtest.NewSimulatorNode(alg)
	if err != nil {
		return 0, err
	}
	defer node.Close()
	v, err := node.Validator()
	if err != nil {
		return 0, err
	}
	nonce := bytes.Repeat([]byte{1}, attestation.NonceSize)
	ev, err := node.Issuer.Issue(ctx, nonce, []byte("user data"))
	if err != nil {
		return 0, err
	}
	if _, err := v.Validate(ctx, ev, nonce); err != nil {
		return 0, err
	}
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	var verr error
	res := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			if _, err := v.Validate(ctx, ev, nonce); err != nil {
				verr = err
				b.FailNow()
			}
		}
	})
	if verr != nil {
		return 0, verr
	}
	return float64(time.Second) / float64(res.NsPerOp()), nil
}

// runATLS measures the median of a full aTLS handshake on loopback TCP, with a fresh quote from swtpm
// (ECC AK) and its validation, and, interleaved in the same run, its parts: a plain TLS 1.3 handshake and one
// swtpm quote.
func runATLS(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-atls-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	node, err := tpmtest.NewSWTPMNode(ctx, dir, vtpm.ECC)
	if err != nil {
		return nil, err
	}
	defer node.Close()
	v, err := node.Validator()
	if err != nil {
		return nil, err
	}
	serverCfg, err := atls.CreateServerConfig(node.Issuer, nil)
	if err != nil {
		return nil, err
	}
	plainServer, err := plainServerConfig()
	if err != nil {
		return nil, err
	}
	ak, err := vtpm.CreateAK(node.TPM, vtpm.ECC)
	if err != nil {
		return nil, err
	}
	defer ak.Close()
	sel := client.FullPcrSel(tpm2.AlgSHA256)
	extra := make([]byte, attestation.NonceSize)

	ds, err := interleavedMedians(300,
		func() error { // aTLS: fresh quote on the server, full validation on the client
			clientCfg, err := atls.CreateClientConfig(nil, []attestation.Validator{v})
			if err != nil {
				return err
			}
			return handshakeOnce(serverCfg, clientCfg)
		},
		func() error { // plain TLS 1.3, ECDSA P-256 certificate
			return handshakeOnce(plainServer, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}) //nolint:gosec
		},
		func() error { // one TPM2_Quote over the 24 SHA-256 PCRs
			_, _, err := tpm2.QuoteRaw(node.TPM, ak.Handle(), "", "", extra, sel, tpm2.AlgNull)
			return err
		},
		func() error { // the issuer's full evidence
			_, err := node.Issuer.Issue(ctx, extra, extra)
			return err
		},
	)
	if err != nil {
		return nil, err
	}
	atlsHandshake, tlsHandshake, quote, issue := ds[0], ds[1], ds[2], ds[3]
	return []Result{
		{"atls-handshake", ms(atlsHandshake), "ms"},
		{"tls-handshake", ms(tlsHandshake), "ms"},
		{"swtpm-quote", ms(quote), "ms"},
		{"swtpm-issue", ms(issue), "ms"},
		{"atls-handshake-ratio", float64(atlsHandshake) / float64(tlsHandshake+quote), "x"},
	}, nil
}

// handshakeOnce connects over loopback TCP, completes a handshake and exchanges one byte each way.
func handshakeOnce(serverCfg, clientCfg *tls.Config) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, serverCfg)
		buf := make([]byte, 1)
		if _, err := io.ReadFull(tc, buf); err != nil {
			serverErr <- err
			return
		}
		_, err = tc.Write(buf)
		serverErr <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer conn.Close()
	tc := tls.Client(conn, clientCfg)
	if _, err := tc.Write([]byte{1}); err != nil {
		return err
	}
	if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil {
		return err
	}
	return errors.Join(<-serverErr)
}

func plainServerConfig() (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, nil
}
