package atls

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
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

// The name a handler sees (AttestedPeerName) comes from the evidence that was validated, not from another
// evidence extension the peer's certificate may carry first.
func TestPeerSubjectComesFromTheValidatedEvidence(t *testing.T) {
	node, v := newNode(t)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	evidence, err := node.Issuer.Issue(context.Background(), make([]byte, 32), []byte("user data"))
	if err != nil {
		t.Fatal(err)
	}
	genuine, _ := asn1.Marshal(evidence)

	// A forged document under an unregistered variant OID, naming another node.
	_, fakeAKKey, _ := ed25519.GenerateKey(rand.Reader)
	fakeAK, err := createCertificate(fakeAKKey, big.NewInt(1), time.Now(), time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	fakeAKCert, _ := x509.ParseCertificate(fakeAK)
	forgedDoc, _ := (&attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.MiniVTPM.Name, TPM: &attestation.TPMEvidence{AKCert: fakeAK}}).Marshal()
	forged, _ := asn1.Marshal(forgedDoc)
	unregistered := append(slices.Clone(attestation.MiniVTPM.OID[:len(attestation.MiniVTPM.OID)-1]), 99)

	der, err := createCertificate(key, big.NewInt(2), time.Now(), time.Now().Add(time.Hour), []extension{
		{id: unregistered, value: forged},
		{id: attestation.MiniVTPM.OID, value: genuine},
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	got := peerSubject(tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}, []attestation.Validator{v})
	doc, _ := attestation.ParseDocument(evidence)
	if want := doc.AttestationKeySubject(); got != want || got == fakeAKCert.Subject.CommonName {
		t.Fatalf("peer subject %q, want %q from the validated evidence", got, want)
	}
}
