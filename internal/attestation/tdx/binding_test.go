package tdx

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

func TestReportDataForNonce(t *testing.T) {
	v := attestation.MiniVTPM
	other := attestation.Variant{Name: "qemu-tdx"}
	nonce := bytes.Repeat([]byte{7}, 32)
	rd := ReportDataForNonce(v, nonce, []byte("user data"))

	// Layout: binding digest, then the purpose tag.
	d := attestation.BindingDigest(v, nonce, []byte("user data"))
	if !bytes.Equal(rd[:32], d[:]) {
		t.Error("bytes 0-31 are not the binding digest")
	}
	tag := sha256.Sum256([]byte("constellation tdx report data v1\x00nonce"))
	if !bytes.Equal(rd[32:], tag[:]) {
		t.Error("bytes 32-63 are not the nonce purpose tag")
	}
	if rd != ReportDataForNonce(v, nonce, []byte("user data")) {
		t.Error("not deterministic")
	}
	for name, x := range map[string][ReportDataSize]byte{
		"other nonce":     ReportDataForNonce(v, bytes.Repeat([]byte{8}, 32), []byte("user data")),
		"other user data": ReportDataForNonce(v, nonce, []byte("user datb")),
		"other variant":   ReportDataForNonce(other, nonce, []byte("user data")),
		"shifted bytes":   ReportDataForNonce(v, append(nonce, 'u'), []byte("ser data")),
	} {
		if x == rd {
			t.Errorf("%s gives the same REPORT_DATA", name)
		}
	}
}

func TestReportDataForAttestationKey(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	nonce := bytes.Repeat([]byte{7}, 32)
	rd, err := ReportDataForAttestationKey(attestation.MiniVTPM, nonce, &k1.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rd2, err := ReportDataForAttestationKey(attestation.MiniVTPM, nonce, &k2.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if rd == rd2 {
		t.Error("two keys give the same REPORT_DATA")
	}
	// User data that equals the key's encoding does not give the key binding.
	der, err := x509.MarshalPKIXPublicKey(&k1.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if ReportDataForNonce(attestation.MiniVTPM, nonce, der) == rd {
		t.Error("nonce binding of the key's encoding equals the key binding")
	}
	if _, err := ReportDataForAttestationKey(attestation.MiniVTPM, nonce, struct{}{}); err == nil {
		t.Error("unsupported key type accepted")
	}
}

func TestCheckReportData(t *testing.T) {
	p := newTestPKI(t)
	tq := p.newQuote()
	tq.body.ReportData = ReportDataForNonce(attestation.MiniVTPM, bytes.Repeat([]byte{1}, 32), nil)
	q := mustParseQuote(t, p.build(t, tq))
	if err := CheckReportData(q, tq.body.ReportData); err != nil {
		t.Fatal(err)
	}
	for i := range ReportDataSize {
		want := tq.body.ReportData
		want[i] ^= 0x80
		if err := CheckReportData(q, want); !errors.Is(err, ErrPolicy) || !errors.Is(err, ErrReportData) {
			t.Fatalf("byte %d differs: CheckReportData = %v", i, err)
		}
	}
}
