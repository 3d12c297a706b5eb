package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/tpmtest/reporttest"
)

// TestVerifyReport checks a report of three nodes with real TPMs offline (the log that signed its
// measurements is stopped first), and that the command refuses it, exit 1, once it is altered.
func TestVerifyReport(t *testing.T) {
	ctx := context.Background()
	c, err := reporttest.Start(ctx, t.TempDir(), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.StopLog()
	r, err := c.Report(ctx, reporttest.NewSeed(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "trusted-root.json")
	write(t, root, c.RootJSON)
	writeReport := func(name string, r *clusterreport.Report) string {
		raw, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		write(t, path, raw)
		return path
	}
	good := writeReport("report.json", r)

	// ATTACK: nothing pins the attestation-key CA, and the report names its own (a forger's could): refused.
	out, errOut, code := run("verify-report", good, "--trusted-root", root, "--allow-dev-signed")
	if code != 1 || !strings.Contains(errOut, "only the report names") || !strings.Contains(errOut, "--ak-ca FILE") || strings.Contains(out, "Verified") {
		t.Fatalf("verify-report without a pinned attestation-key CA: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = run("verify-report", good, "--trusted-root", root, "--allow-dev-signed", "--ak-ca-from-report")
	if code != 0 {
		t.Fatalf("verify-report: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"3 nodes listed: control-plane-0, worker-0, worker-1",
		"Node control-plane-0 (control-plane, 10.217.0.11:9090): verified",
		"Node worker-1 (worker, 10.217.0.13:9090): verified",
		"attestation key certified for worker-0",
		"4 PCRs match: image and boot parameters as signed, member of cluster " + c.ClusterID,
		"transparency log log.test.invalid: entry",
		"taken from the report (--ak-ca-from-report: it proves nothing about who wrote the report; pin it with --ak-ca)",
		"Verified: all 3 nodes run image " + reporttest.ImageDigest,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "development key") {
		t.Errorf("no warning about the development key:\n%s", errOut)
	}

	// Pinned: the AK CA and the seed the reader chose.
	ca := filepath.Join(dir, "ak-ca.pem")
	write(t, ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.AKRoots[0].Raw}))
	if out, errOut, code := run("verify-report", good, "--trusted-root", root, "--allow-dev-signed", "--ak-ca", ca, "--seed", hex.EncodeToString(r.Seed)); code != 0 || !strings.Contains(out, "pinned by --ak-ca") {
		t.Fatalf("with the AK CA and seed pinned: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := run("verify-report", good, "--trusted-root", root, "--allow-dev-signed", "--ak-ca", ca, "--seed", strings.Repeat("00", 32)); code != 1 {
		t.Fatalf("with another seed: exit %d\n%s%s", code, out, errOut)
	}
	// Development-signed measurements only on request.
	if out, errOut, code := run("verify-report", good, "--trusted-root", root, "--ak-ca", ca); code != 1 || !strings.Contains(errOut, "--allow-dev-signed") {
		t.Fatalf("without --allow-dev-signed: exit %d\n%s%s", code, out, errOut)
	}

	// Two nodes' evidence swapped: both fail, the third verifies, exit 1.
	swapped := *r
	swapped.Nodes = append([]clusterreport.Node(nil), r.Nodes...)
	swapped.Nodes[1].Evidence, swapped.Nodes[2].Evidence = r.Nodes[2].Evidence, r.Nodes[1].Evidence
	out, errOut, code = run("verify-report", writeReport("swapped.json", &swapped), "--trusted-root", root, "--allow-dev-signed", "--ak-ca", ca)
	if code != 1 || strings.Count(out, "FAILED") != 2 || !strings.Contains(out, "Node control-plane-0 (control-plane, 10.217.0.11:9090): verified") ||
		!strings.Contains(errOut, "2 of 3 nodes failed: worker-0, worker-1") {
		t.Fatalf("swapped evidence: exit %d\n%s%s", code, out, errOut)
	}

	// A report that is not well formed is unusable input (exit 2), before any cryptography.
	var m map[string]any
	raw, _ := r.Marshal()
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["extra"] = true
	extra, _ := json.Marshal(m)
	bad := filepath.Join(dir, "extra.json")
	write(t, bad, extra)
	if out, errOut, code := run("verify-report", bad, "--trusted-root", root, "--allow-dev-signed"); code != 2 || !strings.Contains(errOut, "extra") {
		t.Fatalf("report with an unknown field: exit %d\n%s%s", code, out, errOut)
	}
}

func TestNodeInventory(t *testing.T) {
	provider := []mini.NodeState{
		{Name: "control-plane-0", Role: "control-plane", IP: "10.217.0.11"},
		{Name: "worker-0", Role: "worker", IP: "10.217.0.12"},
	}
	nodes, err := nodeInventory(provider, map[string]string{"control-plane-0": "control-plane", "worker-0": "worker"})
	if err != nil || len(nodes) != 2 || nodes[1] != (clusterreport.NodeEntry{Name: "worker-0", Role: "worker", Endpoint: "10.217.0.12:9090"}) {
		t.Fatalf("nodeInventory = %v, %v", nodes, err)
	}
	for name, tc := range map[string]struct {
		kube map[string]string
		want string
	}{
		"a Kubernetes node the provider does not know": {
			map[string]string{"control-plane-0": "control-plane", "worker-0": "worker", "worker-7": "worker"},
			"worker-7: a Kubernetes node, but no instance of the provider",
		},
		"an instance that is no Kubernetes node": {
			map[string]string{"control-plane-0": "control-plane"},
			"worker-0: an instance of the provider, but not a Kubernetes node",
		},
		"another role in Kubernetes": {
			map[string]string{"control-plane-0": "control-plane", "worker-0": "control-plane"},
			"worker-0: a worker for the provider, a control-plane in Kubernetes",
		},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := nodeInventory(provider, tc.kube); err == nil || !strings.Contains(err.Error(), tc.want) || ExitCode(err) != ExitCheckFailed {
				t.Fatalf("nodeInventory = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestVerifyAllFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"verify", "--all"}, "--all needs -o REPORT"},
		{[]string{"verify", "--all", "-o", "json"}, "--all needs -o REPORT"},
		{[]string{"verify", "--all", "-o", "r.json", "--node-endpoint", "10.217.0.11:9090"}, "exclude each other"},
		{[]string{"verify", "--all", "-o", "r.json", "--grpc"}, "remove --grpc"},
		{[]string{"verify", "--node-endpoint", "10.217.0.11:9090", "--seed", "00"}, "go with --all"},
		{[]string{"verify", "--all", "-o", "r.json", "--workspace", t.TempDir()}, "constellation-conf.yaml"},
	} {
		if out, errOut, code := run(tc.args...); code != ExitBadInput || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want 2 and %q\n%s%s", tc.args, code, tc.want, out, errOut)
		}
	}
}
