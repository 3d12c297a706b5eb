package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// TestMiniKubernetes boots 1 control plane + 2 workers from the full node image (make node-image): the CLI
// attests the first control-plane node and sends it the master secret over aTLS; the node initialises
// Kubernetes and deploys the join service into the cluster, which admits each worker only after attesting it
// (mutual aTLS, its own evidence coming from the control-plane node's attestation agent); every node then
// proves with PCR 15 that it belongs to this cluster. A Deployment of 3 replicas spread over the workers serves
// a Service. `mini down` leaves the host as it was. It runs only where the node image has been built.
func TestMiniKubernetes(t *testing.T) {
	requireMachine(t)
	imageDir, _ := filepath.Abs("../../_out/node-image")
	kubectl, _ := filepath.Abs("../../_out/kubernetes/bin/kubectl")
	if _, err := os.Stat(filepath.Join(imageDir, "node-image.json")); err != nil {
		t.Skip("the node image is not built (make node-image)")
	}
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	if out, code := c.run("config", "generate", "mini", "--image-dir", imageDir, "--workers", "2"); code != 0 {
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
	k := func(args ...string) (string, error) {
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		return string(out), err
	}
	eventually := func(what string, cond func() (string, bool)) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for {
			out, ok := cond()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never happened:\n%s", what, out)
			}
			time.Sleep(2 * time.Second)
		}
	}
	eventually("all nodes Ready", func() (string, bool) {
		out, err := k("get", "nodes", "--no-headers")
		return out, err == nil && strings.Count(out, " Ready ") == 3
	})
	// The workers were admitted by the join service running in the cluster, on the control plane.
	eventually("the join service admitting both workers", func() (string, bool) {
		out, err := k("-n", "kube-system", "logs", "daemonset/join-service")
		return out, err == nil && strings.Count(out, `"msg":"node admitted"`) >= 2
	})
	if out, err := k("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=join-service", "--no-headers", "-o", "custom-columns=NODE:.spec.nodeName"); err != nil || strings.TrimSpace(out) != "control-plane-0" {
		t.Fatalf("join service pods: %v\n%s", err, out)
	}
	// Every node proves its cluster membership (PCR 15).
	for i := range 3 {
		if out, code := c.run("verify", "--node-endpoint", mini.NodeAddr(i).String()+":9090"); code != 0 || !strings.Contains(out, "4 PCRs match") {
			t.Fatalf("verify node %d: exit %d\n%s", i, code, out)
		}
	}

	manifest := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(manifest, []byte(webManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := k("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	eventually("3 replicas running on the workers", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=STATUS:.status.phase,NODE:.spec.nodeName")
		return out, err == nil && strings.Count(out, "Running") == 3 && strings.Contains(out, "worker-0") && strings.Contains(out, "worker-1") && !strings.Contains(out, "control-plane")
	})
	ip, err := k("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		t.Fatal(err)
	}
	// From the control-plane node (no replica there), through the Service, to pods on other nodes.
	state, _, _ := mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
	get := func() (string, bool) {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(state.Nodes[0].PID), "-n", "curl", "-s", "-m", "5", "http://"+ip+"/version").CombinedOutput()
		return string(out), err == nil && strings.Contains(string(out), "etcdserver")
	}
	// The Service answers once its endpoints are ready and kube-proxy has programmed them; then every time.
	eventually("the Service answering", get)
	for i := range 6 {
		if out, ok := get(); !ok {
			t.Fatalf("request %d through the Service failed: %s", i, out)
		}
	}
	if out, code := c.run("mini", "down"); code != 0 {
		t.Fatalf("mini down: exit %d\n%s", code, out)
	}
	if mini.NetworkInUse() {
		t.Error("node network left")
	}
	if out, _ := exec.Command("pgrep", "-f", "kubelet|containerd|kube-apiserver").Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("Kubernetes processes left: %s", out)
	}
}

// webManifest is a Deployment of 3 replicas (etcd serves /version over HTTP) kept off the control plane, and
// its Service.
const webManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
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
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 2379}]
`
