package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// TestMiniKubernetes boots a cluster from the full node image (make node-image): the CLI attests the first
// control-plane node, sends it the master secret over aTLS, and the node initialises Kubernetes; the node then
// proves with PCR 15 that it belongs to this cluster. It runs only where the node image has been built.
func TestMiniKubernetes(t *testing.T) {
	requireMachine(t)
	imageDir, _ := filepath.Abs("../../_out/node-image")
	kubectl, _ := filepath.Abs("../../_out/kubernetes/bin/kubectl")
	if _, err := os.Stat(filepath.Join(imageDir, "node-image.json")); err != nil {
		t.Skip("the node image is not built (make node-image)")
	}
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	if out, code := c.run("config", "generate", "mini", "--image-dir", imageDir, "--workers", "1"); code != 0 {
		t.Fatalf("config generate: %d\n%s", code, out)
	}
	start := time.Now()
	out, code := c.run("mini", "up")
	t.Cleanup(func() { c.run("mini", "down") })
	if code != 0 {
		t.Fatalf("mini up: exit %d\n%s", code, out)
	}
	t.Logf("mini up with Kubernetes init: %s", time.Since(start).Round(time.Second))
	kubeconfig := filepath.Join(c.ws, "constellation-admin.conf")
	if info, err := os.Stat(kubeconfig); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("admin kubeconfig: %v", err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		nodes, err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "get", "nodes", "--no-headers").CombinedOutput()
		if err == nil && strings.Contains(string(nodes), "control-plane-0   Ready") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("control-plane-0 never Ready: %v\n%s", err, nodes)
		}
		time.Sleep(2 * time.Second)
	}
	// The initialised node proves its cluster membership (PCR 15); a node that did not join cannot.
	if out, code := c.run("verify", "--node-endpoint", mini.NodeAddr(0).String()+":9090"); code != 0 || !strings.Contains(out, "4 PCRs match") {
		t.Fatalf("verify control-plane-0: exit %d\n%s", code, out)
	}
	if out, code := c.run("verify", "--node-endpoint", mini.NodeAddr(1).String()+":9090"); code != 1 || !strings.Contains(out, "PCR 15") {
		t.Fatalf("verify the worker that has not joined: exit %d\n%s", code, out)
	}
	if out, code := c.run("mini", "down"); code != 0 {
		t.Fatalf("mini down: exit %d\n%s", code, out)
	}
}
