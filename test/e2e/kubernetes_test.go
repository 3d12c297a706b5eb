package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	cl := startCluster(t, 1, 2)
	c, k, eventually := cl.c, cl.k, cl.eventually
	eventually("all nodes Ready", func() (string, bool) {
		out, err := k("get", "nodes", "--no-headers")
		return out, err == nil && strings.Count(out, " Ready ") == 3
	})
	// The workers were admitted by the join service running in the cluster, on the control plane.
	eventually("the join service admitting both workers", func() (string, bool) {
		out, err := k("-n", "kube-system", "logs", "daemonset/join-service")
		return out, err == nil && strings.Count(out, `"msg":"node admitted"`) >= 2
	})
	// Each worker got its state disk key, which the join service got from the key service on the first node.
	if out, _ := k("-n", "kube-system", "logs", "daemonset/join-service"); len(regexp.MustCompile(`"msg":"node admitted".*"disk":"[0-9a-f-]{36}"`).FindAllString(out, -1)) < 2 {
		t.Fatalf("join service did not hand out disk keys:\n%s", out)
	}
	if out, err := k("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=join-service", "--no-headers", "-o", "custom-columns=NODE:.spec.nodeName"); err != nil || strings.TrimSpace(out) != "control-plane-0" {
		t.Fatalf("join service pods: %v\n%s", err, out)
	}
	if out, code := c.run("status"); code != 0 || strings.Count(out, "member of this cluster") != 3 || strings.Count(out, "Ready") != 3 {
		t.Fatalf("status: exit %d\n%s", code, out)
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

// TestMiniControlPlanes boots 2 control-plane nodes: the second joins through the join service as a
// control-plane node (the join service hands the shared PKI only to a node the provider names a control-plane
// node), runs its own API server and etcd member, and gets a join service of its own.
func TestMiniControlPlanes(t *testing.T) {
	cl := startCluster(t, 2, 0)
	cl.eventually("both control-plane nodes Ready", func() (string, bool) {
		out, err := cl.k("get", "nodes", "--no-headers", "-l", "node-role.kubernetes.io/control-plane")
		return out, err == nil && strings.Count(out, " Ready ") == 2
	})
	cl.eventually("an API server, an etcd member and a join service on each", func() (string, bool) {
		out, err := cl.k("-n", "kube-system", "get", "pods", "--no-headers", "-o", "custom-columns=NAME:.metadata.name,STATUS:.status.phase,NODE:.spec.nodeName")
		if err != nil {
			return out, false
		}
		for _, name := range []string{"kube-apiserver-control-plane-1", "etcd-control-plane-1", "kube-apiserver-control-plane-0", "etcd-control-plane-0"} {
			if !strings.Contains(out, name+" ") || !regexp.MustCompile(regexp.QuoteMeta(name)+`\s+Running`).MatchString(out) {
				return out, false
			}
		}
		return out, regexp.MustCompile(`join-service-\S+\s+Running\s+control-plane-1`).MatchString(out)
	})
	// The second API server serves the cluster.
	state, _, _ := mini.ReadState(filepath.Join(cl.c.ws, "constellation-mini"))
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(state.Nodes[0].PID), "-n", "curl", "-sk", "-m", "5", "https://"+mini.NodeAddr(1).String()+":6443/readyz").CombinedOutput()
	if err != nil || string(out) != "ok" {
		t.Fatalf("API server on control-plane-1: %v %s", err, out)
	}
	for i := range 2 {
		if out, code := cl.c.run("verify", "--node-endpoint", mini.NodeAddr(i).String()+":9090"); code != 0 {
			t.Fatalf("verify node %d: exit %d\n%s", i, code, out)
		}
	}
}

// cluster is a mini cluster with Kubernetes, booted from the full node image.
type cluster struct {
	t          *testing.T
	c          cli
	kubectl    string
	kubeconfig string
}

// startCluster runs `mini up` with the full node image (skipping the test where it is not built) and
// removes the cluster when the test ends.
func startCluster(t *testing.T, controlPlanes, workers int) *cluster {
	t.Helper()
	requireMachine(t)
	imageDir, _ := filepath.Abs("../../_out/node-image")
	kubectl, _ := filepath.Abs("../../_out/kubernetes/bin/kubectl")
	if _, err := os.Stat(filepath.Join(imageDir, "node-image.json")); err != nil {
		t.Skip("the node image is not built (make node-image)")
	}
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	if out, code := c.run("config", "generate", "mini", "--image-dir", imageDir, "--control-planes", strconv.Itoa(controlPlanes), "--workers", strconv.Itoa(workers)); code != 0 {
		t.Fatalf("config generate: %d\n%s", code, out)
	}
	start := time.Now()
	out, code := c.run("mini", "up")
	t.Cleanup(func() { c.run("mini", "down") })
	if code != 0 {
		t.Fatalf("mini up: exit %d\n%s", code, out)
	}
	t.Logf("mini up with Kubernetes init (%d control planes, %d workers): %s", controlPlanes, workers, time.Since(start).Round(time.Second))
	kubeconfig := filepath.Join(c.ws, "constellation-admin.conf")
	if info, err := os.Stat(kubeconfig); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("admin kubeconfig: %v", err)
	}
	return &cluster{t: t, c: c, kubectl: kubectl, kubeconfig: kubeconfig}
}

func (cl *cluster) k(args ...string) (string, error) {
	out, err := exec.Command(cl.kubectl, append([]string{"--kubeconfig", cl.kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

// eventually waits up to 3 minutes for cond.
func (cl *cluster) eventually(what string, cond func() (string, bool)) {
	cl.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, ok := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			cl.t.Fatalf("%s never happened:\n%s", what, out)
		}
		time.Sleep(2 * time.Second)
	}
}
