package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
)

// TestMiniApplyUpgrade moves a running cluster (1 control plane, 2 workers) to a second node image B, built here
// (the same Kubernetes; the bootstrapper with another commit, so another digest and other measurements) while
// the cluster's user keeps sending requests to an application of 2 replicas behind a Service, with a
// PodDisruptionBudget (minAvailable 1): no request may fail. The upgrade controller runs in the cluster,
// deployed at init.
//
// First run: apply B; once the control-plane node is being replaced, 'upgrade abort' rolls back. The controller
// finishes the node in flight (the apply that followed stops: its upgrade was turned back), then replaces every
// node of B by one of A, control plane first; only then is the measurement policy narrowed to A. Afterwards
// every node runs A by its attestation record and the key services accept A only.
//
// Second run: apply B all the way: apply verifies B's signed measurements, registers B with the provider, opens
// the measurement policy window and turns the NodeUpgrade toward B; the controller replaces the control-plane
// node first (every node reaches the API through its own endpoint, so none is special), then the workers, as the
// budget allows; apply follows it through the new control-plane node once the old one is gone, narrows the
// policy to B and records B. Every node runs B by its attestation record, the application's replicas run on the
// new workers, and a node booted from A refuses the join service of B, naming PCR 4 (it trusts its own image
// only).
func TestMiniApplyUpgrade(t *testing.T) {
	// Image B is built while the cluster boots.
	type built struct {
		dir string
		err error
	}
	imageBDone := make(chan built, 1)
	go func() {
		dir, err := os.MkdirTemp("", "node-image-b-")
		if err == nil {
			err = buildNodeImageB(dir)
		}
		imageBDone <- built{dir, err}
	}()
	t.Cleanup(func() {
		if b := <-imageBDone; b.dir != "" {
			os.RemoveAll(b.dir)
		}
	})
	cl := startCluster(t, 1, 2)
	c, k := cl.c, cl.k
	cl.eventually("the upgrade controller deployed at init and running", func() (string, bool) {
		out, err := k("-n", "kube-system", "get", "deployment", deploy.Name, "-o", "jsonpath={.status.readyReplicas}")
		return out, err == nil && strings.TrimSpace(out) == "1"
	})
	confPath := filepath.Join(c.ws, config.FileName)
	rawConfA, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	confA, err := config.Load(confPath)
	if err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(c.ws, "constellation-state.yaml")
	if state, _ := os.ReadFile(statePath); !strings.Contains(string(state), confA.ImageDigest()) {
		t.Fatalf("the state file does not record the image of init:\n%s", state)
	}

	// The application and its budget.
	manifest := filepath.Join(t.TempDir(), "app.yaml")
	if err := os.WriteFile(manifest, []byte(upgradeAppManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := k("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	cl.eventually("both replicas ready on the workers", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=READY:.status.containerStatuses[0].ready,NODE:.spec.nodeName")
		return out, err == nil && strings.Count(out, "true") == 2 && !strings.Contains(out, "control-plane")
	})
	ip, err := k("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		t.Fatal(err)
	}
	load := startRequests(t, cl, net.JoinHostPort(strings.TrimSpace(ip), "80"))

	b := <-imageBDone
	imageBDone <- b // for the cleanup
	if b.err != nil {
		t.Fatalf("building image B: %v", b.err)
	}
	if out, code := c.run("config", "generate", "mini", "--image-dir", b.dir, "--allow-dev-signed", "--force", "--control-planes", "1", "--workers", "2"); code != 0 {
		t.Fatalf("config generate for image B: exit %d\n%s", code, out)
	}
	rawConfB, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	confB, err := config.Load(confPath)
	if err != nil {
		t.Fatal(err)
	}
	if confB.ImageDigest() == confA.ImageDigest() {
		t.Fatalf("image B has the digest of image A (%s)", confA.ImageDigest())
	}
	shortA, shortB := confA.ImageDigest()[:len("sha256:")+12], confB.ImageDigest()[:len("sha256:")+12]
	every := func(what, short, other string) {
		t.Helper()
		cl.eventually("status healthy, every node on image "+what, func() (string, bool) {
			out, code := c.run("status")
			return out, code == 0 && strings.Count(out, short) >= 3 && !strings.Contains(out, other)
		})
	}

	// First run: apply B, and roll back once the control-plane node is being replaced.
	start := time.Now()
	applied := make(chan string, 1)
	go func() {
		out, _ := exec.Command(c.bin, "apply", "--allow-dev-signed", "--wait", "20m", "--workspace", c.ws).CombinedOutput()
		applied <- string(out)
	}()
	nu := waitNodeUpgrade(t, k, "the control-plane node replaced past its join", func(nu *v1alpha1.NodeUpgrade) bool {
		if nu.Spec.ImageDigest != confB.ImageDigest() || nu.Status.ImageDigest != confB.ImageDigest() || len(nu.Status.Nodes) == 0 {
			return false
		}
		switch nu.Status.Nodes[0].Step {
		case v1alpha1.StepDraining, v1alpha1.StepRemoving, v1alpha1.StepDone:
			return true
		}
		return false
	})
	t.Logf("upgrade to B: %s at step %s after %s", nu.Status.Nodes[len(nu.Status.Nodes)-1].OldNode, nu.Status.Nodes[len(nu.Status.Nodes)-1].Step, time.Since(start).Round(time.Second))
	// abort names the image the state file records, A, whatever the configuration says.
	out, code := c.run("upgrade", "abort", "--wait", "20m")
	t.Logf("upgrade abort:\n%s", out)
	if code != 0 {
		t.Fatalf("upgrade abort: exit %d", code)
	}
	for _, want := range []string{
		"asked the upgrade controller to roll back",
		"(control-plane) -> ",
		"upgrade succeeded: every node runs image " + confA.ImageDigest(),
		"in force at every key service",
		"Upgrade rolled back: every node runs node image " + confA.ImageDigest(),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("upgrade abort does not say %q", want)
		}
	}
	if out := <-applied; !strings.Contains(out, "turned toward node image "+confA.ImageDigest()) {
		t.Errorf("the apply that followed the upgrade does not say it was turned back:\n%s", out)
	}
	t.Logf("upgrade to B and rollback to A: %s", time.Since(start).Round(time.Second))
	if err := os.WriteFile(confPath, rawConfA, 0o644); err != nil {
		t.Fatal(err)
	}
	every("A", shortA, shortB)
	if out, code := c.run("upgrade", "check"); code != 0 || !strings.Contains(out, "The configuration's image is the one in force") {
		t.Errorf("upgrade check after the rollback: exit %d\n%s", code, out)
	}
	if out, err := k("get", "nodeupgrades"); err != nil || strings.Contains(out, v1alpha1.Name) {
		t.Errorf("the NodeUpgrade after the rollback: %v\n%s", err, out)
	}
	if state, _ := os.ReadFile(statePath); !strings.Contains(string(state), confA.ImageDigest()) {
		t.Errorf("the state file does not record image A after the rollback:\n%s", state)
	}

	// Second run: apply B all the way.
	if err := os.WriteFile(confPath, rawConfB, 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	out, code = c.run("apply", "--allow-dev-signed", "--wait", "20m")
	t.Logf("apply:\n%s", out)
	if code != 0 {
		t.Fatalf("apply: exit %d", code)
	}
	t.Logf("upgrade of 3 nodes to B: %s", time.Since(start).Round(time.Second))
	for _, want := range []string{
		"Upgrading the cluster from node image " + confA.ImageDigest() + " to " + confB.ImageDigest(),
		"node image " + confB.ImageDigest() + " known to the provider",
		"NodeUpgrade cluster asks the upgrade controller",
		"(control-plane) -> ",
		"Upgrade finished: the key services accept node image " + confB.ImageDigest() + " only",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("apply does not say %q", want)
		}
	}
	if n := strings.Count(out, ": done: replaced by "); n != 3 {
		t.Errorf("apply reports %d replaced nodes, want 3", n)
	}
	registered := filepath.Join(c.ws, "constellation-mini", "node-images", strings.TrimPrefix(confB.ImageDigest(), "sha256:")+".squashfs")
	if _, err := os.Stat(registered); err != nil {
		t.Errorf("image B is not registered with the provider: %v", err)
	}
	every("B", shortB, shortA)
	nodes, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name")
	if err != nil || len(strings.Fields(nodes)) != 3 {
		t.Errorf("nodes after the upgrade: %v\n%s", err, nodes)
	}
	for _, old := range []string{"control-plane-0", "worker-0", "worker-1"} {
		if slices.Contains(strings.Fields(nodes), old) {
			t.Errorf("%s is left after the upgrade: %s", old, nodes)
		}
	}
	cl.eventually("the application's replicas ready on the new workers", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=READY:.status.containerStatuses[0].ready,NODE:.spec.nodeName")
		return out, err == nil && strings.Count(out, "true") == 2 && !strings.Contains(out, "worker-0") && !strings.Contains(out, "worker-1 ")
	})
	sent, failures, void := load.stop()
	t.Logf("requests to the application during the upgrade, its rollback and the second upgrade: %d sent, %d failed, %d not counted (the client's own node was being removed)", sent, len(failures), void)
	// No request may fail: a node takes pods (and the client) only once its network is complete, replacing
	// a node leaves the sessions between the other nodes alone, and a drained pod leaves the Service before it
	// stops.
	if sent < 100 || len(failures) > 0 {
		t.Errorf("%d of %d requests failed:\n%s", len(failures), sent, strings.Join(failures[:min(len(failures), 20)], "\n"))
	}
	if state, _ := os.ReadFile(statePath); !strings.Contains(string(state), confB.ImageDigest()) {
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
	if now, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || now != nodes {
		t.Errorf("nodes after the node of image A tried to join: %v\n%s", err, now)
	}
}

// upgradeAppManifest is the application the upgrade must not interrupt: 2 replicas (etcd serves /version over
// HTTP) kept off the control plane, each ready once it answers, and given 5 s after it leaves the Service's
// endpoints before it is stopped (every kube-proxy stops sending it connections first); its Service; and a
// budget that keeps one replica available whatever is drained.
const upgradeAppManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms: [{matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}]
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: web
        image: registry.k8s.io/etcd:3.7.0-0
        imagePullPolicy: Never
        command: ["/usr/local/bin/etcd", "--listen-client-urls=http://0.0.0.0:2379", "--advertise-client-urls=http://127.0.0.1:2379", "--data-dir=/tmp/etcd"]
        ports: [{containerPort: 2379}]
        readinessProbe:
          httpGet: {path: /version, port: 2379}
          periodSeconds: 1
        lifecycle:
          preStop:
            sleep: {seconds: 5}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 2379}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
`

// waitNodeUpgrade waits up to 15 minutes until the cluster's NodeUpgrade satisfies cond, and returns it.
func waitNodeUpgrade(t *testing.T, k func(...string) (string, error), what string, cond func(*v1alpha1.NodeUpgrade) bool) *v1alpha1.NodeUpgrade {
	t.Helper()
	deadline := time.Now().Add(15 * time.Minute)
	last := ""
	for {
		out, err := k("get", "nodeupgrade", v1alpha1.Name, "-o", "json")
		var nu v1alpha1.NodeUpgrade
		if err == nil && json.Unmarshal([]byte(out), &nu) == nil {
			if cond(&nu) {
				return &nu
			}
			if nu.Status.Phase == v1alpha1.PhaseFailed {
				t.Fatalf("waiting for %s, the upgrade failed: %s", what, nu.Status.Message)
			}
		}
		last = out
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened:\n%s", what, last)
		}
		time.Sleep(time.Second)
	}
}

// buildNodeImageB builds a second node image from the one of `make node-image` in _out/node-image into out: the
// same components and service images (the same version), but a bootstrapper built with another commit, so the
// image has another digest and other measurements. It is signed as a local build is.
func buildNodeImageB(out string) error {
	root, _ := filepath.Abs("../..")
	raw, err := os.ReadFile(filepath.Join(root, "_out", "node-image", "node-image.json"))
	if err != nil {
		return err
	}
	var m nodeimage.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	version := ""
	for ref := range m.Images {
		if v, ok := strings.CutPrefix(ref, deploy.Image()[:strings.LastIndex(deploy.Image(), ":")+1]); ok {
			version = v
		}
	}
	if version == "" {
		return fmt.Errorf("image A's manifest names no upgrade controller image: %v", m.Images)
	}
	const module = "github.com/constellation-dev/constellation"
	ldflags := "-X " + module + "/internal/version.Version=" + version
	bins, err := os.MkdirTemp("", "bootstrapper-b-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bins)
	bootstrapper := filepath.Join(bins, "bootstrapper")
	for _, args := range [][]string{
		{"go", "build", "-trimpath", "-ldflags", ldflags + " -X " + module + "/internal/version.Commit=upgrade-b", "-o", bootstrapper, "./cmd/bootstrapper"},
		{"go", "run", "-ldflags", ldflags, "./tools/node-image", "-out", out, "-bootstrapper", bootstrapper},
		{"go", "run", "./tools/sign-measurements", "-image-dir", out},
	} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	return nil
}
