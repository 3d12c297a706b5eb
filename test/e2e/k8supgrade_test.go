package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/version"

	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

// TestMiniKubernetesUpgrade upgrades the Kubernetes version of a running cluster (1 control plane, 1 worker)
// with `apply`: the cluster starts from node image A (`make node-image-previous`: the previous Kubernetes
// release, everything else equal) and is upgraded to image B (`make node-image`: the pinned release, the next
// minor version). The replacement of the control-plane node joins with its own control plane and runs kubeadm
// upgrade apply; only then is the worker replaced. A ConfigMap written before the upgrade is read back after it,
// every node's kubelet and the API server report B's version, and so do kubeadm's configuration and kube-proxy.
// Run it with `make e2e-k8s-upgrade`.
func TestMiniKubernetesUpgrade(t *testing.T) {
	imageA, _ := filepath.Abs("../../_out/node-image-previous")
	imageB, _ := filepath.Abs("../../_out/node-image")
	versions := func(dir string) nodeimage.Versions {
		v, err := nodeimage.ManifestVersions(filepath.Join(dir, "node-image.json"))
		if err != nil {
			t.Skipf("node image %s is not built (make node-image-previous node-image): %v", dir, err)
		}
		return v
	}
	va, vb := versions(imageA), versions(imageB)
	from, to := version.MustParseSemantic(va.Kubernetes), version.MustParseSemantic(vb.Kubernetes)
	if to.Minor() != from.Minor()+1 {
		t.Fatalf("image A has Kubernetes %s, image B %s: the test upgrades to the next minor version", va.Kubernetes, vb.Kubernetes)
	}
	if va.Etcd != vb.Etcd || va.CoreDNS != vb.CoreDNS || va.Pause != vb.Pause {
		t.Fatalf("images A and B differ in more than Kubernetes: %+v, %+v", va, vb)
	}
	t.Logf("upgrading Kubernetes %s (image A) to %s (image B)", va.Kubernetes, vb.Kubernetes)

	generate := func(c cli, dir string) {
		t.Helper()
		if out, code := c.run("config", "generate", "mini", "--image-dir", dir, "--allow-dev-signed", "--force", "--control-planes", "1", "--workers", "1"); code != 0 {
			t.Fatalf("config generate for %s: exit %d\n%s", dir, code, out)
		}
	}
	cl := startCluster(t, 1, 1, func(c cli) { generate(c, imageA) })
	c, k := cl.c, cl.k

	// Every node and the API server run A's version.
	cl.checkVersions(va.Kubernetes)
	nonce := make([]byte, 16)
	rand.Read(nonce)
	proof := hex.EncodeToString(nonce)
	if out, err := k("create", "configmap", "k8s-upgrade-proof", "-n", "default", "--from-literal=proof="+proof, "--from-literal=written-at="+va.Kubernetes); err != nil {
		t.Fatalf("writing the ConfigMap before the upgrade: %v\n%s", err, out)
	}

	generate(c, imageB)
	out, code := c.run("upgrade", "check")
	t.Logf("upgrade check:\n%s", out)
	if code != 0 || !strings.Contains(out, "Kubernetes: the cluster runs "+va.Kubernetes+", the configuration's node image "+vb.Kubernetes) {
		t.Errorf("upgrade check: exit %d, does not show both Kubernetes versions", code)
	}
	start := time.Now()
	type result struct {
		out  string
		code int
	}
	applied := make(chan result, 1)
	go func() {
		out, code := c.run("apply", "--allow-dev-signed", "--wait", "40m")
		applied <- result{out, code}
	}()
	rebootOldNodeInTheWindow(t, cl, "worker-0")
	r := <-applied
	out, code = r.out, r.code
	t.Logf("apply (%s):\n%s", time.Since(start).Round(time.Second), out)
	if code != 0 {
		t.Fatalf("apply: exit %d", code)
	}
	for _, want := range []string{
		"runs Kubernetes " + vb.Kubernetes + " (the cluster: " + va.Kubernetes + ")",
		"control-plane-0 (control-plane) -> control-plane-1: done",
		"worker-0 (worker) -> worker-1: done",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("apply does not say %q", want)
		}
	}
	// The control plane was upgraded before the worker was replaced.
	if cp, w := strings.Index(out, "control-plane-0 (control-plane) -> control-plane-1: done"), strings.Index(out, "worker-0 (worker) -> worker-1: joining"); cp < 0 || w < 0 || w < cp {
		t.Errorf("the worker was replaced before the control plane was done")
	}
	if out, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || strings.Join(strings.Fields(out), " ") != "control-plane-1 worker-1" {
		t.Errorf("nodes after the upgrade: %v\n%s", err, out)
	}
	cl.checkVersions(vb.Kubernetes)
	if out, err := k("get", "configmap", "k8s-upgrade-proof", "-n", "default", "-o", "jsonpath={.data.proof}"); err != nil || strings.TrimSpace(out) != proof {
		t.Errorf("the ConfigMap written before the upgrade: %v %q, want proof %s", err, out, proof)
	}
	if out, err := k("-n", "kube-system", "get", "configmap", "kubeadm-config", "-o", "jsonpath={.data.ClusterConfiguration}"); err != nil || !strings.Contains(out, "kubernetesVersion: "+vb.Kubernetes) {
		t.Errorf("kubeadm's cluster configuration after the upgrade: %v\n%s", err, out)
	}
	if out, err := k("-n", "kube-system", "get", "daemonset", "kube-proxy", "-o", "jsonpath={.spec.template.spec.containers[0].image}"); err != nil || !strings.HasSuffix(strings.TrimSpace(out), ":"+vb.Kubernetes) {
		t.Errorf("kube-proxy after the upgrade: %v %s", err, out)
	}
	// No node reports a kubeadm failure.
	if out, err := k("get", "nodes", "-o", "jsonpath={.items[*].metadata.annotations.upgrade\\.constellation\\.dev/kubeadm-error}"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("a node reports a kubeadm failure: %v %s", err, out)
	}
	cl.eventually("status healthy after the upgrade", func() (string, bool) {
		out, code := c.run("status")
		return out, code == 0
	})
}

// checkVersions checks that every node's kubelet and the API server report Kubernetes v.
func (cl *cluster) checkVersions(v string) {
	cl.t.Helper()
	out, err := cl.k("get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.nodeInfo.kubeletVersion}{\"\\n\"}{end}")
	if err != nil {
		cl.t.Fatalf("the nodes' kubelet versions: %v\n%s", err, out)
	}
	for _, line := range strings.Fields(out) {
		if name, kv, _ := strings.Cut(line, "="); kv != v {
			cl.t.Errorf("node %s runs kubelet %s, want %s", name, kv, v)
		}
	}
	cl.t.Logf("kubelets: %s", strings.Join(strings.Fields(out), " "))
	raw, err := cl.k("version", "-o", "json")
	if err != nil {
		cl.t.Fatalf("kubectl version: %v\n%s", err, raw)
	}
	var ver struct {
		Server struct {
			GitVersion string `json:"gitVersion"`
		} `json:"serverVersion"`
	}
	if i := strings.Index(raw, "{"); i < 0 || json.Unmarshal([]byte(raw[i:]), &ver) != nil || ver.Server.GitVersion != v {
		cl.t.Errorf("kubectl version: the API server reports %q, want %s\n%s", ver.Server.GitVersion, v, raw)
	}
}

// rebootOldNodeInTheWindow holds the upgrade (spec.paused) while the control plane's replacement joins (the
// controller holds before it drains the old control-plane node, or before the next node), reboots the old-image node while both measurement sets are in
// force, waits until it has rejoined (its state disk unlocked again by the key service, Ready), and lets the
// upgrade go on. A node of the old image that restarts during an upgrade must not be locked out.
func rebootOldNodeInTheWindow(t *testing.T, cl *cluster, node string) {
	t.Helper()
	waitNodeUpgrade(t, cl.k, "the control plane's replacement joining", func(nu *v1alpha1.NodeUpgrade) bool {
		return len(nu.Status.Nodes) > 0 && nu.Status.Nodes[0].Step == v1alpha1.StepJoining
	})
	if out, err := cl.k("patch", "nodeupgrade", v1alpha1.Name, "--type", "merge", "-p", `{"spec":{"paused":true}}`); err != nil {
		t.Fatalf("pausing the upgrade: %v\n%s", err, out)
	}
	// The controller says so on the node it holds (before its drain), or on the upgrade (before the next node).
	paused := func(nu *v1alpha1.NodeUpgrade) bool {
		if strings.Contains(nu.Status.Message, "paused by spec.paused") {
			return true
		}
		n := len(nu.Status.Nodes)
		return n > 0 && strings.Contains(nu.Status.Nodes[n-1].Message, "paused by spec.paused")
	}
	nu := waitNodeUpgrade(t, cl.k, "the upgrade held before the old control-plane node drains", paused)
	last := nu.Status.Nodes[len(nu.Status.Nodes)-1]
	t.Logf("upgrade paused: %s at step %s (%s; %s)", last.OldNode, last.Step, last.Message, nu.Status.Message)
	console := filepath.Join(cl.c.ws, "constellation-mini", "nodes", node, "sandbox", "console.log")
	start := time.Now()
	// unlockedSince reports whether the node's console says its state disk was unlocked after start (a rebooted
	// node's console may start afresh, so count by time, not by lines).
	unlockedSince := func() bool {
		raw, _ := os.ReadFile(console)
		for _, line := range strings.Split(string(raw), "\n") {
			var entry struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if json.Unmarshal([]byte(line), &entry) == nil && strings.HasPrefix(entry.Msg, "state disk unlocked") && entry.Time.After(start) {
				return true
			}
		}
		return false
	}
	if out, code := cl.c.run("mini", "reboot", node); code != 0 {
		t.Fatalf("mini reboot %s: exit %d\n%s", node, code, out)
	}
	cl.eventually(node+" (old image) rejoined during the upgrade: state disk unlocked again, Ready", func() (string, bool) {
		out, err := cl.k("get", "node", node, "--no-headers")
		return out, unlockedSince() && err == nil && strings.Contains(out, " Ready ")
	})
	t.Logf("%s (old image) rebooted and rejoined within the upgrade's two-set window: %s", node, time.Since(start).Round(time.Second))
	if out, err := cl.k("patch", "nodeupgrade", v1alpha1.Name, "--type", "merge", "-p", `{"spec":{"paused":false}}`); err != nil {
		t.Fatalf("resuming the upgrade: %v\n%s", err, out)
	}
}
