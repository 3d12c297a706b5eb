// Package atls implements attested TLS: TLS 1.3 in which a peer proves by remote attestation what it runs.
//
// An attested peer presents a fresh self-signed certificate that carries attestation evidence in an
// extension (its OID names the evidence variant). The evidence binds the hash of the certificate's public key
// as user data and a nonce chosen by the other peer for this handshake, so it cannot be replayed and cannot
// be moved to another key. The client sends its nonce in the ClientHello (as an ALPN protocol name that is
// never selected); the server sends its nonce in the CertificateRequest (as an acceptable CA name).
//
// Either side, or both, can be attested. A side that is not attested presents a plain self-signed
// certificate; whoever talks to it must authenticate it another way.
//
// Both sides use only the hybrid post-quantum key exchange X25519MLKEM768 ([KeyExchange]); a peer that does
// not offer it is refused.
package atls

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
)

const (
	// alpnNoncePrefix marks the ALPN protocol name that carries the client's nonce.
	alpnNoncePrefix = "atls-nonce/"
	// certValidity is how long an attested certificate is valid. The evidence is fresh per handshake; the
	// validity only limits how long a captured certificate is worth anything.
	certValidity = 10 * time.Minute
	// clockSkew is tolerated between peers.
	clockSkew = 2 * time.Minute
	// maxEvidenceExtension bounds the evidence extension (the document limit plus DER overhead).
	maxEvidenceExtension = attestation.MaxDocumentSize + 16
)

// oidServerNonce is the attribute type of the acceptable-CA name that carries the server's nonce.
var oidServerNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1, 3, 1}

// defaultNextProtos are the application protocols a server offers unless told otherwise.
var defaultNextProtos = []string{"h2", "http/1.1"}

// KeyExchange is the only key exchange aTLS accepts, on both sides: the hybrid of X25519 and ML-KEM-768.
// Traffic recorded today stays secret against a future quantum computer as long as either half holds, and a
// peer (or a man in the middle) cannot downgrade a handshake to classical X25519: a client that does not
// offer it is refused, and a client refuses a server that picks anything else.
const KeyExchange = tls.X25519MLKEM768

// curvePreferences pins every aTLS configuration to [KeyExchange].
func curvePreferences() []tls.CurveID { return []tls.CurveID{KeyExchange} }

// CreateServerConfig returns a TLS server configuration. With an issuer the server attests itself to
// clients; with validators it requires clients to attest themselves with evidence one of them accepts. At
// least one of the two must be set. opts can limit the issuance of evidence ([WithIssuanceLimiter]).
func CreateServerConfig(issuer attestation.Issuer, validators []attestation.Validator, opts ...ServerOption) (*tls.Config, error) {
	o := newServerOptions(opts)
	if issuer == nil && len(validators) == 0 {
		return nil, errors.New("aTLS server needs an issuer, validators or both")
	}
	var plainCert *tls.Certificate
	if issuer == nil {
		c, err := selfSignedCert(context.Background(), nil, nil)
		if err != nil {
			return nil, err
		}
		plainCert = c
	}
	// Session tickets are disabled: a resumed session would skip the certificate, and with it the fresh
	// evidence of this handshake.
	base := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: defaultNextProtos, SessionTicketsDisabled: true, CurvePreferences: curvePreferences()}
	base.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		if !slices.Contains(chi.SupportedCurves, KeyExchange) {
			return nil, fmt.Errorf("aTLS: the client does not offer the key exchange %s (post-quantum hybrid); connect with an aTLS client of this release", KeyExchange)
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true, CurvePreferences: curvePreferences()}
		appProtos, clientNonce := splitALPN(chi.SupportedProtos)
		if slices.ContainsFunc(appProtos, func(p string) bool { return slices.Contains(base.NextProtos, p) }) {
			cfg.NextProtos = base.NextProtos
		}
		if issuer != nil {
			if clientNonce == nil {
				return nil, errors.New("aTLS: the client sent no attestation nonce; connect with an aTLS client")
			}
			if err := attestation.CheckNonce(clientNonce); err != nil {
				return nil, fmt.Errorf("aTLS: client nonce: %w", err)
			}
			release, err := o.acquire(chi)
			if err != nil {
				return nil, err
			}
			// Issue the evidence while crypto/tls computes the key exchange: the TPM quote mostly waits for the
			// TPM, the key exchange mostly computes. GetCertificate, called after the key exchange, collects it.
			type result struct {
				cert *tls.Certificate
				err  error
			}
			issued := make(chan result, 1)
			go func() {
				defer release()
				cert, err := selfSignedCert(chi.Context(), issuer, clientNonce)
				issued <- result{cert, err}
			}()
			cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				r := <-issued
				return r.cert, r.err
			}
		} else {
			cfg.Certificates = []tls.Certificate{*plainCert}
		}
		if len(validators) > 0 {
			serverNonce := make([]byte, attestation.NonceSize)
			if _, err := rand.Read(serverNonce); err != nil {
				return nil, err
			}
			pool, err := noncePool(serverNonce)
			if err != nil {
				return nil, err
			}
			cfg.ClientAuth = tls.RequireAnyClientCert
			cfg.ClientCAs = pool
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				return verifyPeer(chi.Context(), validators, serverNonce, cs)
			}
		}
		return cfg, nil
	}
	return base, nil
}

// CreateClientConfig returns a TLS client configuration for ONE connection: it holds the nonce of that
// handshake. With validators the client requires the server to attest itself with evidence one of them
// accepts; with an issuer the client attests itself when the server asks. At least one must be set.
func CreateClientConfig(issuer attestation.Issuer, validators []attestation.Validator) (*tls.Config, error) {
	if issuer == nil && len(validators) == 0 {
		return nil, errors.New("aTLS client needs validators, an issuer or both")
	}
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: curvePreferences(),
		NextProtos:       []string{alpnNoncePrefix + hex.EncodeToString(nonce)},
		// The server's certificate is self-signed; it is verified by its evidence in VerifyConnection.
		InsecureSkipVerify: true, //nolint:gosec
	}
	if len(validators) > 0 {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifyPeer(context.Background(), validators, nonce, cs)
		}
	}
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if issuer == nil {
			return selfSignedCert(cri.Context(), nil, nil)
		}
		serverNonce, err := nonceFromCAs(cri.AcceptableCAs)
		if err != nil {
			return nil, err
		}
		return selfSignedCert(cri.Context(), issuer, serverNonce)
	}
	return cfg, nil
}

// splitALPN separates the nonce from the application protocols a client offers.
func splitALPN(protos []string) (app []string, nonce []byte) {
	for _, p := range protos {
		if rest, ok := strings.CutPrefix(p, alpnNoncePrefix); ok {
			if n, err := hex.DecodeString(rest); err == nil && nonce == nil {
				nonce = n
			}
			continue
		}
		app = append(app, p)
	}
	return app, nonce
}

// noncePool returns a CA pool whose only subject carries the nonce, so that the server sends it in the
// CertificateRequest. The pool never verifies anything.
func noncePool(nonce []byte) (*x509.CertPool, error) {
	subject, err := asn1.Marshal(pkix.RDNSequence{{{Type: oidServerNonce, Value: nonce}}})
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(&x509.Certificate{RawSubject: subject, Raw: subject})
	return pool, nil
}

func nonceFromCAs(cas [][]byte) ([]byte, error) {
	for _, raw := range cas {
		var rdn pkix.RDNSequence
		rest, err := asn1.Unmarshal(raw, &rdn)
		if err != nil || len(rest) != 0 || len(rdn) != 1 || len(rdn[0]) != 1 || !rdn[0][0].Type.Equal(oidServerNonce) {
			continue
		}
		nonce, ok := rdn[0][0].Value.([]byte)
		if !ok {
			continue
		}
		if err := attestation.CheckNonce(nonce); err != nil {
			return nil, fmt.Errorf("aTLS: server nonce: %w", err)
		}
		return nonce, nil
	}
	return nil, errors.New("aTLS: the server asked for a client certificate but sent no attestation nonce")
}

// selfSignedCert creates a fresh key and certificate; with an issuer, the certificate carries evidence bound
// to the key and the peer's nonce.
func selfSignedCert(ctx context.Context, issuer attestation.Issuer, nonce []byte) (*tls.Certificate, error) {
	// Ed25519: the cheapest key to create, sign and verify with, and TLS 1.3 supports it everywhere.
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	var extra []extension
	if issuer != nil {
		spki, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		userData := sha256.Sum256(spki)
		evidence, err := issuer.Issue(ctx, nonce, userData[:])
		if err != nil {
			return nil, fmt.Errorf("aTLS: issuing evidence: %w", err)
		}
		value, err := asn1.Marshal(evidence)
		if err != nil {
			return nil, err
		}
		extra = []extension{{id: issuer.Variant().OID, value: value}}
	}
	now := time.Now()
	der, err := createCertificate(key, serial, now.Add(-clockSkew), now.Add(certValidity), extra)
	if err != nil {
		return nil, fmt.Errorf("aTLS: creating certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// VerificationError is returned when a peer's attestation fails. It wraps the validator's error.
type VerificationError struct{ Err error }

func (e *VerificationError) Error() string { return "aTLS: peer attestation failed: " + e.Err.Error() }
func (e *VerificationError) Unwrap() error { return e.Err }

// verifyPeer checks the peer's certificate and the evidence it carries.
func verifyPeer(ctx context.Context, validators []attestation.Validator, nonce []byte, cs tls.ConnectionState) error {
	if cs.DidResume {
		return &VerificationError{Err: errors.New("resumed sessions are not attested")}
	}
	if err := verifyPeerCert(ctx, validators, nonce, cs.PeerCertificates); err != nil {
		return &VerificationError{Err: err}
	}
	return nil
}

func verifyPeerCert(ctx context.Context, validators []attestation.Validator, nonce []byte, certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("peer sent no certificate")
	}
	cert := certs[0]
	now := time.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("peer certificate is valid from %s to %s, not now (%s); check the clocks", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	// The certificate's self-signature is not checked: it proves nothing the handshake does not. The TLS
	// CertificateVerify message, which crypto/tls has checked, proves the peer holds the certificate's key and
	// signs the transcript that contains the certificate; the evidence binds that key.
	evidence, validator, err := findEvidence(cert, validators)
	if err != nil {
		return err
	}
	userData, err := validator.Validate(ctx, evidence, nonce)
	if err != nil {
		return fmt.Errorf("validating %s evidence: %w", validator.Variant(), err)
	}
	want := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if subtle.ConstantTimeCompare(userData, want[:]) != 1 {
		return errors.New("evidence was made for another key than the peer's certificate key")
	}
	return nil
}

func findEvidence(cert *x509.Certificate, validators []attestation.Validator) ([]byte, attestation.Validator, error) {
	var found []string
	for _, ext := range cert.Extensions {
		if !attestation.IsVariantOID(ext.Id) {
			continue
		}
		name := ext.Id.String()
		if v, ok := attestation.VariantByOID(ext.Id); ok {
			name = v.Name
		}
		found = append(found, name)
		for _, val := range validators {
			if !val.Variant().OID.Equal(ext.Id) {
				continue
			}
			if len(ext.Value) > maxEvidenceExtension {
				return nil, nil, fmt.Errorf("evidence extension of %d bytes is too large", len(ext.Value))
			}
			var evidence []byte
			rest, err := asn1.Unmarshal(ext.Value, &evidence)
			if err != nil || len(rest) != 0 {
				return nil, nil, errors.New("evidence extension is not a single DER octet string")
			}
			return evidence, val, nil
		}
	}
	accepted := make([]string, len(validators))
	for i, v := range validators {
		accepted[i] = v.Variant().Name
	}
	if len(found) == 0 {
		return nil, nil, fmt.Errorf("peer certificate carries no attestation evidence (accepted variants: %s)", strings.Join(accepted, ", "))
	}
	return nil, nil, fmt.Errorf("peer attests with %s, accepted variants: %s", strings.Join(found, ", "), strings.Join(accepted, ", "))
}
