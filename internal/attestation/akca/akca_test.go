package akca_test

import (
	"context"
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// recordingCA wraps a CA to tamper with the enrollment protocol.
type recordingCA struct {
	*akca.CA
	tamperReq    func(*akca.EnrollRequest)
	tamperSecret func([]byte) []byte
	lastID       string
}

func (r *recordingCA) Challenge(ctx context.Context, req akca.EnrollRequest) (*akca.Challenge, error) {
	if r.tamperReq != nil {
		r.tamperReq(&req)
	}
	ch, err := r.CA.Challenge(ctx, req)
	if ch != nil {
		r.lastID = ch.ID
	}
	return ch, err
}

func (r *recordingCA) Complete(ctx context.Context, id string, secret []byte) ([]byte, error) {
	if r.tamperSecret != nil {
		secret = r.tamperSecret(secret)
	}
	return r.CA.Complete(ctx, id, secret)
}

func TestEnroll(t *testing.T) {
	mf, err := tpmtest.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	sim, err := mf.Simulator()
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	ca, err := tpmtest.NewAKCA(mf.Cert)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	der, err := akca.Enroll(ctx, sim, "node-0", vtpm.ECC, ca)
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "node-0" || !slices.ContainsFunc(cert.UnknownExtKeyUsage, vtpm.OIDAKCertificate.Equal) {
		t.Fatalf("unexpected certificate: subject %q, EKUs %v", cert.Subject, cert.UnknownExtKeyUsage)
	}
	if err := cert.CheckSignatureFrom(ca.Certificate()); err != nil {
		t.Fatalf("AK certificate not signed by the CA: %v", err)
	}
	t.Run("wrong secret", func(t *testing.T) {
		r := &recordingCA{CA: ca, tamperSecret: func(s []byte) []byte { s[0] ^= 1; return s }}
		if _, err := akca.Enroll(ctx, sim, "node-0", vtpm.ECC, r); err == nil || !strings.Contains(err.Error(), "not in the same TPM") {
			t.Fatalf("Enroll with a wrong secret = %v", err)
		}
		// The challenge was consumed: answering it again, even correctly, fails.
		if _, err := ca.Complete(ctx, r.lastID, make([]byte, 32)); err == nil || !strings.Contains(err.Error(), "unknown or expired") {
			t.Fatalf("second answer to a challenge = %v", err)
		}
	})
	t.Run("AK of another TPM", func(t *testing.T) {
		// An attacker submits its own software key as AK; the credential is bound to that key's name, so this
		// TPM cannot activate it (the AK handle it uses has another name).
		other, err := client.NewKey(sim, tpm2.HandleOwner, client.AKTemplateRSA())
		if err != nil {
			t.Fatal(err)
		}
		pub, err := other.PublicArea().Encode()
		other.Close()
		if err != nil {
			t.Fatal(err)
		}
		r := &recordingCA{CA: ca, tamperReq: func(req *akca.EnrollRequest) { req.AKPublic = pub }}
		if _, err := akca.Enroll(ctx, sim, "node-0", vtpm.ECC, r); err == nil || !strings.Contains(err.Error(), "activating credential") {
			t.Fatalf("Enroll with a swapped AK = %v", err)
		}
	})
	t.Run("unrestricted key as AK", func(t *testing.T) {
		tmpl := client.AKTemplateECC()
		tmpl.Attributes &^= tpm2.FlagRestricted
		tmpl.ECCParameters.Sign = nil
		key, err := client.NewKey(sim, tpm2.HandleOwner, tmpl)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := key.PublicArea().Encode()
		key.Close()
		if err != nil {
			t.Fatal(err)
		}
		r := &recordingCA{CA: ca, tamperReq: func(req *akca.EnrollRequest) { req.AKPublic = pub }}
		if _, err := akca.Enroll(ctx, sim, "node-0", vtpm.ECC, r); err == nil || !strings.Contains(err.Error(), "restricted") {
			t.Fatalf("Enroll with an unrestricted key = %v", err)
		}
	})
	t.Run("EK from an unknown manufacturer", func(t *testing.T) {
		otherMf, err := tpmtest.NewManufacturer()
		if err != nil {
			t.Fatal(err)
		}
		strict, err := tpmtest.NewAKCA(otherMf.Cert)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := akca.Enroll(ctx, sim, "node-0", vtpm.ECC, strict); err == nil || !strings.Contains(err.Error(), "not from a trusted TPM manufacturer") {
			t.Fatalf("Enroll with an untrusted EK = %v", err)
		}
	})
	t.Run("CA certificate as EK certificate", func(t *testing.T) {
		ak, err := vtpm.CreateAK(sim, vtpm.ECC)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := ak.PublicArea().Encode()
		ak.Close()
		if err != nil {
			t.Fatal(err)
		}
		_, err = ca.Challenge(ctx, akca.EnrollRequest{Name: "n", EKCert: mf.Cert.Raw, AKPublic: pub})
		if err == nil || !strings.Contains(err.Error(), "is a CA certificate") {
			t.Fatalf("Challenge with the manufacturer root as EK certificate = %v", err)
		}
	})
	t.Run("malformed requests", func(t *testing.T) {
		for name, req := range map[string]akca.EnrollRequest{
			"no name":       {EKCert: mf.Cert.Raw, AKPublic: []byte{1}},
			"garbage EK":    {Name: "n", EKCert: []byte("garbage"), AKPublic: []byte{1}},
			"truncated AK":  {Name: "n", EKCert: nil, AKPublic: []byte{0, 1}},
			"EK root as EK": {Name: "n", EKCert: mf.Cert.Raw, AKPublic: []byte{1}},
		} {
			if _, err := ca.Challenge(ctx, req); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
	})
}

// FuzzChallenge feeds arbitrary enrollment requests (untrusted bytes from nodes) to the CA.
func FuzzChallenge(f *testing.F) {
	ak, err := client.AKTemplateECC().Encode()
	if err != nil {
		f.Fatal(err)
	}
	mf, err := tpmtest.NewManufacturer()
	if err != nil {
		f.Fatal(err)
	}
	ca, err := tpmtest.NewAKCA(mf.Cert)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(mf.Cert.Raw, ak)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01}, []byte{0x00, 0x23, 0x00, 0x0b})
	f.Fuzz(func(t *testing.T, ekCert, akPublic []byte) {
		ch, err := ca.Challenge(context.Background(), akca.EnrollRequest{Name: "fuzz", EKCert: ekCert, AKPublic: akPublic})
		if err == nil || ch != nil {
			// Only a certificate chaining to the manufacturer root can get a challenge; the fuzzer cannot forge one.
			t.Fatalf("challenge issued for fuzzed input: %v", err)
		}
	})
}
