package keyservice

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
)

// snpAttestation is the wire form of the attestation policy of a qemu-sev-snp cluster.
func snpAttestation(t testing.TB) []byte {
	t.Helper()
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	pl, err := pki.NewPlatform([snp.MeasurementSize]byte{0x11})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := validators.MarshalPolicy(&validators.Policy{Variant: attestation.QEMUSEVSNP.Name, SNP: &validators.SNP{Policy: *pl.Policy()}})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// snpSecretWire is the handover message of a qemu-sev-snp cluster's key service.
func snpSecretWire(t testing.TB, att []byte) []byte {
	t.Helper()
	s := testSecret(t)
	raw, err := json.Marshal(secretJSON{Version: secretVersion, Key: s.MasterSecret.Key, Salt: s.MasterSecret.Salt, ClusterID: s.ClusterID, Attestation: att})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// The secret of a qemu-sev-snp cluster's key service carries the cluster's attestation policy instead of
// measurements; the handover of a vTPM cluster's stays as it was.
func TestSecretAttestationPolicy(t *testing.T) {
	att := snpAttestation(t)
	s, err := ParseSecret(snpSecretWire(t, att))
	if err != nil {
		t.Fatalf("the secret of a qemu-sev-snp cluster refused: %v", err)
	}
	p, err := s.AttestationPolicy()
	if err != nil || p.Variant != attestation.QEMUSEVSNP.Name || p.SNP == nil {
		t.Fatalf("AttestationPolicy = %+v, %v", p, err)
	}
	h := NewSecretHolder(slog.New(slog.DiscardHandler))
	if err := h.Set(s); err != nil {
		t.Fatal(err)
	}
	if again, err := ParseSecret(h.secret); err != nil || !bytes.Equal(again.Attestation, att) || len(again.Measurements) != 0 {
		t.Fatalf("round trip of the qemu-sev-snp secret: %v", err)
	}
	// A vTPM cluster's handover has no attestation field, so that a key service of the previous release reads it.
	if err := h.Set(testSecret(t)); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(h.secret, []byte(`"attestation"`)) {
		t.Errorf("the handover of a vTPM cluster names an attestation policy: %s", h.secret)
	}
	if _, err := testSecret(t).AttestationPolicy(); err == nil {
		t.Error("a vTPM cluster's secret gives an attestation policy")
	}

	vtpmAtt, err := validators.MarshalPolicy(&validators.Policy{Variant: attestation.MiniVTPM.Name})
	if err != nil {
		t.Fatal(err)
	}
	withPCRs := func(m map[string]any) {
		m["measurements"] = map[string]any{"4": map[string]any{"expected": strings.Repeat("01", 32)}, "8": map[string]any{"expected": strings.Repeat("02", 32)}}
	}
	for name, tc := range map[string]struct {
		raw  []byte
		want string
	}{
		"measurements and an attestation policy":    {editWire(t, snpSecretWire(t, att), withPCRs), "both"},
		"the attestation policy of a vTPM variant":  {snpSecretWire(t, vtpmAtt), "only qemu-sev-snp"},
		"an attestation policy that does not parse": {snpSecretWire(t, []byte(`{"version":1,"variant":"qemu-sev-snp"`)), "attestation policy"},
		"a measurement policy update with it":       {editWire(t, snpSecretWire(t, att), func(m map[string]any) { m["policyUpdate"] = "e30=" }), "no vTPM"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseSecret(tc.raw); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseSecret = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func editWire(t testing.TB, raw []byte, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
