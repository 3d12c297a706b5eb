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
// and creates the NodeUpgrade. The controller replaces the control plane first, and the only control-plane
// node serves the cluster's API endpoint, which no replacement can take over yet: the controller stops
// (phase Failed) before it creates anything, and apply says so, with how to roll back, and exits 1; status
// shows the failed upgrade; `upgrade abort` removes the NodeUpgrade and rolls the policy back.
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
	out, code := c.run("apply", "--allow-dev-signed", "--wait", "10m")
	t.Logf("apply:\n%s", out)
	for _, want := range []string{
		"Upgrading the cluster from node image " + confA.ImageDigest() + " to " + confB.ImageDigest(),
		"node image " + confB.ImageDigest() + " known to the provider",
		"NodeUpgrade cluster asks the upgrade controller",
		"control-plane-0 (control-plane): creating:",
		"serves the cluster's control-plane endpoint",
		"constellation upgrade abort",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("apply does not say %q", want)
		}
	}
	if code != 1 {
		t.Fatalf("apply: exit %d, want 1", code)
	}
	registered := filepath.Join(c.ws, "constellation-mini", "node-images", strings.TrimPrefix(confB.ImageDigest(), "sha256:")+".squashfs")
	if _, err := os.Stat(registered); err != nil {
		t.Errorf("image B is not registered with the provider: %v", err)
	}
	if out, code := c.run("upgrade", "check"); code != 0 || !strings.Contains(out, "An upgrade is open") {
		t.Errorf("upgrade check after apply: exit %d\n%s", code, out)
	}
	if out, _ := c.run("status"); !strings.Contains(out, "Upgrade to node image "+confB.ImageDigest()+": Failed, 0/2 nodes replaced") || !strings.Contains(out, "upgrade abort") {
		t.Errorf("status does not show the failed upgrade:\n%s", out)
	}
	// apply again: the same failure, nothing new asked.
	if out, code := c.run("apply", "--allow-dev-signed", "--wait", "10m"); code != 1 || !strings.Contains(out, "serves the cluster's control-plane endpoint") || strings.Contains(out, "known to the provider") {
		t.Errorf("apply again: exit %d\n%s", code, out)
	}

	out, code = c.run("upgrade", "abort")
	t.Logf("upgrade abort:\n%s", out)
	if code != 0 || !strings.Contains(out, "NodeUpgrade cluster deleted") || !strings.Contains(out, "Upgrade rolled back") {
		t.Fatalf("upgrade abort: exit %d", code)
	}
	if out, err := k("get", "nodeupgrades", "-o", "name"); err != nil || strings.Contains(out, "nodeupgrade") {
		t.Errorf("NodeUpgrades after the abort: %v\n%s", err, out)
	}
	if out, code := c.run("upgrade", "check"); code != 0 || strings.Contains(out, "An upgrade is open") {
		t.Errorf("upgrade check after the abort: exit %d\n%s", code, out)
	}
	if state, _ := os.ReadFile(filepath.Join(c.ws, "constellation-state.yaml")); string(state) != string(stateA) {
		t.Errorf("the state file changed:\n%s", state)
	}
	if out, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || strings.Fields(out)[0] != "control-plane-0" || len(strings.Fields(out)) != 2 {
		t.Errorf("nodes after the abort: %v\n%s", err, out)
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
