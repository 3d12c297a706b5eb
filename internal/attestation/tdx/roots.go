package tdx

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"sync"
)

// intelRootPEM is the Intel SGX Root CA certificate, the root of PCK certificates, of the TCB signing
// certificate and of their CRLs. Intel publishes it at
// https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.pem.
//
//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

// intelRootSHA256 pins the root certificate's DER encoding, so that a changed file fails loudly.
const intelRootSHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

var intelRoot = sync.OnceValues(func() (*x509.Certificate, error) {
	block, rest := pem.Decode(intelRootPEM)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("embedded Intel SGX Root CA: want exactly one PEM certificate")
	}
	if sum := sha256.Sum256(block.Bytes); hex.EncodeToString(sum[:]) != intelRootSHA256 {
		return nil, fmt.Errorf("embedded Intel SGX Root CA: SHA-256 %x, want %s", sum, intelRootSHA256)
	}
	return x509.ParseCertificate(block.Bytes)
})

// IntelSGXRootCA returns a copy of the embedded Intel SGX Root CA certificate, the only root this package
// trusts.
func IntelSGXRootCA() *x509.Certificate {
	root := mustIntelRoot()
	c, err := x509.ParseCertificate(root.Raw)
	if err != nil {
		panic(err)
	}
	return c
}

func mustIntelRoot() *x509.Certificate {
	root, err := intelRoot()
	if err != nil {
		// The certificate is compiled in and checked by the tests; this cannot happen in a released binary.
		panic(err)
	}
	return root
}
