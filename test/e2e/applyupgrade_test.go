package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/upgrade"
)

// TestMiniApplyUpgrade upgrades a running cluster (1 control plane, 1 worker) with `apply` to a second node
// image B, built here (the same Kubernetes; the bootstrapper with another commit, so another digest and other
// measurements), into a temporary directory. The upgrade controller runs in the cluster, deployed at init.
// apply verifies B's signed measurements, registers B with the provider, opens the measurement policy window
// and creates the NodeUpgrade; the controller replaces the only control-plane node first (every node reaches
// the API through its own endpoint, so none is special), then the worker; apply follows it through the new
// control-plane node once the old one is gone, narrows the policy to B and records B. Afterwards every node
// runs B by its attestation record, and a node booted from A refuses the join service of B, naming PCR 4 (it trusts its own image only).
func TestMiniApplyUpgrade(t *testing.T) {
	cl := startCluster(t, 1, 1)
	c, k := cl.c, cl.k
	cl.eventually("the upgrade controller deployed at init and running", func() (string, bool) {
		out, err := k("-n", "kube-system", "get", "deployment", upgrade.Name, "-o", "jsonpath={.status.readyReplicas}")
		return out, err == nil && strings.TrimSpace(out) == "1"
	})
	confPath := filepath.Join(c.ws, config.FileName)
	confA, err := config.Load(confPath)
	if err != nil {
		t.Fatal(err)
	}
	stateA, _ := os.ReadFile(filepath.Join(c.ws, "constellation-state.yaml"))
	if !strings.Contains(string(stateA), confA.ImageDigest()) {
		t.Fatalf("the state file does not record the image of init:\n%s", stateA)
	}

	imageB := buildNodeImageB(t)
	if out, code := c.run("config", "generate", "mini", "--image-dir", imageB, "--allow-dev-signed", "--force", "--control-planes", "1", "--workers", "1"); code != 0 {
		t.Fatalf("config generate for image B: exit %d\n%s", code, out)
	}
	confB, err := config.Load(confPath)
	if err != nil {
		t.Fatal(err)
	}
	if confB.ImageDigest() == confA.ImageDigest() {
		t.Fatalf("image B has the digest of image A (%s)", confA.ImageDigest())
	}
	out, code := c.run("apply", "--allow-dev-signed", "--wait", "15m")
	t.Logf("apply:\n%s", out)
	if code != 0 {
		t.Fatalf("apply: exit %d", code)
	}
	for _, want := range []string{
		"Upgrading the cluster from node image " + confA.ImageDigest() + " to " + confB.ImageDigest(),
		"node image " + confB.ImageDigest() + " known to the provider",
		"NodeUpgrade cluster asks the upgrade controller",
		"control-plane-0 (control-plane) -> control-plane-1: done",
		"worker-0 (worker) -> worker-1: done",
		"Upgrade finished: the key services accept node image " + confB.ImageDigest() + " only",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("apply does not say %q", want)
		}
	}
	registered := filepath.Join(c.ws, "constellation-mini", "node-images", strings.TrimPrefix(confB.ImageDigest(), "sha256:")+".squashfs")
	if _, err := os.Stat(registered); err != nil {
		t.Errorf("image B is not registered with the provider: %v", err)
	}
	// Every node was replaced (the control plane first) and runs B, as its attestation record proves.
	if out, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || strings.Join(strings.Fields(out), " ") != "control-plane-1 worker-1" {
		t.Errorf("nodes after the upgrade: %v\n%s", err, out)
	}
	short := confB.ImageDigest()[:len("sha256:")+12]
	cl.eventually("status healthy, every node on image B", func() (string, bool) {
		out, code := c.run("status")
		return out, code == 0 && strings.Count(out, short) >= 2 && !strings.Contains(out, confA.ImageDigest()[:len("sha256:")+12])
	})
	if state, _ := os.ReadFile(filepath.Join(c.ws, "constellation-state.yaml")); !strings.Contains(string(state), confB.ImageDigest()) {
		t.Errorf("the state file does not record image B:\n%s", state)
	}
	if out, code := c.run("upgrade", "check"); code != 0 || strings.Contains(out, "An upgrade is open") {
		t.Errorf("upgrade check after the upgrade: exit %d\n%s", code, out)
	}
	// apply again: nothing to do.
	if out, code := c.run("apply", "--allow-dev-signed", "--wait", "5m"); code != 0 || strings.Contains(out, "known to the provider") {
		t.Errorf("apply again: exit %d\n%s", code, out)
	}
	// An upgrade that succeeded is not rolled back: that would refuse every node.
	if out, code := c.run("upgrade", "abort"); code == 0 || !strings.Contains(out, "succeeded") {
		t.Errorf("upgrade abort after the upgrade: exit %d\n%s", code, out)
	}

	// A node booted from image A gets no place: it trusts only join services of its own image (the upgrade's
	// peer policy is gone), finds the cluster's on B, and refuses it, naming PCR 4.
	imageA, _ := filepath.Abs("../../_out/node-image/node-image.squashfs")
	out, code = c.run("mini", "add-worker", "--image", imageA)
	name, _, _ := strings.Cut(strings.TrimSpace(out), " booted")
	if code != 0 || !strings.Contains(out, " booted") {
		t.Fatalf("mini add-worker --image A: exit %d\n%s", code, out)
	}
	cl.eventually(name+" of image A refused at join, PCR 4 named", func() (string, bool) {
		raw, _ := os.ReadFile(filepath.Join(c.ws, "constellation-mini", "nodes", name, "sandbox", "console.log"))
		return string(raw), strings.Contains(string(raw), "asking the join service to admit this node") && strings.Contains(string(raw), "PCR 4")
	})
	if out, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || strings.Join(strings.Fields(out), " ") != "control-plane-1 worker-1" {
		t.Errorf("nodes after the node of image A tried to join: %v\n%s", err, out)
	}
}

// buildNodeImageB builds a second node image from the one of `make node-image` in _out/node-image: the same
// components and service images (the same version), but a bootstrapper built with another commit, so the
// image has another digest and other measurements. It is signed as a local build is and written to a temporary
// directory.
func buildNodeImageB(t *testing.T) string {
	t.Helper()
	root, _ := filepath.Abs("../..")
	raw, err := os.ReadFile(filepath.Join(root, "_out", "node-image", "node-image.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m nodeimage.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	version := ""
	for ref := range m.Images {
		if v, ok := strings.CutPrefix(ref, upgrade.Image()[:strings.LastIndex(upgrade.Image(), ":")+1]); ok {
			version = v
		}
	}
	if version == "" {
		t.Fatalf("image A's manifest names no upgrade controller image: %v", m.Images)
	}
	const module = "github.com/constellation-dev/constellation"
	ldflags := "-X " + module + "/internal/version.Version=" + version
	bootstrapper := filepath.Join(t.TempDir(), "bootstrapper")
	out := t.TempDir()
	for _, args := range [][]string{
		{"go", "build", "-trimpath", "-ldflags", ldflags + " -X " + module + "/internal/version.Commit=upgrade-b", "-o", bootstrapper, "./cmd/bootstrapper"},
		{"go", "run", "-ldflags", ldflags, "./tools/node-image", "-out", out, "-bootstrapper", bootstrapper},
		{"go", "run", "./tools/sign-measurements", "-image-dir", out},
	} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	return out
}
