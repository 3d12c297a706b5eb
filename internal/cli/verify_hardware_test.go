package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
)

// hardwareEvidence writes aws-sev-snp evidence of a machine of the test PKI and a configuration whose
// attestation section is the policy that the evidence meets, but for the roots (the CLI trusts only the
// embedded AMD roots).
func hardwareEvidence(t *testing.T, allowDebug bool) (dir, evidence, conf, nonce string) {
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
	issuer, err := snp.NewVTPMIssuer(attestation.AWSSEVSNP, pl, tpm)
	if err != nil {
		t.Fatal(err)
	}
	n := bytes.Repeat([]byte{7}, 32)
	ev, err := issuer.Issue(context.Background(), n, nil)
	if err != nil {
		t.Fatal(err)
	}
	policy := pl.Policy()
	policy.AllowDebug = allowDebug
	section := map[string]any{"version": "v1", "attestation": map[string]any{"variant": "aws-sev-snp", "measurements": tpm.Policy(), "snp": policy}}
	raw, err := json.Marshal(section)
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	evidence, conf = filepath.Join(dir, "evidence.json"), filepath.Join(dir, "constellation-conf.yaml")
	write(t, evidence, ev)
	write(t, conf, raw)
	return dir, evidence, conf, hex.EncodeToString(n)
}

// Evidence of a hardware variant is checked with its hardware policy, never with the PCRs alone.
func TestAttestationVerifyHardware(t *testing.T) {
	dir, evidence, conf, nonce := hardwareEvidence(t, false)
	f, _ := writeFiles(t)

	// With the configuration, the SEV-SNP validator runs: the test PKI's report chains to no embedded root.
	_, errOut, code := run("attestation", "verify", "--evidence", evidence, "--config", conf, "--nonce", nonce)
	if code != 1 || !strings.Contains(errOut, "evidence does not verify") || !strings.Contains(errOut, "ARK") {
		t.Fatalf("aws-sev-snp evidence of an untrusted PKI: code %d, stderr %q", code, errOut)
	}
	if !strings.Contains(errOut, hostVTPMWarning) {
		t.Errorf("attestation verify of aws-sev-snp evidence does not warn that its PCRs are not hardware-rooted: %q", errOut)
	}
	for name, tc := range map[string]struct {
		args     []string
		code     int
		contains string
	}{
		"PCRs alone":                    {[]string{"--evidence", evidence, "--measurements", f.measurements, "--nonce", nonce}, 2, "aws-sev-snp evidence needs its sev-snp policy besides the measurements; pass --config"},
		"CA for a hardware variant":     {[]string{"--evidence", evidence, "--config", conf, "--ca", f.ca, "--nonce", nonce}, 2, "remove --ca"},
		"other variant than configured": {[]string{"--evidence", f.evidence, "--config", conf, "--nonce", f.nonce}, 1, "it is mini-vtpm evidence, the configuration expects aws-sev-snp"},
		"both policies":                 {[]string{"--evidence", evidence, "--config", conf, "--measurements", f.measurements, "--nonce", nonce}, 2, "none of the others can be"},
		"no policy":                     {[]string{"--evidence", evidence, "--nonce", nonce}, 2, "[measurements config]"},
		"config missing":                {[]string{"--evidence", evidence, "--config", filepath.Join(dir, "nope.yaml"), "--nonce", nonce}, 2, "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := run(append([]string{"attestation", "verify"}, tc.args...)...)
			if code != tc.code || !strings.Contains(errOut, tc.contains) {
				t.Fatalf("code %d (want %d), stderr %q (want %q)", code, tc.code, errOut, tc.contains)
			}
		})
	}

	_, debugEvidence, debugConf, debugNonce := hardwareEvidence(t, true)
	_, errOut, code = run("attestation", "verify", "--evidence", debugEvidence, "--config", debugConf, "--nonce", debugNonce)
	if code != 2 || !strings.Contains(errOut, "allowDebug") {
		t.Fatalf("a policy with allowDebug: code %d, stderr %q", code, errOut)
	}
}

// mini-vtpm evidence verifies with --config as with --measurements.
func TestAttestationVerifyConfig(t *testing.T) {
	f, node := writeFiles(t)
	raw, err := json.Marshal(map[string]any{"version": "v1", "attestation": map[string]any{"variant": "mini-vtpm", "measurements": node.Policy}})
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(f.dir, "constellation-conf.yaml")
	write(t, conf, raw)
	out, errOut, code := run("attestation", "verify", "--evidence", f.evidence, "--config", conf, "--ca", f.ca, "--nonce", f.nonce, "--user-data", f.userData)
	if code != 0 || !strings.Contains(out, "Evidence verified: variant mini-vtpm") {
		t.Fatalf("code %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := run("attestation", "verify", "--evidence", f.evidence, "--config", conf, "--nonce", f.nonce); code != 2 || !strings.Contains(errOut, "mini-vtpm needs the certificate of the CA") {
		t.Fatalf("without --ca: code %d, stderr %q", code, errOut)
	}
}

const hostVTPMWarning = "WARNING: aws-sev-snp PCRs are not hardware-rooted: the vTPM runs in the hypervisor"

// Whoever looks at or verifies evidence of a variant whose vTPM the hypervisor implements is told, in one line,
// that its PCRs are not hardware-rooted.
func TestHostVTPMWarningIsPrinted(t *testing.T) {
	dir, evidence, conf, _ := hardwareEvidence(t, false)
	out, errOut, code := run("attestation", "show", evidence)
	if code != 0 || !strings.Contains(out, "  "+hostVTPMWarning) || !strings.Contains(out, "the vTPM is the hypervisor's, so its PCRs are not hardware-rooted") {
		t.Fatalf("attestation show: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	// verify warns before it asks the node (here: nothing listens; the loopback port is closed).
	if filepath.Dir(conf) != dir {
		t.Fatal("configuration not in the workspace")
	}
	_, errOut, code = run("verify", "--workspace", dir, "--node-endpoint", "127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, hostVTPMWarning) {
		t.Fatalf("verify: code %d, stderr %q", code, errOut)
	}
	// mini-vtpm evidence comes without the warning.
	f, _ := writeFiles(t)
	out, _, _ = run("attestation", "show", f.evidence)
	if strings.Contains(out, "WARNING") {
		t.Errorf("attestation show of mini-vtpm evidence warns: %q", out)
	}
}
