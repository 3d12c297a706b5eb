package snp

import (
	"bytes"
	"crypto/x509"
	"embed"
	"fmt"
	"strings"
	"sync"
	"time"
)

// The AMD certificate chains of each product, as served by the AMD key distribution service at
// https://kdsintf.amd.com/vcek/v1/<product>/cert_chain (ASK and ARK) and
// https://kdsintf.amd.com/vlek/v1/<product>/cert_chain (ASVK and ARK). They are public certificates; the
// tests pin the SHA-256 fingerprint of every ARK.
//
//go:embed amdroots/*.pem
var amdRootFiles embed.FS

// ProductRoots are the AMD certificates of one product that a verifier trusts.
type ProductRoots struct {
	// ARK is the self-signed AMD root key certificate.
	ARK *x509.Certificate
	// ASK is the AMD SEV key certificate, signed by the ARK; it certifies VCEKs.
	ASK *x509.Certificate
	// ASVK is the AMD SEV VLEK key certificate, signed by the ARK; it certifies VLEKs. It may be nil; then
	// VLEK-signed reports of the product are rejected.
	ASVK *x509.Certificate
}

// Roots is a set of trusted AMD roots, one [ProductRoots] per product.
type Roots struct {
	products map[Product]ProductRoots
}

// Product returns the roots of one product.
func (r *Roots) Product(p Product) (ProductRoots, bool) {
	pr, ok := r.products[p]
	return pr, ok
}

// NewRoots checks and returns a set of trusted roots. Each ARK must be a self-signed CA certificate named
// ARK-<product>; each ASK (SEV-<product>) and ASVK (SEV-VLEK-<product>) must be a CA certificate signed by
// the ARK of its product. Use it to pin roots other than the embedded ones (for instance in tests); the
// production trust store is [AMDRoots].
func NewRoots(products map[Product]ProductRoots) (*Roots, error) {
	if len(products) == 0 {
		return nil, fmt.Errorf("%w: no product roots", ErrChain)
	}
	out := &Roots{products: map[Product]ProductRoots{}}
	for p, pr := range products {
		if !p.valid() {
			return nil, fmt.Errorf("%w: roots for product %d", ErrUnknownProduct, int(p))
		}
		if pr.ARK == nil || pr.ASK == nil {
			return nil, fmt.Errorf("%w: %v roots need an ARK and an ASK", ErrChain, p)
		}
		if pr.ARK.Subject.CommonName != "ARK-"+p.String() {
			return nil, fmt.Errorf("%w: %v ARK has common name %q, want %q", ErrChain, p, pr.ARK.Subject.CommonName, "ARK-"+p.String())
		}
		if err := checkIssued(pr.ARK, pr.ARK); err != nil {
			return nil, fmt.Errorf("%w: %v ARK is not a self-signed CA certificate: %w", ErrChain, p, err)
		}
		if err := checkIntermediate(p, "ASK", pr.ASK, pr.ARK); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrChain, err)
		}
		if pr.ASVK != nil {
			if err := checkIntermediate(p, "ASVK", pr.ASVK, pr.ARK); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrChain, err)
			}
		}
		out.products[p] = pr
	}
	return out, nil
}

// intermediateName is the common name AMD gives the ASK or ASVK of a product.
func intermediateName(p Product, role string) string {
	if role == "ASVK" {
		return "SEV-VLEK-" + p.String()
	}
	return "SEV-" + p.String()
}

// checkIntermediate checks that cert is the ASK or ASVK (role) of product p, signed by ark.
func checkIntermediate(p Product, role string, cert, ark *x509.Certificate) error {
	if want := intermediateName(p, role); cert.Subject.CommonName != want {
		return fmt.Errorf("%v %s has common name %q, want %q", p, role, cert.Subject.CommonName, want)
	}
	if !cert.IsCA {
		return fmt.Errorf("%v %s is not a CA certificate", p, role)
	}
	if err := checkIssued(cert, ark); err != nil {
		return fmt.Errorf("%v %s is not signed by the %v ARK: %w", p, role, p, err)
	}
	return nil
}

// checkIssued checks that parent issued child: names chain, the parent is a CA allowed to sign
// certificates, the signature is RSASSA-PSS with SHA-384 (the algorithm of every AMD certificate) and
// verifies, and the child has no critical extension this package does not understand.
func checkIssued(child, parent *x509.Certificate) error {
	if !bytes.Equal(child.RawIssuer, parent.RawSubject) {
		return fmt.Errorf("its issuer %q is not the subject %q of the issuing certificate", child.Issuer.String(), parent.Subject.String())
	}
	if child.SignatureAlgorithm != x509.SHA384WithRSAPSS {
		return fmt.Errorf("signature algorithm %v, want %v", child.SignatureAlgorithm, x509.SHA384WithRSAPSS)
	}
	if err := child.CheckSignatureFrom(parent); err != nil {
		return err
	}
	if len(child.UnhandledCriticalExtensions) != 0 {
		return fmt.Errorf("unknown critical extensions %v", child.UnhandledCriticalExtensions)
	}
	return nil
}

// checkValidity checks that now lies within the validity period of cert.
func checkValidity(role string, cert *x509.Certificate, now time.Time) error {
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("%w: %s certificate is not valid before %s", ErrChain, role, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%w: %s certificate expired at %s", ErrChain, role, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

var amdRoots = sync.OnceValues(loadAMDRoots)

// AMDRoots returns the AMD roots embedded in this package: ARK, ASK and ASVK of Milan, Genoa and Turin.
func AMDRoots() *Roots {
	r, err := amdRoots()
	if err != nil {
		// The embedded files are constant and covered by tests; failing to load them is a build defect.
		panic(err)
	}
	return r
}

func loadAMDRoots() (*Roots, error) {
	products := map[Product]ProductRoots{}
	for _, p := range Products() {
		var pr ProductRoots
		for _, kind := range []string{"vcek", "vlek"} {
			name := fmt.Sprintf("amdroots/%s_%s.pem", strings.ToLower(p.String()), kind)
			data, err := amdRootFiles.ReadFile(name)
			if err != nil {
				return nil, fmt.Errorf("embedded AMD roots: %w", err)
			}
			certs, err := ParseCertificates(data)
			if err != nil {
				return nil, fmt.Errorf("embedded AMD roots %s: %w", name, err)
			}
			if certs.ARK == nil || certs.Intermediate == nil || certs.VCEK != nil || certs.VLEK != nil {
				return nil, fmt.Errorf("embedded AMD roots %s: want exactly an ARK and an intermediate", name)
			}
			if pr.ARK != nil && !pr.ARK.Equal(certs.ARK) {
				return nil, fmt.Errorf("embedded AMD roots %s: ARK differs from the other chain of %v", name, p)
			}
			pr.ARK = certs.ARK
			if kind == "vcek" {
				pr.ASK = certs.Intermediate
			} else {
				pr.ASVK = certs.Intermediate
			}
		}
		products[p] = pr
	}
	return NewRoots(products)
}
