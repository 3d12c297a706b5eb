package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/apiproxy"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// TestMiniAPIEndpoint boots 2 control-plane nodes and a worker. Every node reaches the API through its own
// endpoint (package apiproxy, on its loopback): every kubelet's kubeconfig and the cluster's configuration
// (kube-public/cluster-info) name it, and only the operator's admin kubeconfig names a control-plane node.
// Then the first control-plane node's API server goes down (its static pod's manifest taken away; its etcd
// member keeps running, so that the two members keep their quorum, which stopping the whole node would lose):
// the worker and the first node itself stay Ready through the other API server, the CLI moves the admin
// kubeconfig to control-plane-1, and a new worker joins. Removed from the cluster, that worker reaches no API
// server through its endpoint, although the host offers it a relay (checkRemovedNodeCutOff).
func TestMiniAPIEndpoint(t *testing.T) {
	cl := startCluster(t, 2, 1)
	ws := filepath.Join(cl.c.ws, "constellation-mini")
	state, _, err := mini.ReadState(ws)
	if err != nil {
		t.Fatal(err)
	}
	cp0, cp1 := node(t, state, "control-plane-0"), node(t, state, "control-plane-1")
	endpoint := "https://" + apiproxy.Address.String()
	kubeletServer := func(pid int) (string, error) {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/kubernetes/kubelet.conf", pid))
		if err != nil {
			return "", err
		}
		m := regexp.MustCompile(`(?m)^\s*server: (\S+)$`).FindSubmatch(raw)
		if m == nil {
			return "", fmt.Errorf("no server in the kubelet's kubeconfig:\n%s", raw)
		}
		return string(m[1]), nil
	}
	for _, n := range state.Nodes {
		if server, err := kubeletServer(n.PID); err != nil || server != endpoint {
			t.Fatalf("%s's kubelet talks to %q (%v), want its own endpoint %s", n.Name, server, err, endpoint)
		}
	}
	if out, err := cl.k("-n", "kube-public", "get", "configmap", "cluster-info", "-o", "jsonpath={.data.kubeconfig}"); err != nil || !strings.Contains(out, "server: "+endpoint) {
		t.Fatalf("the cluster's endpoint in kube-public/cluster-info: %v\n%s", err, out)
	}
	adminServer := func() string {
		out, _ := cl.k("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}")
		return out
	}
	if got := adminServer(); got != "https://"+cp0.IP+":6443" {
		t.Fatalf("the admin kubeconfig names %q, want the attested first node's API server", got)
	}

	// The first control-plane node's API server goes down.
	manifest := fmt.Sprintf("/proc/%d/root/etc/kubernetes/manifests/kube-apiserver.yaml", cp0.PID)
	if err := os.Rename(manifest, fmt.Sprintf("/proc/%d/root/etc/kubernetes/kube-apiserver.yaml.off", cp0.PID)); err != nil {
		t.Fatal(err)
	}
	cl.eventually("control-plane-0's API server down", func() (string, bool) {
		out, err := exec.Command("curl", "-sk", "-m", "3", "https://"+cp0.IP+":6443/readyz").CombinedOutput()
		return string(out), err != nil
	})
	down := time.Now()
	// status moves the admin kubeconfig to an API server that answers.
	cl.eventually("status naming control-plane-1's API server, every node attested and Ready", func() (string, bool) {
		out, _ := cl.c.run("status")
		return out, strings.Contains(out, "Kubernetes API at https://"+cp1.IP+":6443") && strings.Count(out, "member of this cluster") == 3 && strings.Count(out, "Ready") == 3
	})
	if got := adminServer(); got != "https://"+cp1.IP+":6443" {
		t.Fatalf("after status, the admin kubeconfig names %q, want control-plane-1's API server", got)
	}
	// The kubelets keep their API through their endpoints: every node stays Ready well past the node monitor's
	// grace period (40 s), the first control-plane node included.
	for time.Since(down) < 60*time.Second {
		time.Sleep(5 * time.Second)
	}
	if out, err := cl.k("get", "nodes", "--no-headers"); err != nil || strings.Count(out, " Ready ") != 3 {
		t.Fatalf("nodes a minute after control-plane-0's API server went down: %v\n%s", err, out)
	}

	// A new worker joins: through control-plane-1's join service, and its kubeadm through its own endpoint.
	start := time.Now()
	if out, code := cl.c.run("mini", "add-worker"); code != 0 || !strings.Contains(out, "worker-1 booted") {
		t.Fatalf("mini add-worker with control-plane-0's API server down: exit %d\n%s", code, out)
	}
	cl.eventually("worker-1 Ready", func() (string, bool) {
		out, err := cl.k("get", "node", "worker-1", "--no-headers")
		return out, err == nil && strings.Contains(out, " Ready ")
	})
	t.Logf("worker-1 joined with control-plane-0's API server down: %s", time.Since(start).Round(time.Second))
	if state, err = readState(ws); err != nil {
		t.Fatal(err)
	}
	if server, err := kubeletServer(node(t, state, "worker-1").PID); err != nil || server != endpoint {
		t.Fatalf("worker-1's kubelet talks to %q (%v), want its own endpoint", server, err)
	}

	// Removed from the cluster, the new worker reaches no API server.
	manifestFile := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(manifestFile, []byte(webManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := cl.k("apply", "-f", manifestFile); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	checkRemovedNodeCutOff(t, cl.k, state, cl.eventually)
}

// readState reads the mini provider's state of a workspace's cluster.
func readState(dir string) (mini.State, error) {
	state, found, err := mini.ReadState(dir)
	if err == nil && !found {
		err = fmt.Errorf("no mini cluster in %s", dir)
	}
	return state, err
}
