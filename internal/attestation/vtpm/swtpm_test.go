package vtpm_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// TestSWTPM runs the variant against a real swtpm process with an EK certificate from swtpm_setup, and
// cross-checks the validated PCR values with an independent TPM client (tpm2-tools).
func TestSWTPM(t *testing.T) {
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm not installed (Debian package swtpm); run scripts/setup.sh")
	}
	ctx := context.Background()
	for _, alg := range []vtpm.KeyAlgorithm{vtpm.ECC, vtpm.RSA} {
		t.Run(alg.String(), func(t *testing.T) {
			node, err := tpmtest.NewSWTPMNode(ctx, t.TempDir(), alg)
			if err != nil {
				t.Fatalf("NewSWTPMNode: %v", err)
			}
			defer node.Close()
			v, err := node.Validator()
			if err != nil {
				t.Fatal(err)
			}
			nonce := bytes.Repeat([]byte{3}, attestation.NonceSize)
			ev, err := node.Issuer.Issue(ctx, nonce, []byte("user"))
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if _, err := v.Validate(ctx, ev, nonce); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if _, err := v.Validate(ctx, ev, bytes.Repeat([]byte{4}, attestation.NonceSize)); err == nil {
				t.Fatal("evidence accepted for another nonce")
			}
			doc, err := attestation.ParseDocument(ev)
			if err != nil {
				t.Fatal(err)
			}
			if alg != vtpm.ECC {
				return
			}
			// Cross-check with tpm2-tools: swtpm serves one client at a time, so release ours first.
			if _, err := exec.LookPath("tpm2_pcrread"); err != nil {
				t.Skip("tpm2-tools not installed")
			}
			node.Release()
			out, err := exec.Command("tpm2_pcrread", "-T", "swtpm:path="+node.SWTPM.SocketPath(), "sha256:4,8").CombinedOutput()
			if err != nil {
				t.Fatalf("tpm2_pcrread: %v\n%s", err, out)
			}
			for _, idx := range []uint32{measurements.PCRNodeImage, measurements.PCRBootParams} {
				re := regexp.MustCompile(`(?m)^\s*` + string(rune('0'+idx)) + `\s*:\s*0x([0-9A-F]+)`)
				m := re.FindSubmatch(out)
				if m == nil {
					t.Fatalf("PCR %d not in tpm2_pcrread output:\n%s", idx, out)
				}
				if got := strings.ToLower(string(m[1])); got != hex.EncodeToString(doc.TPM.Quotes[0].PCRs[idx]) {
					t.Errorf("PCR %d: tpm2-tools reads %s, the validated quote has %s", idx, got, hex.EncodeToString(doc.TPM.Quotes[0].PCRs[idx]))
				}
			}
		})
	}
}
