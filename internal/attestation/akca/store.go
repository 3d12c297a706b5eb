package akca

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/constellation-dev/constellation/internal/cadir"
)

// LoadOrCreate returns the CA kept in dir (package cadir: ca-key.pem, mode 0600, and ca-cert.pem), creating it
// on first use with a validity of ten years.
func LoadOrCreate(dir, commonName string, ekRoots []*x509.Certificate) (*CA, error) {
	ca, err := cadir.LoadOrCreate(dir, commonName, time.Now().Add(10*365*24*time.Hour))
	if err != nil {
		return nil, fmt.Errorf("AK CA: %w", err)
	}
	return New(ca.Key, ca.Cert, ekRoots)
}
