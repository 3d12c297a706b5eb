package joinservice

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/measuredboot"
)

// snpCluster is a join configuration for an SEV-SNP variant, written to a directory, and a machine of the
// test PKI whose evidence matches it.
type snpCluster struct {
	dir      string
	config   *Config
	platform *snptest.Platform
	tpm      *snptest.VTPM
	id       []byte
}

func newSNPCluster(t *testing.T, variant attestation.Variant) *snpCluster {
	t.Helper()
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	pl, err := pki.NewPlatform([snp.MeasurementSize]byte{0x4d})
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := snptest.NewVTPM()
	if err != nil {
		t.Fatal(err)
	}
	policy := &validators.Policy{Variant: variant.Name, SNP: &validators.SNP{Policy: *pl.Policy()}}
	if variant.VTPM {
		policy.Measurements = tpm.Policy()
	}
	c := &snpCluster{dir: t.TempDir(), platform: pl, tpm: tpm, id: bytes.Repeat([]byte{0x1d}, 32)}
	data, err := ConfigData(policy, c.id, testMACKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	roots, err := pki.Roots()
	if err != nil {
		t.Fatal(err)
	}
	if c.config, err = newConfig(c.dir, nil, testMACKey, validators.Options{SNPRoots: roots, Now: func() time.Time { return snptest.Now }}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *snpCluster) issue(t *testing.T, variant attestation.Variant, nonce []byte) []byte {
	t.Helper()
	var issuer attestation.Issuer = snp.NewIssuer(c.platform)
	if variant.VTPM {
		var err error
		if issuer, err = snp.NewVTPMIssuer(variant, c.platform, c.tpm); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := issuer.Issue(context.Background(), nonce, []byte("tls key hash"))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// tamper changes one byte of the SEV-SNP report (its launch measurement) and returns the evidence again.
func tamper(t *testing.T, ev []byte) []byte {
	t.Helper()
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	doc.SNP.Report[0x90] ^= 1
	out, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A join configuration written for an SEV-SNP variant validates matching evidence with the SEV-SNP policy
// and, for the variants with a vTPM, the measurements and a fresh PCR 15; it refuses tampered evidence.
func TestJoinConfigSNP(t *testing.T) {
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{5}, 32)
	for _, variant := range []attestation.Variant{attestation.AWSSEVSNP, attestation.QEMUSEVSNP} {
		t.Run(variant.Name, func(t *testing.T) {
			c := newSNPCluster(t, variant)
			v := c.config.Validator()
			if v.Variant().Name != variant.Name {
				t.Fatalf("the join service validates %s, want %s", v.Variant(), variant)
			}
			ev := c.issue(t, variant, nonce)
			if got, err := v.Validate(ctx, ev, nonce); err != nil || string(got) != "tls key hash" {
				t.Fatalf("Validate = %q, %v", got, err)
			}
			if _, err := v.Validate(ctx, tamper(t, ev), nonce); err == nil || !strings.Contains(err.Error(), "signature") {
				t.Errorf("tampered report: %v, want a signature error", err)
			}
			if _, err := v.Validate(ctx, ev, bytes.Repeat([]byte{6}, 32)); err == nil {
				t.Error("evidence for another nonce accepted")
			}
			// Another launch measurement in the platform: a genuine report, refused by the policy.
			c.platform.Measurement[0] ^= 1
			if _, err := v.Validate(ctx, c.issue(t, variant, nonce), nonce); err == nil || !strings.Contains(err.Error(), "measurement") {
				t.Errorf("another launch measurement: %v", err)
			}
			c.platform.Measurement[0] ^= 1

			s, err := c.config.Current()
			if err != nil {
				t.Fatal(err)
			}
			if !variant.VTPM {
				if _, err := s.MemberValidator(); err == nil || !strings.Contains(err.Error(), "has no vTPM") {
					t.Errorf("MemberValidator of %s: %v", variant, err)
				}
				return
			}
			// A node that measured a cluster ID is not fresh: refused for joining, a member for the key service.
			ev15 := measuredboot.ClusterIDEvent(c.id)
			c.tpm.Extend(ev15.PCR, ev15.Data)
			member := c.issue(t, variant, nonce)
			if _, err := v.Validate(ctx, member, nonce); err == nil || !strings.Contains(err.Error(), "PCR 15") {
				t.Errorf("a node with a cluster ID joined: %v", err)
			}
			mv, err := s.MemberValidator()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := mv.Validate(ctx, member, nonce); err != nil {
				t.Errorf("member validator refused a member: %v", err)
			}
			if _, err := mv.Validate(ctx, ev, nonce); err == nil {
				t.Error("member validator accepted a fresh node")
			}
		})
	}
}

// A replaced configuration of another variant takes effect: the validator reports and enforces it; an
// invalid one refuses everybody and keeps reporting the last valid variant.
func TestJoinConfigReload(t *testing.T) {
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{5}, 32)
	c := newSNPCluster(t, attestation.AWSSEVSNP)
	v := c.config.Validator()
	ev := c.issue(t, attestation.AWSSEVSNP, nonce)
	// Switch to gcp-sev-snp: aws-sev-snp evidence no longer joins.
	raw, err := os.ReadFile(filepath.Join(c.dir, AttestationFile))
	if err != nil {
		t.Fatal(err)
	}
	gcp := bytes.Replace(raw, []byte(`"aws-sev-snp"`), []byte(`"gcp-sev-snp"`), 1)
	writeSigned(t, c.dir, AttestationFile, gcp)
	if v.Variant().Name != attestation.GCPSEVSNP.Name {
		t.Fatalf("variant after reload: %s", v.Variant())
	}
	if _, err := v.Validate(ctx, ev, nonce); err == nil {
		t.Fatal("aws-sev-snp evidence joined a gcp-sev-snp cluster")
	}
	// allowDebug in the cluster's policy: refused, nobody joins, with the reason.
	debug := bytes.Replace(raw, []byte(`"policy": {`), []byte(`"policy": {"allowDebug": true,`), 1)
	writeSigned(t, c.dir, AttestationFile, debug)
	if _, err := v.Validate(ctx, ev, nonce); err == nil || !strings.Contains(err.Error(), "allowDebug") {
		t.Fatalf("a policy with allowDebug: %v", err)
	}
	if v.Variant().Name != attestation.GCPSEVSNP.Name {
		t.Errorf("variant with an invalid configuration: %s, want the last valid one", v.Variant())
	}
	writeSigned(t, c.dir, AttestationFile, raw)
	if _, err := v.Validate(ctx, ev, nonce); err != nil {
		t.Fatalf("after restoring the configuration: %v", err)
	}
}

// The attestation file is parsed strictly, and each failure says what is wrong.
func TestParseAttestation(t *testing.T) {
	files, err := tdx.ReadCollateralFiles("../attestation/tdx/testdata/collateral")
	if err != nil {
		t.Fatal(err)
	}
	r := func(b byte) tdx.HexBytes { return bytes.Repeat([]byte{b}, 48) }
	in := &validators.Policy{Variant: "qemu-tdx", TDX: &validators.TDX{Policy: tdx.Policy{MRTD: []tdx.HexBytes{r(1)}, RTMR0: r(2), RTMR1: r(3), RTMR2: r(4), RTMR3: r(5)}, Collateral: *files}}
	raw, err := MarshalAttestation(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseAttestation(raw)
	if err != nil {
		t.Fatal(err)
	}
	if out.Variant != "qemu-tdx" || !bytes.Equal(out.TDX.Collateral.QEIdentity, files.QEIdentity) || len(out.TDX.Policy.MRTD) != 1 {
		t.Fatalf("round trip changed the policy: %+v", out)
	}
	if _, err := validators.New(out, validators.Options{}); err != nil {
		t.Fatalf("the parsed TDX policy: %v", err)
	}
	// A qemu-tdx policy with only MRTD (the public firmware) would admit any kernel: the join service's
	// configuration refuses it.
	onlyMRTD := *in.TDX
	onlyMRTD.Policy = tdx.Policy{MRTD: []tdx.HexBytes{r(1)}}
	rawOnly, err := MarshalAttestation(&validators.Policy{Variant: "qemu-tdx", TDX: &onlyMRTD})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseState(map[string][]byte{AttestationFile: rawOnly, ClusterIDFile: []byte(strings.Repeat("01", 32))}, validators.Options{}); err == nil || !strings.Contains(err.Error(), "rtmr0, rtmr1, rtmr2, rtmr3 not set") {
		t.Errorf("join configuration with a qemu-tdx policy of only MRTD: %v", err)
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
		"oversize":        {`{"version":1,"variant":"mini-vtpm"}` + strings.Repeat(" ", MaxAttestationFileSize), "more than the limit"},
	} {
		if _, err := ParseAttestation([]byte(tc.raw)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

// The entries of an offline VCEK cache travel in the attestation file (GCP's evidence carries no VCEK).
func TestParseAttestationVCEKs(t *testing.T) {
	vcek, err := os.ReadFile("../attestation/snp/testdata/vcek.testcer")
	if err != nil {
		t.Fatal(err)
	}
	const name = "milan-00ff-bl2-tee0-snp5-ucode68.der"
	cache, err := snp.NewVCEKCacheFromEntries(map[string][]byte{name: vcek})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := MarshalAttestation(&validators.Policy{Variant: "gcp-sev-snp", SNP: &validators.SNP{VCEKCache: cache}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseAttestation(raw)
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

func FuzzParseAttestation(f *testing.F) {
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm"}`))
	f.Add([]byte(`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{"measurements":["` + strings.Repeat("ab", 48) + `"],"minimumTCB":{"Milan":{"bootloader":3,"tee":0,"snp":8,"microcode":115}},"allowMissingCRL":true},"crls":{"Milan":["AA=="]}}}`))
	f.Add([]byte(`{"version":1,"variant":"qemu-tdx","tdx":{"policy":{"mrtd":["` + strings.Repeat("01", 48) + `"]},"collateral":{"tcbInfos":["e30="],"qeIdentity":"e30=","tcbSigningChain":"","rootCACRL":""}}}`))
	f.Add([]byte(`{"version":1,"variant":"aws-sev-snp","snp":{"policy":{}}}trailing`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := ParseAttestation(raw)
		if err != nil {
			return
		}
		v, err := attestation.VariantByName(p.Variant)
		if err != nil {
			t.Fatalf("parsed an unknown variant %q", p.Variant)
		}
		if p.Measurements != nil || p.AKRoots != nil {
			t.Fatal("the attestation file filled in measurements or roots")
		}
		// What parses must encode and parse to the same variant; the factory decides, without panicking.
		again, err := MarshalAttestation(p)
		if err != nil {
			return
		}
		q, err := ParseAttestation(again)
		if err != nil || q.Variant != v.Name {
			t.Fatalf("re-parsing the encoded policy: %v", err)
		}
		p.Measurements = measurements.M{4: {}}
		_, _ = validators.New(p, validators.Options{})
	})
}
