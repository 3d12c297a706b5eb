package snp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

var testVariant = attestation.Variant{Name: "test-sev-snp"}

// TestNonceBinding signs a report bound to a nonce and user data and checks that only that nonce and user
// data are accepted.
func TestNonceBinding(t *testing.T) {
	nonce := []byte("0123456789abcdef0123456789abcdef")
	userData := []byte("hash of the TLS key")
	rd := ReportDataForNonce(testVariant, nonce, userData)
	digest := attestation.BindingDigest(testVariant, nonce, userData)
	if [32]byte(rd[:32]) != digest || !isZero(rd[32:]) {
		t.Fatalf("ReportDataForNonce %x is not the binding digest followed by zeros", rd)
	}

	o := reportOptions{reportData: rd, measurement: [48]byte{7}}
	ev := newTestEvidence(t, o)
	v := testVerifier(t, ev.roots, nil)
	vr, err := v.Verify(mustParse(t, ev.raw), ev.certs)
	if err != nil {
		t.Fatal(err)
	}
	check := func(rd [ReportDataSize]byte) error {
		p := testPolicy(o)
		p.ReportData = rd[:]
		if err := p.Check(vr); err != nil {
			return err
		}
		return CheckReportData(vr.Report, rd)
	}
	if err := check(rd); err != nil {
		t.Fatalf("bound nonce and user data: %v", err)
	}
	otherNonce := append([]byte(nil), nonce...)
	otherNonce[0] ^= 1
	secondHalf := rd
	secondHalf[40] = 1
	for name, want := range map[string][ReportDataSize]byte{
		"other nonce":              ReportDataForNonce(testVariant, otherNonce, userData),
		"other user data":          ReportDataForNonce(testVariant, nonce, []byte("hash of another key")),
		"other variant":            ReportDataForNonce(attestation.MiniVTPM, nonce, userData),
		"non-zero second half":     secondHalf,
		"attestation key binding":  mustReportDataForAttestationKey(t, mustP384(t).Public()),
		"nonce moved to user data": ReportDataForNonce(testVariant, nil, append(append([]byte(nil), nonce...), userData...)),
	} {
		if err := check(want); !errors.Is(err, ErrReportData) || !errors.Is(err, ErrPolicy) {
			t.Errorf("%s: %v, want ErrReportData", name, err)
		}
	}
}

func mustReportDataForAttestationKey(t *testing.T, pub any) [ReportDataSize]byte {
	t.Helper()
	rd, err := ReportDataForAttestationKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return rd
}

func TestAKBinding(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rd := mustReportDataForAttestationKey(t, ecKey.Public())
	// The definition: SHA-512 over the label and the DER SubjectPublicKeyInfo.
	der, _ := x509.MarshalPKIXPublicKey(ecKey.Public())
	if want := sha512.Sum512(append([]byte("constellation snp ak binding v1\x00"), der...)); rd != want {
		t.Errorf("ReportDataForAttestationKey %x, want %x", rd, want)
	}
	if mustReportDataForAttestationKey(t, ecKey.Public()) != rd {
		t.Error("ReportDataForAttestationKey is not deterministic")
	}
	if mustReportDataForAttestationKey(t, rsaKey.Public()) == rd {
		t.Error("two keys have the same binding")
	}
	if _, err := ReportDataForAttestationKey("not a key"); err == nil {
		t.Error("ReportDataForAttestationKey accepted a non-key")
	}

	o := reportOptions{reportData: rd}
	ev := newTestEvidence(t, o)
	vr, err := testVerifier(t, ev.roots, nil).Verify(mustParse(t, ev.raw), ev.certs)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckReportData(vr.Report, rd); err != nil {
		t.Errorf("bound AK: %v", err)
	}
	if err := CheckReportData(vr.Report, mustReportDataForAttestationKey(t, rsaKey.Public())); !errors.Is(err, ErrReportData) {
		t.Errorf("other AK: %v", err)
	}
	if err := CheckReportData(nil, rd); !errors.Is(err, ErrPolicy) {
		t.Errorf("nil report: %v", err)
	}
}
