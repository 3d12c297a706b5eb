package atls

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"slices"
	"testing"
	"time"
)

// createCertificate must write what crypto/x509 parses to exactly the certificate it describes, with a valid
// self-signature, for times on both sides of the UTCTime/GeneralizedTime boundary.
func TestCreateCertificate(t *testing.T) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	evidenceOID := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1, 1, 1}
	value, _ := asn1.Marshal(bytes.Repeat([]byte{7}, 5000))
	serial := new(big.Int).Lsh(big.NewInt(1), 126)
	for _, notBefore := range []time.Time{
		time.Date(2026, 11, 26, 1, 2, 3, 999, time.UTC),
		time.Date(2049, 12, 31, 23, 59, 0, 0, time.UTC), // NotAfter in 2050: GeneralizedTime
		time.Date(2051, 1, 1, 0, 0, 0, 0, time.FixedZone("CET", 3600)),
	} {
		notAfter := notBefore.Add(10 * time.Minute)
		der, err := createCertificate(key, serial, notBefore, notAfter, []extension{{evidenceOID, value}})
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("crypto/x509 cannot parse the certificate: %v", err)
		}
		if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
			t.Fatalf("self-signature: %v", err)
		}
		if c.Version != 3 || c.SerialNumber.Cmp(serial) != 0 || c.Subject.CommonName != certificateSubject || c.Issuer.CommonName != certificateSubject ||
			!c.NotBefore.Equal(notBefore.Truncate(time.Second)) || !c.NotAfter.Equal(notAfter.Truncate(time.Second)) ||
			c.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) ||
			c.PublicKeyAlgorithm != x509.Ed25519 || !pub.Equal(c.PublicKey) || c.SignatureAlgorithm != x509.PureEd25519 {
			t.Fatalf("certificate for %s does not say what was asked: %+v", notBefore, c)
		}
		var found bool
		for _, e := range c.Extensions {
			if e.Id.Equal(evidenceOID) {
				found = !e.Critical && bytes.Equal(e.Value, value)
			}
			if e.Id.Equal(oidKeyUsage) && !e.Critical {
				t.Fatal("key usage is not critical")
			}
		}
		if !found {
			t.Fatal("evidence extension missing or changed")
		}
		der[len(der)-1] ^= 1
		if c, err := x509.ParseCertificate(der); err == nil && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil {
			t.Fatal("a tampered signature verifies")
		}
	}
	if _, err := createCertificate(key, big.NewInt(0), time.Now(), time.Now(), nil); err == nil {
		t.Fatal("serial number 0 accepted")
	}
}
