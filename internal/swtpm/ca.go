package swtpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files of a CA directory. swtpm_localca additionally keeps its serial counter (certserial) and
// lock file (.lock.swtpm-localca) there.
const (
	caKeyFile  = "ca-key.pem"
	caCertFile = "ca-cert.pem"
)

// CA is a local certificate authority that signs EK certificates of manufactured TPMs.
// Its ECDSA P-256 key and self-signed certificate live as PEM files in a directory.
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM []byte
}

// NewCA loads the CA stored in dir, or creates a new one (directory 0700, key 0600) if dir holds none.
func NewCA(dir string) (*CA, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	keyPath, certPath := filepath.Join(dir, caKeyFile), filepath.Join(dir, caCertFile)
	_, keyErr := os.Stat(keyPath)
	_, certErr := os.Stat(certPath)
	switch {
	case keyErr == nil && certErr == nil:
		return loadCA(dir)
	case errors.Is(keyErr, fs.ErrNotExist) && errors.Is(certErr, fs.ErrNotExist):
	case keyErr == nil || certErr == nil:
		return nil, fmt.Errorf("loading CA: %s holds only one of %s and %s", dir, caKeyFile, caCertFile)
	default:
		return nil, fmt.Errorf("loading CA: %w", errors.Join(keyErr, certErr))
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating CA directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating CA serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "swtpm local EK CA"},
		NotBefore:             time.Now().Add(-time.Hour).UTC(),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), // as the EK certs it signs
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding CA key: %w", err)
	}
	// SEC 1 "EC PRIVATE KEY" PEM is what swtpm_cert (GnuTLS) reads as signing key.
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("writing CA key: %w", err)
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, fmt.Errorf("writing CA certificate: %w", err)
	}
	return loadCA(dir)
}

func loadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA certificate: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("loading CA certificate: no PEM CERTIFICATE block in %s", caCertFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA key: %w", err)
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil || block.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("loading CA key: no PEM EC PRIVATE KEY block in %s", caKeyFile)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("loading CA: %s does not match the key of %s", caKeyFile, caCertFile)
	}
	return &CA{dir: dir, cert: cert, certPEM: certPEM}, nil
}

// Certificate returns the CA's self-signed certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertPEM returns the CA's certificate in PEM encoding.
func (c *CA) CertPEM() []byte { return bytes.Clone(c.certPEM) }

func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
