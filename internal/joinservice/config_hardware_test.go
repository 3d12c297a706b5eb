package joinservice

import (
	"bytes"
	"context"
	"errors"
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
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
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
				// The node binds the cluster ID in its REPORT_DATA: refused for joining, a member for the key
				// service and the continuous attestation; a member of another cluster is none.
				iss := snp.NewIssuer(c.platform)
				if err := iss.JoinCluster(c.id); err != nil {
					t.Fatal(err)
				}
				member, err := iss.Issue(ctx, nonce, []byte("tls key hash"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := v.Validate(ctx, member, nonce); !errors.Is(err, snp.ErrReportData) {
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
				other := snp.NewIssuer(c.platform)
				if err := other.JoinCluster(bytes.Repeat([]byte{0x2d}, 32)); err != nil {
					t.Fatal(err)
				}
				foreign, err := other.Issue(ctx, nonce, []byte("tls key hash"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := mv.Validate(ctx, foreign, nonce); err == nil {
					t.Error("member validator accepted a member of another cluster")
				}
				return
			}
			// A node that measured a cluster ID is not fresh: refused for joining, a member for the key service.
			ev15 := measurements.ClusterIDEvent(c.id)
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

// A qemu-tdx policy with only MRTD (the public firmware) would admit any kernel: the join service's
// configuration refuses it.
func TestJoinConfigRefusesQEMUTDXWithOnlyMRTD(t *testing.T) {
	files, err := tdx.ReadCollateralFiles(tdxtest.CollateralDir(t))
	if err != nil {
		t.Fatal(err)
	}
	r := func(b byte) tdx.HexBytes { return bytes.Repeat([]byte{b}, 48) }
	rawOnly, err := validators.MarshalPolicy(&validators.Policy{Variant: "qemu-tdx", TDX: &validators.TDX{Policy: tdx.Policy{MRTD: []tdx.HexBytes{r(1)}}, Collateral: *files}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseState(map[string][]byte{AttestationFile: rawOnly, ClusterIDFile: []byte(strings.Repeat("01", 32))}, validators.Options{}); err == nil || !strings.Contains(err.Error(), "rtmr0, rtmr1, rtmr2, rtmr3 not set") {
		t.Errorf("join configuration with a qemu-tdx policy of only MRTD: %v", err)
	}
}
