package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/imagearchive"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// TestMiniLoad loads an image of the user's application, built on this machine and in no node image, into a
// running cluster (`mini load`, as `kind load image-archive`): a DaemonSet runs it on every node with
// imagePullPolicy Never, and a worker added afterwards runs it too. Then the host tries to replace an image
// of the measured node image (the sandbox image every pod runs) with its own: `mini load` refuses the archive,
// and when the host puts it into the loaded images directory itself, the rebooted worker refuses it and keeps
// the node image's.
func TestMiniLoad(t *testing.T) {
	cl := startCluster(t, 1, 1)
	c, k, eventually := cl.c, cl.k, cl.eventually
	dir := t.TempDir()
	const ref, say = "example.com/constellation/loaded-app:v1", "hello from a loaded image"
	app, _ := writeArchive(t, dir, workloadImage(t, ref, say))

	start := time.Now()
	out, code := c.run("mini", "load", app)
	if code != 0 {
		t.Fatalf("mini load: exit %d\n%s", code, out)
	}
	info, _ := os.Stat(app)
	t.Logf("mini load of a %d-byte archive into 2 running nodes: %s", info.Size(), time.Since(start).Round(time.Millisecond))
	for _, n := range []string{"control-plane-0", "worker-0"} {
		if !strings.Contains(out, n+": loaded "+ref+" (sha256:") {
			t.Fatalf("mini load did not report %s:\n%s", n, out)
		}
	}
	imagesDir := mini.LoadedImagesDir(filepath.Join(c.ws, "constellation-mini"))
	stored, _ := filepath.Glob(filepath.Join(imagesDir, "*.tar"))
	if len(stored) != 1 {
		t.Fatalf("loaded archives in the workspace: %v", stored)
	}
	// The same archive again: stored once.
	if out, code := c.run("mini", "load", app); code != 0 || !strings.Contains(out, "already kept") {
		t.Fatalf("mini load of the same archive again: exit %d\n%s", code, out)
	}

	manifest := filepath.Join(dir, "loaded.yaml")
	if err := os.WriteFile(manifest, []byte(fmt.Sprintf(loadedManifest, ref)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := k("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	runsEverywhere := func(nodes ...string) func() (string, bool) {
		return func() (string, bool) {
			out, err := k("get", "pods", "-l", "app=loaded", "--no-headers", "-o", "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,READY:.status.containerStatuses[0].ready")
			if err != nil {
				return out, false
			}
			ready := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if f := strings.Fields(line); len(f) == 3 && f[2] == "true" {
					ready[f[1]] = f[0]
				}
			}
			for _, n := range nodes {
				pod, ok := ready[n]
				if !ok {
					// Say why: the nodes' and the pods' conditions.
					more, _ := k("get", "nodes,pods", "-o", "wide")
					events, _ := k("get", "events", "--sort-by=.lastTimestamp")
					return out + "\n" + more + "\n" + tailLines(events, 30), false
				}
				if logs, err := k("logs", pod); err != nil || !strings.Contains(logs, say) {
					return out + "\n" + pod + ": " + logs, false
				}
			}
			return out, true
		}
	}
	eventually("the loaded image running on every node", runsEverywhere("control-plane-0", "worker-0"))

	// A worker that joins later imports the loaded archives when its container runtime starts.
	if out, code := c.run("mini", "add-worker"); code != 0 || !strings.Contains(out, "worker-1 booted") {
		t.Fatalf("mini add-worker: exit %d\n%s", code, out)
	}
	eventually("the loaded image running on the worker that joined later", runsEverywhere("control-plane-0", "worker-0", "worker-1"))

	// The attack: an archive whose image claims the name of the node image's sandbox image.
	pause := nodeImageRef(t, "registry.k8s.io/pause:")
	evil, _ := writeArchive(t, t.TempDir(), workloadImage(t, pause, "the host's pause"))
	out, code = c.run("mini", "load", evil)
	if code != 2 || !strings.Contains(out, "only the node image provides") || !strings.Contains(out, pause) {
		t.Fatalf("mini load of an archive claiming %s: exit %d\n%s", pause, code, out)
	}
	if now, _ := filepath.Glob(filepath.Join(imagesDir, "*.tar")); len(now) != 1 {
		t.Fatalf("a refused load changed the loaded archives: %v", now)
	}
	// The host puts it among the loaded archives itself; the worker reboots and imports what is there.
	state, _, _ := mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
	before := nodeImageDigest(t, node(t, state, "worker-0").PID, pause)
	raw, err := os.ReadFile(evil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(imagesDir, "host.tar"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := c.run("mini", "reboot", "worker-0"); code != 0 {
		t.Fatalf("mini reboot worker-0: exit %d\n%s", code, out)
	}
	console := filepath.Join(c.ws, "constellation-mini", "nodes", "worker-0", "sandbox", "console.log")
	eventually("worker-0's container runtime ready after its reboot", func() (string, bool) {
		raw, _ := os.ReadFile(console)
		return string(raw), strings.Contains(string(raw), "container runtime ready")
	})
	state, _, _ = mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
	if after := nodeImageDigest(t, node(t, state, "worker-0").PID, pause); after != before {
		t.Fatalf("the host replaced %s on worker-0: %s, the node image's %s", pause, after, before)
	}
	if raw, _ := os.ReadFile(console); !strings.Contains(string(raw), "loaded image archive host.tar not imported: refused") {
		t.Fatalf("worker-0 did not refuse the host's archive:\n%s", raw)
	}
	eventually("the loaded image running on every node after worker-0's reboot", runsEverywhere("control-plane-0", "worker-0", "worker-1"))
}

const loadedManifest = `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: loaded}
spec:
  selector: {matchLabels: {app: loaded}}
  template:
    metadata: {labels: {app: loaded}}
    spec:
      tolerations: [{operator: Exists}]
      containers:
      - name: app
        image: %s
        imagePullPolicy: Never
        args: ["-listen", ":8080"]
`

// nodeImageRef returns the reference of the node image's container image that starts with prefix.
func nodeImageRef(t *testing.T, prefix string) string {
	t.Helper()
	raw, err := os.ReadFile("../../_out/node-image/node-image.json")
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Images map[string]string }
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for r := range m.Images {
		if strings.HasPrefix(r, prefix) {
			return r
		}
	}
	t.Fatalf("the node image has no image %s...: %v", prefix, m.Images)
	return ""
}

// nodeImageDigest returns the digest containerd on the node (first process pid) has for ref.
func nodeImageDigest(t *testing.T, pid int, ref string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "--", "ctr", "-a", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "ls")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("listing the images of node %d: %v\n%s", pid, err, stderr.Bytes())
	}
	refs, err := imagearchive.ParseImageList(out)
	if err != nil || refs[ref] == "" {
		t.Fatalf("%s on node %d: %v\n%s", ref, pid, err, out)
	}
	return refs[ref]
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
