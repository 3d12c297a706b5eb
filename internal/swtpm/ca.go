package swtpm

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/constellation-dev/constellation/internal/cadir"
)

// CA is a local certificate authority that signs EK certificates of manufactured TPMs. Its ECDSA P-256 key
// and self-signed certificate live as PEM files in a directory (package cadir), where swtpm_localca also keeps
// its serial counter (certserial) and lock file (.lock.swtpm-localca).
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM []byte
}

// NewCA loads the CA stored in dir, or creates a new one (directory 0700, key 0600) if dir holds none.
func NewCA(dir string) (*CA, error) {
	// The certificate lives as long as the EK certificates it signs.
	ca, err := cadir.LoadOrCreate(dir, "swtpm local EK CA", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC))
	if err != nil {
		return nil, fmt.Errorf("EK CA: %w", err)
	}
	return &CA{dir: ca.Dir, cert: ca.Cert, certPEM: ca.CertPEM}, nil
}

// Certificate returns the CA's self-signed certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertPEM returns the CA's certificate in PEM encoding.
func (c *CA) CertPEM() []byte { return bytes.Clone(c.certPEM) }
