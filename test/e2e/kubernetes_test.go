package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/apiproxy"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms/kmip/kmiptest"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
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
	// Each kubelet's identity came from the join service, for the node's attested name; a bootstrap token alone
	// no longer gets a node certificate (no automatic approval), and no kubelet asked for one.
	if out, _ := k("-n", "kube-system", "logs", "daemonset/join-service"); strings.Count(out, `"kubeletCertificate":"system:node:worker-`) < 2 {
		t.Fatalf("the join service did not issue the workers' kubelet certificates:\n%s", out)
	}
	if out, err := k("get", "clusterrolebinding", "kubeadm:node-autoapprove-bootstrap"); err == nil || !strings.Contains(out, "NotFound") {
		t.Fatalf("bootstrap certificate requests are still approved automatically: %v\n%s", err, out)
	}
	if out, err := k("get", "csr", "-o", "jsonpath={.items[*].spec.username}"); err != nil || strings.Contains(out, "system:bootstrap:") {
		t.Fatalf("certificate requests with a bootstrap token: %v %s", err, out)
	}
	if out, err := k("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=join-service", "--no-headers", "-o", "custom-columns=NODE:.spec.nodeName"); err != nil || strings.TrimSpace(out) != "control-plane-0" {
		t.Fatalf("join service pods: %v\n%s", err, out)
	}
	// The key service runs in its own pod on the first control-plane node, with the master secret its
	// bootstrapper handed over; it derived both workers' disk keys for the join service and audited each.
	if out, err := k("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=key-service", "--no-headers", "-o", "custom-columns=NODE:.spec.nodeName"); err != nil || strings.TrimSpace(out) != "control-plane-0" {
		t.Fatalf("key service pods: %v\n%s", err, out)
	}
	if out, _ := k("-n", "kube-system", "logs", "daemonset/key-service"); len(regexp.MustCompile(`"msg":"data key issued".*"keyID":"disk-key/[0-9a-f-]{36}"`).FindAllString(out, -1)) < 2 {
		t.Fatalf("the key service did not audit the workers' disk keys:\n%s", out)
	}
	// The cluster's verification service runs on every node and answers with the node's own evidence.
	eventually("the verification service running on every node", func() (string, bool) {
		out, err := k("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=verification-service", "--no-headers", "-o", "custom-columns=STATUS:.status.phase,NODE:.spec.nodeName")
		return out, err == nil && strings.Count(out, "Running") == 3
	})
	for i := range 3 {
		if out, code := c.run("verify", "--node-endpoint", mini.NodeAddr(i).String()+":9080"); code != 0 || !strings.Contains(out, "4 PCRs match") {
			t.Fatalf("verify node %d through the cluster's verification service: exit %d\n%s", i, code, out)
		}
	}
	// status: every node a member and Ready, every service's pods ready (the DaemonSets' status follows their
	// pods within moments).
	eventually("status reporting every node and service healthy", func() (string, bool) {
		out, code := c.run("status")
		services := regexp.MustCompile(`(?m)^join-service +1/1$`).MatchString(out) && regexp.MustCompile(`(?m)^key-service +1/1$`).MatchString(out) &&
			regexp.MustCompile(`(?m)^verification-service +3/3$`).MatchString(out)
		return out, code == 0 && strings.Count(out, "member of this cluster") == 3 && strings.Count(out, "Ready") == 3 && services
	})
	// Every node proves its cluster membership (PCR 15).
	for i := range 3 {
		if out, code := c.run("verify", "--node-endpoint", mini.NodeAddr(i).String()+":9090"); code != 0 || !strings.Contains(out, "4 PCRs match") {
			t.Fatalf("verify node %d: exit %d\n%s", i, code, out)
		}
	}
	// One report of every node's fresh evidence, which a third party verifies offline.
	checkClusterReport(t, c, "control-plane-0", "worker-0", "worker-1")
	// Against another cluster ID, the same node fails, on PCR 15.
	statePath := filepath.Join(c.ws, "constellation-state.yaml")
	realState, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	id := regexp.MustCompile(`clusterID: "?([0-9a-f]{64})`).FindSubmatch(realState)
	if id == nil {
		t.Fatalf("no cluster ID in the state file:\n%s", realState)
	}
	other := bytes.Replace(realState, id[1], bytes.Repeat([]byte("ab"), 32), 1)
	if err := os.WriteFile(statePath, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := c.run("verify", "--node-endpoint", mini.NodeAddr(1).String()+":9090"); code != 1 || !strings.Contains(out, "PCR 15") {
		t.Fatalf("verify against another cluster ID: exit %d\n%s", code, out)
	}
	if err := os.WriteFile(statePath, realState, 0o644); err != nil {
		t.Fatal(err)
	}

	// What the cluster stores is encrypted on the nodes' state disks: a ConfigMap's value, written by etcd on
	// the control-plane node, is nowhere in that node's disk image on the host.
	marker := "constellation-disk-marker-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if out, err := k("create", "configmap", "marker", "--from-literal=value="+marker); err != nil {
		t.Fatalf("create configmap: %v\n%s", err, out)
	}
	if out, err := k("get", "configmap", "marker", "-o", "jsonpath={.data.value}"); err != nil || out != marker {
		t.Fatalf("configmap: %v %q", err, out)
	}
	disk := filepath.Join(c.ws, "constellation-mini", "nodes", "control-plane-0", "state-disk.img")
	if found, err := fileContains(disk, []byte(marker)); err != nil || found {
		t.Fatalf("the control-plane node's state disk holds the ConfigMap value in plain text (found %v, %v)", found, err)
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

	// Nothing crosses the node network between nodes in plain text: pod-to-pod traffic and the API server's
	// traffic with the kubelets go through WireGuard.
	checkNetworkEncrypted(t, k, state)

	// A worker whose measured state changes after it joined is quarantined by the others; it comes back only
	// through a reboot and a fresh attestation.
	checkContinuousAttestation(t, c, k, state, eventually)

	// A worker reboots: its TPM resets (PCR 15 is zero again), it attests to the join service again, gets the
	// key of its state disk again, finds its kubelet's state there, and is a member and Ready again.
	worker := mini.NodeAddr(1).String() + ":9090"
	if out, code := c.run("mini", "reboot", "worker-0"); code != 0 {
		t.Fatalf("mini reboot: exit %d\n%s", code, out)
	}
	eventually("worker-0 proving membership again after its reboot", func() (string, bool) {
		out, code := c.run("verify", "--node-endpoint", worker)
		return out, code == 0
	})
	if out, _ := k("-n", "kube-system", "logs", "daemonset/join-service"); len(regexp.MustCompile(`"msg":"node admitted","caller":"worker-0@[^"]*","controlPlane":false,"disk":"[0-9a-f-]{36}"`).FindAllString(out, -1)) != 2 {
		t.Fatalf("worker-0 was not admitted twice with its disk:\n%s", out)
	}
	eventually("worker-0 Ready with its pods running again", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=STATUS:.status.phase,NODE:.spec.nodeName")
		nodes, _ := k("get", "node", "worker-0", "--no-headers")
		return out + nodes, err == nil && strings.Count(out, "Running") == 3 && strings.Contains(nodes, " Ready ")
	})
	// kube-proxy learns the restarted pods' endpoints, then the Service answers again.
	eventually("the Service answering after the reboot", get)

	// The control plane reboots: it has the cluster on its state disk but not the master secret, and waits.
	// recover attests it and hands it the master secret; the cluster is back with the data written before.
	if out, code := c.run("mini", "reboot", "control-plane-0"); code != 0 {
		t.Fatalf("mini reboot control-plane-0: exit %d\n%s", code, out)
	}
	if out, code := c.run("status"); code != 1 || !strings.Contains(out, "control-plane-0") {
		t.Fatalf("status while the control plane waits for recovery: exit %d\n%s", code, out)
	}
	out, code := c.run("recover", "--allow-dev-signed")
	if code != 0 || !strings.Contains(out, "Cluster recovered") {
		t.Fatalf("recover: exit %d\n%s", code, out)
	}
	if out, code := c.run("recover", "--allow-dev-signed"); code == 0 {
		t.Fatalf("a second recover succeeded:\n%s", out)
	}
	if out, err := k("get", "configmap", "marker", "-o", "jsonpath={.data.value}"); err != nil || out != marker {
		t.Fatalf("the ConfigMap written before the restart: %v %q", err, out)
	}
	// recover returns only when the cluster is ready as status checks it.
	if out, code := c.run("status"); code != 0 {
		t.Fatalf("status right after recover: exit %d\n%s", code, out)
	}
	state, _, _ = mini.ReadState(filepath.Join(c.ws, "constellation-mini")) // control-plane-0 has a new PID
	eventually("the Service answering after the recovery", get)
	// The key service's pod came back with its node and waited until the recovered bootstrapper handed it the
	// master secret again: a worker that reboots now gets its disk key from it.
	if out, code := c.run("mini", "reboot", "worker-0"); code != 0 {
		t.Fatalf("mini reboot worker-0 after the recovery: exit %d\n%s", code, out)
	}
	eventually("worker-0 a member again, with its disk key from the recovered key service", func() (string, bool) {
		out, code := c.run("verify", "--node-endpoint", worker)
		logs, _ := k("-n", "kube-system", "logs", "daemonset/key-service")
		return out + logs, code == 0 && regexp.MustCompile(`"msg":"data key issued".*"keyID":"disk-key/[0-9a-f-]{36}"`).MatchString(logs)
	})
	eventually("worker-0 Ready after its second reboot", func() (string, bool) {
		out, err := k("get", "node", "worker-0", "--no-headers")
		return out, err == nil && strings.Contains(out, " Ready ")
	})
	state, _, _ = mini.ReadState(filepath.Join(c.ws, "constellation-mini")) // worker-0 has a new PID

	// A node removed from the cluster is no longer a peer of the others: it reaches none of their pods.
	checkRemovedNodeCutOff(t, k, state, eventually)

	checkMaliciousJoins(t, c, k, eventually)
	// Now the provider runs workers that Kubernetes does not know (the refused ones; worker-1, deleted from
	// Kubernetes, too): no report can list every node.
	checkReportNamesUnknownNodes(t, c, "worker-2", "worker-3")

	if out, code := c.run("mini", "down"); code != 0 {
		t.Fatalf("mini down: exit %d\n%s", code, out)
	}
	if mini.NetworkInUse() {
		t.Error("node network left")
	}
	if left := nodeProcesses("kubelet|containerd|kube-apiserver"); len(left) > 0 {
		t.Errorf("Kubernetes processes of the nodes left: %s", strings.Join(left, ", "))
	}
}

// nodeProcesses lists the processes matching pattern (pgrep -f) that run in a mini node's cgroup (under
// /constellation/), as "PID command"; a test of another package may run its own API server meanwhile.
func nodeProcesses(pattern string) []string {
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	var left []string
	for _, pid := range strings.Fields(string(out)) {
		cg, err := os.ReadFile("/proc/" + pid + "/cgroup")
		if err != nil || !strings.Contains(string(cg), "/constellation/") {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		left = append(left, pid+" "+strings.ReplaceAll(strings.TrimSpace(string(cmd)), "\x00", " "))
	}
	return left
}

// checkMaliciousJoins has the infrastructure boot workers from images that are not the cluster's. One
// differs by a single byte: the node itself finds that the join service runs another image than it booted
// (PCR 4) and never presents itself. The other runs software that trusts any join service and presents its
// evidence: the join service refuses it and logs that PCR 4 differed. Neither gets a token, a key, a kubelet
// certificate or a place in the mesh.
func checkMaliciousJoins(t *testing.T, c cli, k func(...string) (string, error), eventually func(string, func() (string, bool))) {
	t.Helper()
	bad := oneByteDifferent(t, filepath.Join(c.ws, "other-image.squashfs"))
	if out, code := c.run("mini", "add-worker", "--image", bad); code != 0 || !strings.Contains(out, "worker-2 booted") {
		t.Fatalf("mini add-worker --image: exit %d\n%s", code, out)
	}
	console := func(node string) string {
		raw, _ := os.ReadFile(filepath.Join(c.ws, "constellation-mini", "nodes", node, "sandbox", "console.log"))
		return string(raw)
	}
	eventually("worker-2 refusing the join service, which runs another image (PCR 4)", func() (string, bool) {
		out := console("worker-2")
		return out, strings.Contains(out, "asking the join service to admit this node") && strings.Contains(out, "PCR 4")
	})

	rogueDir := t.TempDir()
	rogue := goBuild(t, rogueDir, "./roguenode", "roguenode", "CGO_ENABLED=0")
	smallImage(t, rogue, rogueDir)
	if out, code := c.run("mini", "add-worker", "--image", filepath.Join(rogueDir, "node-image.squashfs")); code != 0 || !strings.Contains(out, "worker-3 booted") {
		t.Fatalf("mini add-worker with the rogue image: exit %d\n%s", code, out)
	}
	eventually("the join service refusing worker-3, naming PCR 4", func() (string, bool) {
		out, _ := k("-n", "kube-system", "logs", "daemonset/join-service")
		return out, strings.Contains(out, `"msg":"join refused: the node's measurements differ from the cluster's","pcrs":[4],"node":"worker-3"`)
	})
	if out := console("worker-3"); !strings.Contains(out, `"msg":"join refused"`) || strings.Contains(out, "ADMITTED") {
		t.Fatalf("the rogue node's view:\n%s", out)
	}
	logs, _ := k("-n", "kube-system", "logs", "daemonset/join-service")
	for _, node := range []string{"worker-2", "worker-3"} {
		if strings.Contains(logs, `"msg":"node admitted","caller":"`+node) {
			t.Fatalf("%s was admitted:\n%s", node, logs)
		}
		if out, err := k("get", "node", node); err == nil || !strings.Contains(out, "NotFound") {
			t.Fatalf("%s has a Node object: %v\n%s", node, err, out)
		}
	}
}

// oneByteDifferent copies the built node image to path with one byte changed, in the padding after the
// squashfs filesystem (so the node still boots, from an image whose digest differs), and returns path.
func oneByteDifferent(t *testing.T, path string) string {
	t.Helper()
	src, _ := filepath.Abs("../../_out/node-image/node-image.squashfs")
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) < 96 || string(raw[:4]) != "hsqs" {
		t.Fatalf("%s is not a squashfs image", src)
	}
	used := int(binary.LittleEndian.Uint64(raw[40:48])) // the superblock's bytes_used
	if used >= len(raw) {
		t.Fatalf("%s has no padding after its %d bytes of filesystem to change", src, used)
	}
	raw[len(raw)-1] ^= 0x01
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// webPod is a replica of the web Deployment: its node, address and the PID of its etcd process (pods run in
// the host's PID namespace), whose network namespace is the pod's.
type webPod struct {
	node, ip string
	pid      int
}

// webPods lists the running web replicas.
func webPods(t *testing.T, k func(...string) (string, error)) []webPod {
	t.Helper()
	out, err := k("get", "pods", "-l", "app=web", "--field-selector=status.phase=Running", "-o", `jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		t.Fatalf("listing the web pods: %v\n%s", err, out)
	}
	pids := map[string]int{}
	raw, _ := exec.Command("pgrep", "-f", "data-dir=/tmp/etcd").Output()
	for _, f := range strings.Fields(string(raw)) {
		pid, _ := strconv.Atoi(f)
		addr, _ := exec.Command("nsenter", "-t", f, "-n", "ip", "-4", "-o", "addr", "show", "eth0").Output()
		if m := regexp.MustCompile(`inet ([0-9.]+)/`).FindSubmatch(addr); m != nil {
			pids[string(m[1])] = pid
		}
	}
	var pods []webPod
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && pids[f[1]] != 0 {
			pods = append(pods, webPod{node: f[0], ip: f[1], pid: pids[f[1]]})
		}
	}
	return pods
}

// logNodeConsoles logs the end of the provider's log and of every node's bootstrapper log, without the
// routine lines, for a failed test.
func logNodeConsoles(t *testing.T, ws string) {
	if raw, err := os.ReadFile(filepath.Join(ws, "constellation-mini", "provider.log")); err == nil {
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		t.Logf("provider (last %d lines):\n%s", min(25, len(lines)), strings.Join(lines[max(0, len(lines)-25):], "\n"))
	}
	logs, _ := filepath.Glob(filepath.Join(ws, "constellation-mini", "nodes", "*", "sandbox", "console.log"))
	for _, path := range logs {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var lines []string
		for _, l := range strings.Split(string(raw), "\n") {
			if l != "" && !strings.Contains(l, `"msg":"evidence issued"`) {
				lines = append(lines, l)
			}
		}
		t.Logf("%s (last %d lines):\n%s", filepath.Base(filepath.Dir(filepath.Dir(path))), min(25, len(lines)), strings.Join(lines[max(0, len(lines)-25):], "\n"))
	}
}

// node returns the node of the cluster named name.
func node(t *testing.T, state mini.State, name string) mini.NodeState {
	t.Helper()
	for _, n := range state.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no node %s in the provider's state", name)
	return mini.NodeState{}
}

// onNodes returns a web pod on each of two different nodes.
func onNodes(t *testing.T, pods []webPod, a, b string) (webPod, webPod) {
	t.Helper()
	var pa, pb *webPod
	for i := range pods {
		switch pods[i].node {
		case a:
			pa = &pods[i]
		case b:
			pb = &pods[i]
		}
	}
	if pa == nil || pb == nil {
		t.Fatalf("no web pods on both %s and %s: %+v", a, b, pods)
	}
	return *pa, *pb
}

// podCurl runs curl in the network namespace of the process pid (a pod's).
func podCurl(pid int, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "curl", "-sS", "-m", "5"}, args...)...).CombinedOutput()
	return string(out), err
}

// checkNetworkEncrypted captures every frame on the node network's bridge (on each node's port) while a pod on worker-0 writes a
// marker into a pod on worker-1 and reads it back (etcd's HTTP API), and while the API server fetches logs
// from and runs a command in a pod through the workers' kubelets. Between node addresses only WireGuard may
// cross; the marker must not appear. A request from this machine to a node's verification service carries a
// second marker in plain text, and the capture must see that one: otherwise it could not tell.
func checkNetworkEncrypted(t *testing.T, k func(...string) (string, error), state mini.State) {
	t.Helper()
	from, to := onNodes(t, webPods(t, k), "worker-0", "worker-1")
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	marker := "constellation-pod-marker-" + suffix
	control := "constellation-plain-control-" + suffix
	encoded := base64.StdEncoding.EncodeToString([]byte(marker)) // etcd's JSON API carries values in base64
	var nodes []netip.Addr
	var links []string // every node's port on the bridge: what each node sends and receives, whichever way it goes
	for _, n := range state.Nodes {
		nodes = append(nodes, netip.MustParseAddr(n.IP))
		links = append(links, n.HostLink)
	}
	tunnel := func(f wgmeshtest.Flow) bool {
		return f.Proto == unix.IPPROTO_UDP && (f.SrcPort == meshpeers.Port || f.DstPort == meshpeers.Port)
	}
	capture, err := wgmeshtest.StartCapture(links, [][]byte{[]byte(marker), []byte(encoded), []byte(control)}, nodes, tunnel)
	if err != nil {
		t.Fatal(err)
	}
	put := fmt.Sprintf(`{"key":%q,"value":%q}`, base64.StdEncoding.EncodeToString([]byte("marker")), encoded)
	out, err := podCurl(from.pid, "-X", "POST", "-d", put, "http://"+to.ip+":2379/v3/kv/put")
	if err == nil {
		out, err = podCurl(from.pid, "-X", "POST", "-d", fmt.Sprintf(`{"key":%q}`, base64.StdEncoding.EncodeToString([]byte("marker"))), "http://"+to.ip+":2379/v3/kv/range")
	}
	readBack := strings.Contains(out, encoded)
	logs, lerr := k("logs", "-l", "app=web", "--tail=5")
	execOut, eerr := k("exec", "deploy/web", "--", "/usr/local/bin/etcd", "--version")
	exec.Command("curl", "-s", "-m", "5", "http://"+node(t, state, "worker-0").IP+":9090/"+control).Run()
	time.Sleep(500 * time.Millisecond) // the last frames reach the bridge
	st := capture.Stop()
	if err != nil || !readBack {
		t.Fatalf("pod on worker-0 writing to and reading from the pod on worker-1: %v: %s", err, out)
	}
	if lerr != nil || eerr != nil || !strings.Contains(execOut, "etcd Version") {
		t.Fatalf("logs and exec through the kubelets: %v %v\n%s\n%s", lerr, eerr, logs, execOut)
	}
	t.Logf("capture on the ports of %s (%s): %d frames, %d WireGuard packets between nodes", mini.BridgeName, strings.Join(links, ", "), st.Frames, st.Tunnel)
	if !st.Found[2] {
		t.Fatal("the capture did not see the plain-text control request: it could not tell plain text either")
	}
	if st.Found[0] || st.Found[1] {
		t.Fatal("the pod-to-pod marker crossed the node network in plain text")
	}
	if u := st.Unexpected(); len(u) > 0 {
		t.Fatalf("traffic between nodes outside the tunnel:\n%s", strings.Join(u, "\n"))
	}
	if st.Tunnel == 0 {
		t.Fatal("no WireGuard traffic between nodes during the transfer")
	}
}

// checkRemovedNodeCutOff deletes worker-1 from the cluster: the other nodes drop it as a peer, and it
// reaches neither a pod on worker-0 nor any API server any more, while before it did: not at the control-plane
// nodes' addresses, and not through its own endpoint of the API (the one its kubelet uses), although the host
// offers it a way around the mesh (a relay on the host's address to an API server, which the API servers
// accept from there: what a load balancer on the host would be).
func checkRemovedNodeCutOff(t *testing.T, k func(...string) (string, error), state mini.State, eventually func(string, func() (string, bool))) {
	t.Helper()
	removed := strconv.Itoa(node(t, state, "worker-1").PID)
	fromRemoved := func(url string, extra ...string) (string, error) {
		out, err := exec.Command("nsenter", append(append([]string{"-t", removed, "-n", "curl", "-sS", "-m", "3"}, extra...), url)...).CombinedOutput()
		return string(out), err
	}
	var apiServers []string
	for _, n := range state.Nodes {
		if n.Role == "control-plane" {
			apiServers = append(apiServers, "https://"+n.IP+":6443/healthz")
		}
	}
	// Before its removal, worker-1 reaches a ready pod on worker-0 (through the tunnel), and the API through
	// its own endpoint.
	var podURL string
	eventually("worker-1 reaching a ready web pod on worker-0", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "-o", `jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP} {.status.containerStatuses[0].ready}{"\n"}{end}`)
		if err != nil {
			return out, false
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "worker-0" && f[2] == "true" {
				podURL = "http://" + f[1] + ":2379/version"
				got, err := fromRemoved(podURL)
				return out + got, err == nil
			}
		}
		return out, false
	})
	eventually("worker-1 reaching the API through its own endpoint", func() (string, bool) {
		out, err := fromRemoved(nodeAPIEndpoint, "-k")
		return out, err == nil && out == "ok"
	})
	// The host's way around the mesh: a relay on its address to the first API server that answers.
	relay := net.JoinHostPort(mini.Gateway.Addr().String(), "16443")
	for _, u := range apiServers {
		if exec.Command("curl", "-sk", "-m", "3", u).Run() == nil {
			forward(t, relay, strings.TrimSuffix(strings.TrimPrefix(u, "https://"), "/healthz"))
			break
		}
	}
	if out, err := k("delete", "node", "worker-1"); err != nil {
		t.Fatalf("deleting worker-1: %v: %s", err, out)
	}
	eventually("worker-1 cut off from the pods of worker-0", func() (string, bool) {
		out, err := fromRemoved(podURL)
		return out, err != nil
	})
	for _, u := range apiServers {
		if out, err := fromRemoved(u, "-k"); err == nil {
			t.Fatalf("the removed worker still reaches the API server %s: %s", u, out)
		}
	}
	// The relay answers the removed worker: the way around the mesh is there (and would carry an endpoint that
	// took it); its own endpoint, which reaches API servers only through the mesh, does not.
	eventually("the host's relay answering the removed worker", func() (string, bool) {
		out, err := fromRemoved("https://"+relay+"/healthz", "-k")
		return out, err == nil && out == "ok"
	})
	if out, err := fromRemoved(nodeAPIEndpoint, "-k"); err == nil {
		t.Fatalf("the removed worker still reaches the API through its own endpoint: %s", out)
	}
}

// nodeAPIEndpoint is the readiness URL of a node's own endpoint of the API (package apiproxy), inside the
// node's network namespace.
var nodeAPIEndpoint = "https://" + apiproxy.Address.String() + "/readyz"

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

// TestMiniControlPlanes boots 3 control-plane nodes: the others join through the join service as
// control-plane nodes (the join service hands the shared PKI only to a node the provider names a control-plane
// node), run their own API server and etcd member, and get a join service and a key service of their own (the
// master secret from another key service, by attestation). No control-plane node is special: with the first
// one stopped, a new worker joins and gets its disk key, and the first one rejoins by itself.
func TestMiniControlPlanes(t *testing.T) {
	// The master secret of this cluster is held by an external KMS (a real pykmip-server): the workspace
	// holds it only wrapped, and the first node unwraps it itself.
	cl := startCluster(t, 3, 0, withExternalKMS)
	if raw, err := os.ReadFile(filepath.Join(cl.c.ws, "constellation-mastersecret.json")); err != nil || !bytes.Contains(raw, []byte(`"wrapped"`)) || bytes.Contains(raw, []byte(`"key"`)) {
		t.Fatalf("the master secret file is not wrapped only: %v\n%s", err, raw)
	}
	cl.eventually("the control-plane nodes Ready", func() (string, bool) {
		out, err := cl.k("get", "nodes", "--no-headers", "-l", "node-role.kubernetes.io/control-plane")
		return out, err == nil && strings.Count(out, " Ready ") == 3
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
		for _, n := range []string{"control-plane-1", "control-plane-2"} {
			for _, svc := range []string{"join-service", "key-service"} {
				if !regexp.MustCompile(svc + `-\S+\s+Running\s+` + n).MatchString(out) {
					return out, false
				}
			}
		}
		return out, true
	})
	// The second API server serves the cluster.
	state, _, _ := mini.ReadState(filepath.Join(cl.c.ws, "constellation-mini"))
	cl.eventually("the API server on control-plane-1 ready", func() (string, bool) {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(state.Nodes[0].PID), "-n", "curl", "-sk", "-m", "5", "https://"+mini.NodeAddr(1).String()+":6443/readyz").CombinedOutput()
		return string(out), err == nil && string(out) == "ok"
	})
	for i := range 3 {
		if out, code := cl.c.run("verify", "--node-endpoint", mini.NodeAddr(i).String()+":9090"); code != 0 {
			t.Fatalf("verify node %d: exit %d\n%s", i, code, out)
		}
	}
	checkNoSpecialControlPlane(t, cl)

	// All control-plane nodes go down together and start again: each has the cluster's state on its disk and
	// waits (no etcd has a quorum alone, no join service answers). recover attests each and hands it what opens
	// its disk; the cluster is back, with the data written before, and the meshes find each other again from
	// what they kept.
	marker := "both-control-planes-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if out, err := cl.k("create", "configmap", "marker", "--from-literal=value="+marker); err != nil {
		t.Fatalf("create configmap: %v\n%s", err, out)
	}
	controlPlanes := []string{"control-plane-0", "control-plane-1", "control-plane-2"}
	for _, n := range controlPlanes {
		if out, code := cl.c.run("mini", "stop", n); code != 0 {
			t.Fatalf("mini stop %s: exit %d\n%s", n, code, out)
		}
	}
	for _, n := range controlPlanes {
		if out, code := cl.c.run("mini", "reboot", n); code != 0 {
			t.Fatalf("mini reboot %s: exit %d\n%s", n, code, out)
		}
	}
	out, code := cl.c.run("recover", "--allow-dev-signed")
	if code != 0 || !strings.Contains(out, "control-plane-1 unlocked its state disk") || !strings.Contains(out, "Cluster recovered") {
		t.Fatalf("recover: exit %d\n%s", code, out)
	}
	if out, err := cl.k("get", "configmap", "marker", "-o", "jsonpath={.data.value}"); err != nil || out != marker {
		t.Fatalf("the ConfigMap written before both control planes restarted: %v %q", err, out)
	}
	// recover returns only when the cluster is ready as status checks it.
	if out, code := cl.c.run("status"); code != 0 {
		t.Fatalf("status right after recover: exit %d\n%s", code, out)
	}

	// The provider crashes (killed without warning, as a power loss of the host would): the next mini up
	// cleans up, boots the nodes again with their state disks and recovers the cluster with its data by itself,
	// and returns when it is ready.
	state, _, err := mini.ReadState(filepath.Join(cl.c.ws, "constellation-mini"))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(state.DaemonPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for state.DaemonAlive() {
		time.Sleep(10 * time.Millisecond)
	}
	out, code = cl.c.run("mini", "up", "--allow-dev-signed")
	if code != 0 || !strings.Contains(out, "comes back with its data") || !strings.Contains(out, "Cluster recovered") {
		t.Fatalf("mini up after the provider crashed: exit %d\n%s", code, out)
	}
	if out, code := cl.c.run("status"); code != 0 {
		t.Fatalf("status right after mini up recovered the crashed cluster: exit %d\n%s", code, out)
	}
	if out, err := cl.k("get", "configmap", "marker", "-o", "jsonpath={.data.value}"); err != nil || out != marker {
		t.Fatalf("the ConfigMap written before the provider crashed: %v %q", err, out)
	}
	// The restarted provider booted the nodes the cluster had, not the configuration's three control-plane
	// nodes: worker-0, added after the cluster was created, is back too, with its disk.
	state, _, err = mini.ReadState(filepath.Join(cl.c.ws, "constellation-mini"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range state.Nodes {
		names = append(names, n.Name)
	}
	if got := strings.Join(names, " "); got != "control-plane-0 control-plane-1 control-plane-2 worker-0" {
		t.Fatalf("nodes booted after the provider crashed: %s, want the three control-plane nodes and worker-0", got)
	}
	cl.eventually("worker-0 Ready again after the provider crashed", func() (string, bool) {
		out, err := cl.k("get", "node", "worker-0", "--no-headers")
		return out, err == nil && strings.Contains(out, " Ready ")
	})

	// mini down removes the cluster (its nodes' state disks with it), keeps the configuration and the master
	// secret, and the next mini up creates a new cluster, initialised afresh (with the same master secret, so
	// the same cluster ID), ready when it returns, without the removed cluster's data.
	if out, code := cl.c.run("mini", "down"); code != 0 {
		t.Fatalf("mini down: exit %d\n%s", code, out)
	}
	for _, f := range []string{"constellation-mini", "constellation-admin.conf", "constellation-state.yaml", "constellation-init-secret"} {
		if _, err := os.Stat(filepath.Join(cl.c.ws, f)); !os.IsNotExist(err) {
			t.Errorf("mini down left %s (%v)", f, err)
		}
	}
	for _, f := range []string{"constellation-conf.yaml", "constellation-mastersecret.json"} {
		if _, err := os.Stat(filepath.Join(cl.c.ws, f)); err != nil {
			t.Errorf("mini down removed %s: %v", f, err)
		}
	}
	if out, code := cl.c.run("status"); code != 1 || !strings.Contains(out, "constellation mini up") {
		t.Fatalf("status after mini down: exit %d\n%s", code, out)
	}
	out, code = cl.c.run("mini", "up", "--allow-dev-signed", "--control-planes", "1")
	if code != 0 || !strings.Contains(out, "Kubernetes initialised") {
		t.Fatalf("mini up after mini down: exit %d\n%s", code, out)
	}
	if out, code := cl.c.run("status"); code != 0 {
		t.Fatalf("status of the new cluster: exit %d\n%s", code, out)
	}
	if out, err := cl.k("get", "configmap", "marker"); err == nil || !strings.Contains(out, "NotFound") {
		t.Fatalf("the new cluster has the removed cluster's data: %v\n%s", err, out)
	}
}

// checkNoSpecialControlPlane stops the first control-plane node of a cluster of three: a new worker still joins
// through another control-plane node and gets its disk key from another key service; its kubelet's credentials
// can neither create nor read a disk binding. The first node then starts again and rejoins by itself, gets the
// master secret again by attestation, and its key service serves again.
func checkNoSpecialControlPlane(t *testing.T, cl *cluster) {
	t.Helper()
	ws := filepath.Join(cl.c.ws, "constellation-mini")
	console := func(node string) string {
		raw, _ := os.ReadFile(filepath.Join(ws, "nodes", node, "sandbox", "console.log"))
		return string(raw)
	}
	for _, n := range []string{"control-plane-1", "control-plane-2"} {
		cl.eventually(n+" getting the master secret from a key service", func() (string, bool) {
			out := console(n)
			return out, strings.Contains(out, "master secret received from a key service of the control plane")
		})
	}
	if out, code := cl.c.run("mini", "stop", "control-plane-0"); code != 0 {
		t.Fatalf("mini stop control-plane-0: exit %d\n%s", code, out)
	}
	// The administrator's kubeconfig names the first node's API server: ask the second's.
	k := func(args ...string) (string, error) {
		return cl.k(append([]string{"--server", "https://" + mini.NodeAddr(1).String() + ":6443"}, args...)...)
	}
	start := time.Now()
	if out, code := cl.c.run("mini", "add-worker"); code != 0 || !strings.Contains(out, "worker-0 booted") {
		t.Fatalf("mini add-worker with the first control-plane node stopped: exit %d\n%s", code, out)
	}
	cl.eventually("worker-0 Ready, joined through another control-plane node", func() (string, bool) {
		out, err := k("get", "node", "worker-0", "--no-headers")
		return out + console("worker-0"), err == nil && strings.Contains(out, " Ready ") && strings.Contains(console("worker-0"), "state disk unlocked")
	})
	t.Logf("worker-0 joined with control-plane-0 stopped: %s", time.Since(start).Round(time.Second))
	state, _, err := mini.ReadState(ws)
	if err != nil {
		t.Fatal(err)
	}
	// The attack: the worker's kubelet credentials (what a compromised worker holds) write a disk binding.
	worker := node(t, state, "worker-0")
	for _, args := range [][]string{
		{"create", "configmap", "disk-0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", "--from-literal=node=worker-0"},
		{"get", "configmaps"},
	} {
		cmd := append([]string{"-t", strconv.Itoa(worker.PID), "-m", "-n", "--", "kubectl", "--kubeconfig", "/etc/kubernetes/kubelet.conf", "-n", keyservice.DiskBindingsNamespace}, args...)
		out, err := exec.Command("nsenter", cmd...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "forbidden") {
			t.Fatalf("a worker's kubelet credentials: kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, err := k("-n", keyservice.DiskBindingsNamespace, "get", "configmaps", "-o", "custom-columns=NAME:.metadata.name,NODE:.data.node,IMMUTABLE:.immutable", "--no-headers")
	if err != nil || !regexp.MustCompile(`disk-\S+\s+worker-0\s+true`).MatchString(out) || strings.Count(out, "disk-") != 4 {
		t.Fatalf("the shared disk bindings: %v\n%s", err, out)
	}

	// The first node starts again: it rejoins through another control-plane node by itself (no recover),
	// gets its disk key and the master secret again, and its key service serves.
	start = time.Now()
	if out, code := cl.c.run("mini", "reboot", "control-plane-0"); code != 0 {
		t.Fatalf("mini reboot control-plane-0: exit %d\n%s", code, out)
	}
	cl.eventually("control-plane-0 rejoined, with the master secret for its key service", func() (string, bool) {
		out := console("control-plane-0")
		return out, strings.Contains(out, "state disk unlocked") && strings.Contains(out, "master secret received from a key service of the control plane")
	})
	// Its node's state in the API is stale for a while; its key service's own log (from its kubelet) is not.
	cl.eventually("control-plane-0's key service serving again", func() (string, bool) {
		pod, err := k("-n", "kube-system", "get", "pods", "--field-selector", "spec.nodeName=control-plane-0", "-l", "app.kubernetes.io/name=key-service", "-o", "jsonpath={.items[0].metadata.name}")
		if err != nil {
			return pod, false
		}
		out, err := k("-n", "kube-system", "logs", pod)
		return out, err == nil && strings.Contains(out, "key service serving over mutual aTLS")
	})
	t.Logf("control-plane-0 rejoined after it was stopped, its key service serving: %s", time.Since(start).Round(time.Second))
	cl.eventually("status: every node attested and Ready, every service ready", func() (string, bool) {
		out, code := cl.c.run("status")
		return out, code == 0
	})
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
func startCluster(t *testing.T, controlPlanes, workers int, beforeUp ...func(c cli)) *cluster {
	t.Helper()
	requireMachine(t)
	imageDir, _ := filepath.Abs("../../_out/node-image")
	kubectl, _ := filepath.Abs("../../_out/kubernetes/bin/kubectl")
	if _, err := os.Stat(filepath.Join(imageDir, "node-image.json")); err != nil {
		t.Skip("the node image is not built (make node-image)")
	}
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	if out, code := c.run("config", "generate", "mini", "--image-dir", imageDir, "--allow-dev-signed", "--control-planes", strconv.Itoa(controlPlanes), "--workers", strconv.Itoa(workers)); code != 0 {
		t.Fatalf("config generate: %d\n%s", code, out)
	}
	for _, f := range beforeUp {
		f(c)
	}
	start := time.Now()
	out, code := c.run("mini", "up", "--allow-dev-signed")
	t.Cleanup(func() {
		if t.Failed() {
			logNodeConsoles(t, c.ws)
		}
		c.run("mini", "down")
	})
	if code != 0 {
		t.Fatalf("mini up: exit %d\n%s", code, out)
	}
	t.Logf("mini up with Kubernetes init (%d control planes, %d workers): %s", controlPlanes, workers, time.Since(start).Round(time.Second))
	// mini up returns only when the cluster is ready as status checks it.
	if out, code := c.run("status"); code != 0 {
		t.Fatalf("status right after mini up: exit %d\n%s", code, out)
	}
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

// fileContains reports whether the sparse file contains needle. It reads only the file's data, not its holes
// (which read as zeros), in chunks that overlap by the needle's length.
func fileContains(path string, needle []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return false, nil // only holes from here on
		}
		if err != nil {
			return false, err
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return false, err
		}
		for pos := data; pos < hole; pos += int64(len(buf) - len(needle)) {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if bytes.Contains(buf[:n], needle) {
				return true, nil
			}
			if err != nil && err != io.EOF {
				return false, err
			}
			if pos+int64(n) >= hole {
				break
			}
		}
		off = hole
	}
	return false, nil
}

func TestFileContains(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	needle := []byte("needle-in-a-sparse-file")
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if found, err := fileContains(path, needle); err != nil || found {
		t.Fatalf("empty sparse file: %v, %v", found, err)
	}
	// Across the boundary of two 4 MiB chunks, deep in the file.
	if _, err := f.WriteAt(needle, 512<<20+4<<20-5); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if found, err := fileContains(path, needle); err != nil || !found {
		t.Fatalf("needle across a chunk boundary: %v, %v", found, err)
	}
}

// withExternalKMS starts a real KMIP server, creates a key-encryption key on it and the wrapped master secret
// in the workspace, and names the KMS in constellation-conf.yaml. The server listens on loopback; the nodes
// reach it at the node network's gateway, through a forwarder the test runs once that address exists.
func withExternalKMS(c cli) {
	t := c.t
	gateway := mini.Gateway.Addr()
	srv := kmiptest.StartForTestWithIPs(t, net.IP(gateway.AsSlice()))
	for name, data := range map[string][]byte{"kms-ca.pem": srv.ServerCA, "client.pem": srv.ClientCert, "client-key.pem": srv.ClientKey} {
		if err := os.WriteFile(filepath.Join(c.ws, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	kmsConf := func(endpoint, keyID string) string {
		return "kmip:\n  endpoint: " + endpoint + "\n  serverCA: kms-ca.pem\n  clientCert: client.pem\n  clientKey: client-key.pem\n  keyID: \"" + keyID + "\"\n"
	}
	kmsFile := filepath.Join(c.ws, "kms.yaml")
	os.WriteFile(kmsFile, []byte(kmsConf(srv.Endpoint, "")), 0o600)
	out, code := c.run("kms", "create-kek", "--kms-config", kmsFile)
	m := regexp.MustCompile(`Created key-encryption key (\S+) on`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("kms create-kek: exit %d\n%s", code, out)
	}
	os.WriteFile(kmsFile, []byte(kmsConf(srv.Endpoint, m[1])), 0o600)
	if out, code := c.run("kms", "init", "--kms-config", kmsFile); code != 0 {
		t.Fatalf("kms init: exit %d\n%s", code, out)
	}
	_, port, _ := net.SplitHostPort(srv.Endpoint)
	nodeEndpoint := net.JoinHostPort(gateway.String(), port)
	f, err := os.OpenFile(filepath.Join(c.ws, "constellation-conf.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(f, "kms:\n  kmip:\n    endpoint: "+nodeEndpoint+"\n    serverCA: kms-ca.pem\n    clientCert: client.pem\n    clientKey: client-key.pem\n    keyID: \""+m[1]+"\"\n")
	f.Close()
	forward(t, nodeEndpoint, srv.Endpoint)
}

// forward relays TCP connections from listen, as soon as that address exists on this machine, to target.
func forward(t *testing.T, listen, target string) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		var ln net.Listener
		for {
			var err error
			if ln, err = net.Listen("tcp", listen); err == nil {
				break
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		go func() { <-stop; ln.Close() }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
}
