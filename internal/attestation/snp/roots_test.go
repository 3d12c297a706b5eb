package snp

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/verify/trust"
)

// TestEmbeddedRoots pins the embedded AMD roots: the SHA-256 fingerprint of every ARK, and byte equality
// with the copies the go-sev-guest project embeds. A change of the trust store fails here and must be
// reviewed.
func TestEmbeddedRoots(t *testing.T) {
	arkFingerprints := map[Product]string{
		Milan: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
		Genoa: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
		Turin: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
	}
	roots := AMDRoots()
	for _, p := range Products() {
		pr, ok := roots.Product(p)
		if !ok || pr.ARK == nil || pr.ASK == nil || pr.ASVK == nil {
			t.Fatalf("%v: incomplete embedded roots", p)
		}
		sum := sha256.Sum256(pr.ARK.Raw)
		if got := hex.EncodeToString(sum[:]); got != arkFingerprints[p] {
			t.Errorf("%v ARK fingerprint %s, want %s", p, got, arkFingerprints[p])
		}
		for _, c := range []struct {
			role string
			cn   string
			got  string
		}{{"ARK", "ARK-" + p.String(), pr.ARK.Subject.CommonName}, {"ASK", "SEV-" + p.String(), pr.ASK.Subject.CommonName}, {"ASVK", "SEV-VLEK-" + p.String(), pr.ASVK.Subject.CommonName}} {
			if c.got != c.cn {
				t.Errorf("%v %s is %q", p, c.role, c.got)
			}
		}
	}
	for name, want := range map[string][]byte{
		"milan_vcek.pem": trust.AskArkMilanVcekBytes, "milan_vlek.pem": trust.AskArkMilanVlekBytes,
		"genoa_vcek.pem": trust.AskArkGenoaVcekBytes, "genoa_vlek.pem": trust.AskArkGenoaVlekBytes,
		"turin_vcek.pem": trust.AskArkTurinVcekBytes, "turin_vlek.pem": trust.AskArkTurinVlekBytes,
	} {
		got, err := amdRootFiles.ReadFile("amdroots/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("amdroots/%s differs from go-sev-guest's copy", name)
		}
	}
}

func TestNewRootsRejects(t *testing.T) {
	milan, genoa := getTestPKI(t, Milan), getTestPKI(t, Genoa)
	tests := map[string]struct {
		roots map[Product]ProductRoots
		want  string
	}{
		"empty":             {nil, "no product roots"},
		"unknown product":   {map[Product]ProductRoots{ProductUnknown: {ARK: milan.ark, ASK: milan.ask}}, "unknown"},
		"no ASK":            {map[Product]ProductRoots{Milan: {ARK: milan.ark}}, "need an ARK and an ASK"},
		"ARK of other name": {map[Product]ProductRoots{Genoa: {ARK: milan.ark, ASK: milan.ask}}, "common name \"ARK-Milan\""},
		"ASK not by ARK":    {map[Product]ProductRoots{Milan: {ARK: milan.ark, ASK: genoa.ask}}, "common name \"SEV-Genoa\""},
		"ARK not self-signed": {
			map[Product]ProductRoots{Milan: {ARK: mustCreate(t, caTemplate(t, "ARK-Milan"), milan.ark, &genoa.arkKey.PublicKey, milan.arkKey), ASK: milan.ask}},
			"not a self-signed",
		},
		"ASK signed by another ARK": {
			map[Product]ProductRoots{Milan: {ARK: milan.ark, ASK: mustCreate(t, caTemplate(t, "SEV-Milan"), genoa.ark, &milan.askKey.PublicKey, genoa.arkKey)}},
			"not signed by the Milan ARK",
		},
		"ASVK as ASK": {map[Product]ProductRoots{Milan: {ARK: milan.ark, ASK: milan.asvk}}, "want \"SEV-Milan\""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewRoots(tc.roots)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	if _, err := NewRoots(map[Product]ProductRoots{ProductUnknown: {}}); !errors.Is(err, ErrUnknownProduct) {
		t.Errorf("unknown product: %v", err)
	}
}
