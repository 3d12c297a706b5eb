package joinservice

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// KubeletCertTTL is the lifetime of the kubelet client certificates the join service issues (kubeadm's for
// kubelets); the kubelet renews its certificate through the API server before it expires.
const KubeletCertTTL = 365 * 24 * time.Hour

// kubeletClockSkew backdates certificates, for nodes whose clock is slightly behind.
const kubeletClockSkew = 5 * time.Minute

// Kubernetes' names for a node's client identity.
const (
	nodeUserPrefix = "system:node:"
	nodesGroup     = "system:nodes"
)

// CheckKubeletCSR parses a kubelet's certificate request and checks that it asks for exactly the client
// identity of the node name and nothing else: subject CN=system:node:<name>, O=system:nodes, no other subject
// fields, names or extensions, a signature by its own key, and an ECDSA P-256/P-384 or RSA (2048 to 8192 bits)
// key.
func CheckKubeletCSR(der []byte, name string) (*x509.CertificateRequest, error) {
	if name == "" {
		return nil, errors.New("the node has no name to certify")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("the kubelet certificate request does not parse: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the kubelet certificate request is not signed by its key: %w", err)
	}
	s := csr.Subject
	want := nodeUserPrefix + name
	if s.CommonName != want || len(s.Organization) != 1 || s.Organization[0] != nodesGroup ||
		len(s.Country)+len(s.Province)+len(s.Locality)+len(s.StreetAddress)+len(s.PostalCode)+len(s.OrganizationalUnit)+len(s.ExtraNames) != 0 || s.SerialNumber != "" {
		return nil, fmt.Errorf("the kubelet certificate request is for %q; this node may only ask for CN=%s, O=%s", s.String(), want, nodesGroup)
	}
	if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses)+len(csr.URIs)+len(csr.Extensions) != 0 {
		return nil, errors.New("the kubelet certificate request asks for names or extensions besides its subject")
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("the kubelet key is on curve %s; use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if b := k.N.BitLen(); b < 2048 || b > 8192 {
			return nil, fmt.Errorf("the kubelet key is RSA with %d bits; use 2048 to 8192", b)
		}
	default:
		return nil, fmt.Errorf("the kubelet key is a %T; use ECDSA or RSA", csr.PublicKey)
	}
	return csr, nil
}

// clusterCA is the cluster CA's certificate and key, from kubeadm's PKI directory.
type clusterCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// loadClusterCA reads ca.crt and ca.key from dir and checks that they belong together.
func loadClusterCA(dir string) (*clusterCA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("ca.crt is not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca.crt: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("ca.key is not PEM")
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("ca.key holds a %q block, not a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("ca.key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca.key holds a %T, which cannot sign", key)
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(pub, cert.RawSubjectPublicKeyInfo) {
		return nil, errors.New("ca.key is not the key of ca.crt")
	}
	return &clusterCA{cert: cert, key: signer}, nil
}

// signKubelet issues the kubelet client certificate a checked request asks for.
func (ca *clusterCA) signKubelet(csr *x509.CertificateRequest, now time.Time) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); isRSA {
		usage |= x509.KeyUsageKeyEncipherment
	}
	notAfter := now.Add(KubeletCertTTL)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter // never beyond the CA
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: csr.Subject.CommonName, Organization: []string{nodesGroup}},
		NotBefore:             now.Add(-kubeletClockSkew),
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
}
