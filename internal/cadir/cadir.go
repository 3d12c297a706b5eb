// Package cadir keeps a certificate authority in a directory: its ECDSA P-256 key (ca-key.pem, SEC 1
// "EC PRIVATE KEY" PEM, mode 0600; what swtpm's local CA reads too) and its self-signed certificate
// (ca-cert.pem), created on first use and checked to belong together on every load.
package cadir

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

// Files of a CA directory.
const (
	KeyFile  = "ca-key.pem"
	CertFile = "ca-cert.pem"
)

// CA is a CA loaded from its directory.
type CA struct {
	// Dir is the directory, as an absolute path.
	Dir  string
	Key  *ecdsa.PrivateKey
	Cert *x509.Certificate
	// CertPEM is the content of ca-cert.pem.
	CertPEM []byte
}

// Generate creates a self-signed ECDSA P-256 CA key and certificate valid from an hour ago until notAfter, for
// signing end-entity certificates only (path length zero).
func Generate(commonName string, notAfter time.Time) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("generating CA serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-time.Hour).UTC(),
		NotAfter:              notAfter.UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return key, cert, nil
}

// LoadOrCreate loads the CA kept in dir, or creates it (directory 0700, key 0600) with commonName and notAfter
// if dir holds neither file. A directory with only one of the two files, or with a key that does not match
// the certificate, is an error: it is never overwritten.
func LoadOrCreate(dir, commonName string, notAfter time.Time) (*CA, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("CA directory %s: %w", dir, err)
	}
	keyPath, certPath := filepath.Join(dir, KeyFile), filepath.Join(dir, CertFile)
	_, keyErr := os.Stat(keyPath)
	_, certErr := os.Stat(certPath)
	switch {
	case keyErr == nil && certErr == nil:
		return load(dir)
	case errors.Is(keyErr, fs.ErrNotExist) && errors.Is(certErr, fs.ErrNotExist):
	case keyErr == nil || certErr == nil:
		return nil, fmt.Errorf("loading CA: %s holds only one of %s and %s; restore the other or remove the directory to start a new CA", dir, KeyFile, CertFile)
	default:
		return nil, fmt.Errorf("loading CA: %w", errors.Join(keyErr, certErr))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating CA directory: %w", err)
	}
	key, cert, err := Generate(commonName, notAfter)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding CA key: %w", err)
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("writing CA key: %w", err)
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return nil, fmt.Errorf("writing CA certificate: %w", err)
	}
	return load(dir)
}

func load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA certificate: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("loading CA certificate: no PEM CERTIFICATE block in %s", filepath.Join(dir, CertFile))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate %s: %w", filepath.Join(dir, CertFile), err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA key: %w", err)
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil || block.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("loading CA key: no PEM EC PRIVATE KEY block in %s", filepath.Join(dir, KeyFile))
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA key %s: %w", filepath.Join(dir, KeyFile), err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("loading CA: %s does not match the key of %s", KeyFile, CertFile)
	}
	return &CA{Dir: dir, Key: key, Cert: cert, CertPEM: bytes.Clone(certPEM)}, nil
}

// writeNew writes a file that must not exist yet.
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
