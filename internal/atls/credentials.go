package atls

import (
	"context"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// Credentials are gRPC transport credentials over aTLS. Every client handshake uses a fresh nonce.
type Credentials struct {
	issuer     attestation.Issuer
	validators []attestation.Validator
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
		cfg, err := CreateServerConfig(c.issuer, c.validators)
		if err != nil {
			c.serverErr = err
			return
		}
		c.server = credentials.NewTLS(cfg)
	})
	if c.serverErr != nil {
		return nil, nil, c.serverErr
	}
	return c.server.ServerHandshake(rawConn)
}

// Info describes the security protocol.
func (c *Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

// Clone returns a copy of the credentials.
func (c *Credentials) Clone() credentials.TransportCredentials {
	return &Credentials{issuer: c.issuer, validators: c.validators}
}

// OverrideServerName is a no-op: aTLS peers are identified by their evidence, not by name.
func (c *Credentials) OverrideServerName(string) error { return nil }
