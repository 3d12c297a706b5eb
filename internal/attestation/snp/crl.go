package snp

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// MaxCRLSize bounds a CRL file. AMD's CRLs are a few KiB.
const MaxCRLSize = 1 << 20

// ParseCRL parses one certificate revocation list, DER or PEM ("X509 CRL"), and rejects trailing data. It
// does not check the signature; [NewVerifier] does.
func ParseCRL(data []byte) (*x509.RevocationList, error) {
	if len(data) > MaxCRLSize {
		return nil, fmt.Errorf("%w: CRL of %d bytes exceeds the limit of %d", ErrMalformedCertificates, len(data), MaxCRLSize)
	}
	der := data
	if trimmed := bytes.TrimSpace(data); bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		block, rest := pem.Decode(trimmed)
		if block == nil || block.Type != "X509 CRL" {
			return nil, fmt.Errorf("%w: PEM data is not an X509 CRL block", ErrMalformedCertificates)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: %d bytes of trailing data after the CRL", ErrMalformedCertificates, len(rest))
		}
		der = block.Bytes
	}
	// x509.ParseRevocationList ignores data after the CRL; the outer ASN.1 element must span the input.
	var outer asn1.RawValue
	rest, err := asn1.Unmarshal(der, &outer)
	if err != nil {
		return nil, fmt.Errorf("%w: CRL: %w", ErrMalformedCertificates, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes of trailing data after the CRL", ErrMalformedCertificates, len(rest))
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: CRL: %w", ErrMalformedCertificates, err)
	}
	return crl, nil
}

// LoadCRLDir reads the offline CRL cache in dir, for [VerifierOptions.CRLs]. A file belongs to a product by
// its name: <product>.crl or <product>-<anything>.crl, case-insensitive, for instance milan.crl (from
// https://kdsintf.amd.com/vcek/v1/Milan/crl) and milan-vlek.crl (from .../vlek/v1/Milan/crl). The contents
// may be DER or PEM. Other .crl files are an error, so that a misnamed CRL is not silently ignored; files
// with other extensions are ignored. An empty directory yields no CRLs; a missing directory is an error.
func LoadCRLDir(dir string) (map[Product][][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading CRL cache: %w", err)
	}
	out := map[Product][][]byte{}
	for _, e := range entries {
		name := e.Name()
		if !strings.EqualFold(filepath.Ext(name), ".crl") {
			continue
		}
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("CRL cache: %s is not a regular file", name)
		}
		base := strings.TrimSuffix(name, filepath.Ext(name))
		prefix, _, _ := strings.Cut(base, "-")
		product, err := ParseProduct(prefix)
		if err != nil {
			return nil, fmt.Errorf("CRL cache: cannot tell the product of %s; name it <product>.crl or <product>-<suffix>.crl: %w", name, err)
		}
		data, err := readLimited(filepath.Join(dir, name), MaxCRLSize)
		if err != nil {
			return nil, fmt.Errorf("CRL cache: %w", err)
		}
		out[product] = append(out[product], data)
	}
	return out, nil
}

// readLimited reads a file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errors.New(path + ": larger than " + fmt.Sprint(limit) + " bytes")
	}
	return data, nil
}
