package atls

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// Credentials are gRPC transport credentials over aTLS. Every client handshake uses a fresh nonce.
type Credentials struct {
	issuer     attestation.Issuer
	validators []attestation.Validator
	limit      *IssuanceLimiter // of a server's evidence issuance; nil: DefaultIssuanceLimits
	serverOnce sync.Once
	server     credentials.TransportCredentials
	serverErr  error
}

// NewCredentials returns gRPC transport credentials. On a server, issuer makes the server attest itself and
// validators make it require attested clients; on a client, validators make it require an attested server
// and issuer lets it attest itself.
func NewCredentials(issuer attestation.Issuer, validators []attestation.Validator) (*Credentials, error) {
	if issuer == nil && len(validators) == 0 {
		return nil, errors.New("aTLS credentials need an issuer, validators or both")
	}
	return &Credentials{issuer: issuer, validators: validators}, nil
}

// ClientHandshake performs an aTLS client handshake with a fresh nonce.
func (c *Credentials) ClientHandshake(ctx context.Context, authority string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg, err := CreateClientConfig(c.issuer, c.validators)
	if err != nil {
		return nil, nil, err
	}
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, rawConn)
}

// ServerHandshake performs an aTLS server handshake.
func (c *Credentials) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c.serverOnce.Do(func() {
		limit, err := c.serverLimiter()
		if err != nil {
			c.serverErr = err
			return
		}
		cfg, err := CreateServerConfig(c.issuer, c.validators, WithIssuanceLimiter(limit))
		if err != nil {
			c.serverErr = err
			return
		}
		c.server = credentials.NewTLS(cfg)
	})
	if c.serverErr != nil {
		return nil, nil, c.serverErr
	}
	conn, info, err := c.server.ServerHandshake(rawConn)
	if err != nil || len(c.validators) == 0 {
		return conn, info, err
	}
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok {
		conn.Close()
		return nil, nil, errors.New("aTLS: unexpected auth info from the TLS handshake")
	}
	return conn, AuthInfo{TLSInfo: tlsInfo, PeerAttested: true, PeerSubject: peerSubject(tlsInfo.State, c.validators)}, nil
}

// AuthInfo is the gRPC auth info of a connection whose client was attested during the handshake.
type AuthInfo struct {
	credentials.TLSInfo
	// PeerAttested is true: the client's evidence was validated.
	PeerAttested bool
	// PeerSubject names the attested client (its attestation key certificate's subject), for logs.
	PeerSubject string
}

// AttestedPeer returns the subject of the attested client of a gRPC call. ok is false when the call did not
// come over a connection whose client was attested, so a handler can fail closed if the server was set up
// with the wrong credentials.
func AttestedPeer(ctx context.Context) (subject string, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found {
		return "", false
	}
	info, isATLS := p.AuthInfo.(AuthInfo)
	if !isATLS || !info.PeerAttested {
		return "", false
	}
	subject = info.PeerSubject
	if subject == "" {
		subject = "unnamed"
	}
	return subject + "@" + p.Addr.String(), true
}

// AttestedPeerName returns the subject of the attested client's attestation key certificate, which the
// certificate's issuer (the provider) vouches for: the node's name. ok is false for calls from unattested
// clients or from clients whose certificate names nobody.
func AttestedPeerName(ctx context.Context) (name string, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found {
		return "", false
	}
	info, isATLS := p.AuthInfo.(AuthInfo)
	if !isATLS || !info.PeerAttested || info.PeerSubject == "" {
		return "", false
	}
	return info.PeerSubject, true
}

// peerSubject names the peer by the attestation key subject in the evidence that was validated: the same
// extension the validators accepted (findEvidence), never another one the certificate may carry.
func peerSubject(state tls.ConnectionState, validators []attestation.Validator) string {
	if len(state.PeerCertificates) == 0 {
		return ""
	}
	evidence, _, err := findEvidence(state.PeerCertificates[0], validators)
	if err != nil {
		return ""
	}
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return ""
	}
	return doc.AttestationKeySubject()
}

// Info describes the security protocol.
func (c *Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

// Clone returns a copy of the credentials.
func (c *Credentials) Clone() credentials.TransportCredentials {
	return &Credentials{issuer: c.issuer, validators: c.validators, limit: c.limit}
}

// OverrideServerName is a no-op: aTLS peers are identified by their evidence, not by name.
func (c *Credentials) OverrideServerName(string) error { return nil }
