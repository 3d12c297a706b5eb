package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
)

// checkClusterReport has the CLI write a report of the running cluster (every node's fresh evidence) and
// verifies it as a third party would: in a fresh, empty directory holding only the report and the trusted root,
// with an empty HOME and no workspace, in a network namespace of its own with no interface up, so that it can
// reach neither the cluster nor anything else. It checks that the report holds no secret of the workspace.
func checkClusterReport(t *testing.T, c cli, nodes ...string) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "report.json")
	out, code := c.run("verify", "--all", "-o", report, "--allow-dev-signed")
	if code != 0 || !strings.Contains(out, "Wrote "+report+": 3 nodes ("+strings.Join(nodes, ", ")+")") {
		t.Fatalf("verify --all: exit %d\n%s", code, out)
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	r, err := clusterreport.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	checkNoSecrets(t, c.ws, r, raw)

	// The verifier's machine: nothing but the binary, the report and the trusted root; no route anywhere.
	dir := t.TempDir()
	root, err := os.ReadFile(filepath.Join(signingDir(), "trusted-root.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The cluster's attestation-key CA, which the operator hands the verifier with the report.
	akCA, err := os.ReadFile(filepath.Join(c.ws, "constellation-mini", "ak-ca", "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"report.json": raw, "trusted-root.json": root, "ak-ca.pem": akCA} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	verifyOffline := func(report string) (string, int) {
		cmd := exec.Command("unshare", "--net", "--", c.bin, "verify-report", report, "--trusted-root", "trusted-root.json", "--allow-dev-signed", "--ak-ca", "ak-ca.pem")
		cmd.Dir, cmd.Env = dir, []string{"HOME=" + dir, "PATH=/nonexistent"}
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return b.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return b.String(), 0
	}
	out, code = verifyOffline("report.json")
	if code != 0 || !strings.Contains(out, "3 nodes listed: "+strings.Join(nodes, ", ")) || strings.Count(out, "): verified") != 3 ||
		!strings.Contains(out, "Verified: all 3 nodes") || !regexp.MustCompile(`member of cluster [0-9a-f]{64}`).MatchString(out) {
		t.Fatalf("verify-report offline: exit %d\n%s", code, out)
	}
	// The same report with one node's evidence altered fails, there too.
	r.Nodes[1].Evidence = bytes.Replace(r.Nodes[1].Evidence, []byte(`"quote":"`), []byte(`"quote":"A`), 1)
	altered, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "altered.json"), altered, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := verifyOffline("altered.json"); code != 1 || !strings.Contains(out, "Node "+r.Nodes[1].Name+" ("+r.Nodes[1].Role) || !strings.Contains(out, "FAILED") {
		t.Fatalf("verify-report of an altered report: exit %d\n%s", code, out)
	}
}

// signingDir is where make node-image keeps the development signing material and the trusted root.
func signingDir() string {
	if d := os.Getenv("CONSTELLATION_SIGNING_DIR"); d != "" {
		return d
	}
	return "/var/cache/constellation/signing"
}

// checkNoSecrets fails if the report holds, raw, in hex or in base64, the master secret or its salt, the init
// secret, or the admin kubeconfig's client key: anywhere in the file or in the evidence, measurements and bundle
// it carries.
func checkNoSecrets(t *testing.T, ws string, r *clusterreport.Report, raw []byte) {
	t.Helper()
	var secrets [][]byte
	var ms struct{ Key, Salt []byte }
	if b, err := os.ReadFile(filepath.Join(ws, "constellation-mastersecret.json")); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &ms); err != nil || len(ms.Salt) == 0 {
		t.Fatalf("the master secret file: %v", err)
	}
	secrets = append(secrets, ms.Salt)
	if len(ms.Key) > 0 { // absent when a KMS wraps the secret
		secrets = append(secrets, ms.Key)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "constellation-init-secret")); err != nil {
		t.Fatal(err)
	} else if s, err := hex.DecodeString(strings.TrimSpace(string(b))); err != nil {
		t.Fatal(err)
	} else {
		secrets = append(secrets, s)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "constellation-admin.conf")); err != nil {
		t.Fatal(err)
	} else if m := regexp.MustCompile(`client-key-data: (\S+)`).FindSubmatch(b); m == nil {
		t.Fatal("no client key in the admin kubeconfig")
	} else if key, err := base64.StdEncoding.DecodeString(string(m[1])); err != nil {
		t.Fatal(err)
	} else {
		secrets = append(secrets, key)
	}
	hay := [][]byte{raw, r.Image.Measurements, r.Image.Bundle, r.Seed}
	for _, n := range r.Nodes {
		hay = append(hay, n.Evidence)
	}
	for i, s := range secrets {
		for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s))} {
			for _, h := range hay {
				if bytes.Contains(h, form) {
					t.Fatalf("the cluster report holds secret %d of the workspace", i)
				}
			}
		}
	}
}

// checkReportNamesUnknownNodes has the CLI collect a report while the provider runs nodes that Kubernetes does
// not know (workers it refused, a node deleted from Kubernetes): verify --all names each and writes nothing.
func checkReportNamesUnknownNodes(t *testing.T, c cli, nodes ...string) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "report.json")
	out, code := c.run("verify", "--all", "-o", report, "--allow-dev-signed")
	if code != 1 || !strings.Contains(out, "the provider and Kubernetes do not know the same nodes") {
		t.Fatalf("verify --all with nodes unknown to Kubernetes: exit %d\n%s", code, out)
	}
	for _, n := range nodes {
		if !strings.Contains(out, n+": an instance of the provider, but not a Kubernetes node") {
			t.Errorf("verify --all does not name %s:\n%s", n, out)
		}
	}
	if _, err := os.Stat(report); !os.IsNotExist(err) {
		t.Errorf("a report was written: %v", err)
	}
}
