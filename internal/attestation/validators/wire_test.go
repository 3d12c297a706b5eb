package validators

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
)

// The wire form is parsed strictly, and each failure says what is wrong.
func TestParsePolicy(t *testing.T) {
	files, err := tdx.ReadCollateralFiles(tdxtest.CollateralDir(t))
	if err != nil {
		t.Fatal(err)
	}
	r := func(b byte) tdx.HexBytes { return bytes.Repeat([]byte{b}, 48) }
	in := &Policy{Variant: "qemu-tdx", TDX: &TDX{Policy: tdx.Policy{MRTD: []tdx.HexBytes{r(1)}, RTMR0: r(2), RTMR1: r(3), RTMR2: r(4), RTMR3: r(5)}, Collateral: *files}}
	raw, err := MarshalPolicy(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParsePolicy(raw)
	if err != nil {
		t.Fatal(err)
	}
	if out.Variant != "qemu-tdx" || !bytes.Equal(out.TDX.Collateral.QEIdentity, files.QEIdentity) || len(out.TDX.Policy.MRTD) != 1 {
		t.Fatalf("round trip changed the policy: %+v", out)
	}
	if _, err := New(out, Options{}); err != nil {
		t.Fatalf("the parsed TDX policy: %v", err)
	}
	for name, tc := range map[string]struct{ raw, want string }{
		"empty":           {"", "must name the attestation variant"},
		"not JSON":        {"variant: aws-sev-snp", "not a valid attestation policy"},
		"unknown field":   {`{"version":1,"variant":"qemu-sev-snp","pcrs":{}}`, `unknown field "pcrs"`},
		"unknown nested":  {`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{"measurement":[]}}}`, `unknown field "measurement"`},
		"trailing":        {`{"version":1,"variant":"mini-vtpm"}{}`, "trailing data"},
		"no version":      {`{"variant":"mini-vtpm"}`, "version 0 is not supported"},
		"unknown variant": {`{"version":1,"variant":"sev"}`, `unknown attestation variant "sev"`},
		"no SNP policy":   {`{"version":1,"variant":"qemu-sev-snp","snp":{}}`, "snp: no policy"},
		"bad CRL base64":  {`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{},"crls":{"Milan":["%%"]}}}`, "not a valid attestation policy"},
		"bad product":     {`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{},"crls":{"Naples":["AA=="]}}}`, "Naples"},
		"empty CRL list":  {`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{},"crls":{"Milan":[]}}}`, "no CRL listed for Milan"},
		"VCEK entry name": {`{"version":1,"variant":"gcp-sev-snp","snp":{"policy":{},"vceks":{"../x.der":"AA=="}}}`, "snp.vceks"},
		"TDX half":        {`{"version":1,"variant":"qemu-tdx","tdx":{"policy":{"mrtd":[]}}}`, "want both policy and collateral"},
		"oversize":        {`{"version":1,"variant":"mini-vtpm"}` + strings.Repeat(" ", MaxPolicyFileSize), "more than the limit"},
	} {
		if _, err := ParsePolicy([]byte(tc.raw)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

// The entries of an offline VCEK cache travel in the wire form (GCP's evidence carries no VCEK).
func TestParsePolicyVCEKs(t *testing.T) {
	vcek, err := os.ReadFile("../snp/testdata/vcek.testcer")
	if err != nil {
		t.Fatal(err)
	}
	const name = "milan-00ff-bl2-tee0-snp5-ucode68.der"
	cache, err := snp.NewVCEKCacheFromEntries(map[string][]byte{name: vcek})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := MarshalPolicy(&Policy{Variant: "gcp-sev-snp", SNP: &SNP{VCEKCache: cache}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParsePolicy(raw)
	if err != nil {
		t.Fatal(err)
	}
	if out.SNP == nil || out.SNP.VCEKCache == nil {
		t.Fatalf("the VCEKs did not travel: %s", raw)
	}
	entries, err := out.SNP.VCEKCache.Entries()
	if err != nil || len(entries) != 1 || !bytes.Equal(entries[name], vcek) {
		t.Fatalf("entries after the round trip: %d, %v", len(entries), err)
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm"}`))
	f.Add([]byte(`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{"measurements":["` + strings.Repeat("ab", 48) + `"],"minimumTCB":{"Milan":{"bootloader":3,"tee":0,"snp":8,"microcode":115}},"allowMissingCRL":true},"crls":{"Milan":["AA=="]}}}`))
	f.Add([]byte(`{"version":1,"variant":"qemu-tdx","tdx":{"policy":{"mrtd":["` + strings.Repeat("01", 48) + `"]},"collateral":{"tcbInfos":["e30="],"qeIdentity":"e30=","tcbSigningChain":"","rootCACRL":""}}}`))
	f.Add([]byte(`{"version":1,"variant":"aws-sev-snp","snp":{"policy":{}}}trailing`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := ParsePolicy(raw)
		if err != nil {
			return
		}
		v, err := attestation.VariantByName(p.Variant)
		if err != nil {
			t.Fatalf("parsed an unknown variant %q", p.Variant)
		}
		if p.Measurements != nil || p.AKRoots != nil {
			t.Fatal("the wire form filled in measurements or roots")
		}
		// What parses must encode and parse to the same variant; the factory decides, without panicking.
		again, err := MarshalPolicy(p)
		if err != nil {
			return
		}
		q, err := ParsePolicy(again)
		if err != nil || q.Variant != v.Name {
			t.Fatalf("re-parsing the encoded policy: %v", err)
		}
		p.Measurements = measurements.M{4: {}, 8: {}}
		_, _ = New(p, Options{})
	})
}
