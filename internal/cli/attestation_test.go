package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func run(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	cmd := NewRootCmd(&out, &errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err != nil {
		errOut.WriteString("Error: " + err.Error() + "\n")
	}
	return out.String(), errOut.String(), ExitCode(err)
}

type files struct {
	dir, evidence, measurements, ca, nonce, userData string
}

// writeFiles writes genuine evidence from the reference TPM, its CA and a matching policy.
func writeFiles(t *testing.T) (files, *tpmtest.Node) {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	dir := t.TempDir()
	nonce := bytes.Repeat([]byte{7}, 32)
	userData := []byte("tls key hash")
	ev, err := node.Issuer.Issue(context.Background(), nonce, userData)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := json.Marshal(node.Policy)
	if err != nil {
		t.Fatal(err)
	}
	f := files{
		dir:          dir,
		evidence:     filepath.Join(dir, "evidence.json"),
		measurements: filepath.Join(dir, "measurements.json"),
		ca:           filepath.Join(dir, "ca.pem"),
		nonce:        hex.EncodeToString(nonce),
		userData:     hex.EncodeToString(userData),
	}
	write(t, f.evidence, ev)
	write(t, f.measurements, policy)
	write(t, f.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: node.CA.Certificate().Raw}))
	return f, node
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVersion(t *testing.T) {
	out, _, code := run("version")
	if code != 0 || !strings.Contains(out, "constellation v") {
		t.Fatalf("version: code %d, output %q", code, out)
	}
}

func TestAttestationVerify(t *testing.T) {
	f, node := writeFiles(t)
	args := func(extra ...string) []string {
		return append([]string{"attestation", "verify", "--evidence", f.evidence, "--measurements", f.measurements, "--ca", f.ca}, extra...)
	}

	out, errOut, code := run(args("--nonce", f.nonce, "--user-data", f.userData)...)
	if code != 0 || !strings.Contains(out, "Evidence verified") {
		t.Fatalf("valid evidence: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	// Wrong measurements: exit 1 and a readable diff naming each PCR and the events behind it.
	wrong := measurements.M{}
	for k, v := range node.Policy {
		wrong[k] = v
	}
	wrong[4] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
	wrong[8] = measurements.Measurement{Expected: measurements.Digest{0xab}}
	wrongFile := filepath.Join(f.dir, "wrong.yaml")
	raw, _ := json.Marshal(wrong)
	write(t, wrongFile, raw)
	_, errOut, code = run("attestation", "verify", "--evidence", f.evidence, "--measurements", wrongFile, "--ca", f.ca, "--nonce", f.nonce)
	if code != 1 {
		t.Fatalf("wrong measurements: code %d, want 1; stderr %q", code, errOut)
	}
	for _, want := range []string{"PCRs 4, 8", "PCR 4: ", "expected cd00", "PCR 8: ", "EV_IPL: node image sha256:1111", "EV_IPL: boot parameters"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("diff lacks %q:\n%s", want, errOut)
		}
	}

	// A policy that would accept any image, or the genuine image with any boot parameters: refused before the
	// evidence is looked at.
	for name, bad := range tpmtest.AcceptAnyImage(node.Policy) {
		badFile := filepath.Join(f.dir, "bad.json")
		raw, _ := json.Marshal(bad)
		write(t, badFile, raw)
		if out, errOut, code := run("attestation", "verify", "--evidence", f.evidence, "--measurements", badFile, "--ca", f.ca, "--nonce", f.nonce); code != 2 || !strings.Contains(errOut, "accepts any node image") {
			t.Errorf("%s: code %d (want 2), stdout %q, stderr %q", name, code, out, errOut)
		}
	}

	otherNonce := strings.Repeat("08", 32)
	for name, tc := range map[string]struct {
		args     []string
		code     int
		contains string
	}{
		"wrong nonce":        {args("--nonce", otherNonce), 1, "not bound to this nonce"},
		"wrong user data":    {args("--nonce", f.nonce, "--user-data", "00"), 1, "bound to user data"},
		"nonce not hex":      {args("--nonce", "xyz"), 2, "--nonce is not hex"},
		"nonce too short":    {args("--nonce", "0011"), 2, "invalid nonce"},
		"user data not hex":  {args("--nonce", f.nonce, "--user-data", "q"), 2, "--user-data is not hex"},
		"missing flag":       {[]string{"attestation", "verify", "--nonce", f.nonce}, 2, "required flag"},
		"missing evidence":   {[]string{"attestation", "verify", "--evidence", filepath.Join(f.dir, "nope"), "--measurements", f.measurements, "--ca", f.ca, "--nonce", f.nonce}, 2, "no such file"},
		"CA not PEM":         {[]string{"attestation", "verify", "--evidence", f.evidence, "--measurements", f.measurements, "--ca", f.evidence, "--nonce", f.nonce}, 2, "no PEM certificate"},
		"policy malformed":   {[]string{"attestation", "verify", "--evidence", f.evidence, "--measurements", f.ca, "--ca", f.ca, "--nonce", f.nonce}, 2, "parsing measurements"},
		"evidence malformed": {[]string{"attestation", "verify", "--evidence", f.ca, "--measurements", f.measurements, "--ca", f.ca, "--nonce", f.nonce}, 2, "malformed evidence document"},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := run(tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.contains) {
				t.Fatalf("code %d (want %d), stderr %q (want %q)", code, tc.code, errOut, tc.contains)
			}
		})
	}
}

func TestAttestationShow(t *testing.T) {
	f, _ := writeFiles(t)
	out, errOut, code := run("attestation", "show", f.evidence)
	if code != 0 {
		t.Fatalf("show: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"NOT verified", "Variant:    mini-vtpm", "Subject:    CN=node-0", "Issuer:     CN=Test Provider AK CA", "PCRs [0 1 2", "EV_IPL", "node image sha256:1111", "User data:  " + f.userData} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
	if _, _, code := run("attestation", "show", f.ca); code != 2 {
		t.Fatalf("show of a non-evidence file: code %d, want 2", code)
	}
}

// attestation show marks what an event's digest does not bind. The host alters an event's data so that the
// output names another node image: the event is shown as altered and unverified, never as it was.
func TestAttestationShowMarksAlteredData(t *testing.T) {
	f, _ := writeFiles(t)
	raw, err := os.ReadFile(f.evidence)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	var genuine bytes.Buffer
	showDocument(&genuine, doc)
	if !strings.Contains(genuine.String(), "EV_IPL: node image sha256:1111") || strings.Contains(genuine.String(), "ALTERED") {
		t.Fatalf("genuine evidence:\n%s", genuine.String())
	}
	doc.TPM.EventLog = bytes.Replace(doc.TPM.EventLog, []byte("sha256:1111"), []byte("sha256:2222"), 1)
	var altered bytes.Buffer
	showDocument(&altered, doc)
	out := altered.String()
	if !strings.Contains(out, "ALTERED: event log: event data not as the measurement scheme defines: event 0") {
		t.Errorf("altered evidence not marked:\n%s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "sha256:2222") && !strings.Contains(l, "EV_IPL (unverified): node image sha256:2222") {
			t.Errorf("altered data shown without the unverified mark: %q", l)
		}
	}
}
