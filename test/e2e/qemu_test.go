package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/meshagent"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
	"github.com/constellation-dev/constellation/internal/provider/qemu/guest"
	"github.com/constellation-dev/constellation/internal/provider/qemu/qemutest"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
	"golang.org/x/sys/unix"
)

// qemuImageDir is where 'make node-image' writes the bootable disk image.
const qemuImageDir = "../../_out/node-image"

func requireQEMU(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the QEMU provider needs root")
	}
	if err := bootimage.QEMUPrerequisites(); err != nil {
		t.Skip(err)
	}
	for _, tool := range []string{"ip", "nsenter", "swtpm_setup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed; run scripts/setup.sh", tool)
		}
	}
	for _, f := range []string{bootimage.ImageFile, bootimage.MeasurementsFile + ".sigstore.json"} {
		if _, err := os.Stat(filepath.Join(qemuImageDir, f)); err != nil {
			t.Skipf("no signed disk image (%v); build it with 'make node-image'", err)
		}
	}
	qemutest.LockProvider(t)
	stopOrphans(t)
	// A network nobody holds is a killed run's leftover, which the provider removes; a held one is a cluster.
	if qemu.NetworkOwned() {
		t.Fatalf("a QEMU cluster runs on this machine (its provider holds namespace %s) outside the tests; stop it first", qemu.Netns)
	}
}

// qemuLeftovers fails the test if a machine, a TPM or the network of the provider in dir is left.
func qemuLeftovers(t *testing.T, state qemu.State) {
	t.Helper()
	if state.DaemonAlive() {
		t.Error("provider still running")
	}
	for _, n := range state.Nodes {
		if syscall.Kill(n.PID, 0) == nil {
			t.Errorf("machine %s (pid %d) still running", n.Name, n.PID)
		}
	}
	if qemu.NetworkInUse() {
		t.Errorf("node network left (namespace %s or link %s)", qemu.Netns, qemu.HostLink)
	}
}

// A QEMU machine booted from the node's disk image under UEFI firmware enrols its attestation key and is
// attested with the generated qemu-vtpm policy: the real firmware's and systemd-stub's measurements, replayed
// from the firmware's own event log. ATTACK: the host boots a machine from an image that differs in one byte
// of the UKI (its .osrel section): the operator's apply refuses to boot it (its signed measurements are for
// another digest), and when the host boots it anyway, verify refuses it and names the PCRs that differ; one
// that differs in a byte of its root refuses to boot.
func TestQEMUNodeAttests(t *testing.T) {
	requireQEMU(t)
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	if out, code := c.run("config", "generate", "qemu", "--image-dir", qemuImageDir, "--allow-dev-signed"); code != 0 {
		t.Fatalf("config generate qemu: exit %d\n%s", code, out)
	}
	conf, err := config.Load(filepath.Join(c.ws, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Attestation.Variant != "qemu-vtpm" || len(conf.Attestation.Measurements) != 9 {
		t.Fatalf("generated configuration: variant %s, measurements %v", conf.Attestation.Variant, conf.Attestation.Measurements.Indices())
	}

	start := time.Now()
	out, code := c.run("apply", "--skip-init", "--allow-dev-signed")
	dir := filepath.Join(c.ws, "constellation-qemu")
	state, _, _ := qemu.ReadState(dir)
	t.Cleanup(func() {
		c.run("terminate", "--yes")
		qemuLeftovers(t, state)
	})
	if code != 0 {
		log, _ := os.ReadFile(filepath.Join(dir, "provider.log"))
		t.Fatalf("apply: exit %d\n%s\nprovider log:\n%s", code, out, log)
	}
	t.Logf("power-on to attested: %s", time.Since(start).Round(time.Second))
	for _, want := range []string{"UEFI measured boot", "control-plane-0 verified: control-plane-0", "QEMU cluster up: 1 machine(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %q:\n%s", want, out)
		}
	}
	node := qemu.NodeAddr(0).String()
	out, code = c.run("verify", "--node-endpoint", node+":9090", "-o", "json")
	var res struct {
		Node     string `json:"node"`
		Variant  string `json:"variant"`
		Verified bool   `json:"verified"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.Verified || res.Node != "control-plane-0" || res.Variant != "qemu-vtpm" {
		t.Fatalf("verify control-plane-0: exit %d\n%s", code, out)
	}
	if out, code := c.run("status"); code != 0 || !strings.Contains(out, "attested (control-plane-0)") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if out, code := c.run("terminate", "--yes"); code != 0 {
		t.Fatalf("terminate: exit %d\n%s", code, out)
	}
	qemuLeftovers(t, state)

	// ATTACK: the host boots the machine from an image with one byte of the UKI changed. The machine boots
	// (nothing checks the UKI without Secure Boot), but its measurements are not the image's.
	rogue := filepath.Join(t.TempDir(), bootimage.ImageFile)
	raw, err := os.ReadFile(filepath.Join(qemuImageDir, bootimage.ImageFile))
	if err != nil {
		t.Fatal(err)
	}
	osrel := []byte(`NAME="Constellation node"`)
	if bytes.Count(raw, osrel) != 1 {
		t.Fatalf("the UKI's .osrel appears %d times in the image, want once", bytes.Count(raw, osrel))
	}
	raw[bytes.Index(raw, osrel)+len(`NAME="`)] = 'K'
	if err := os.WriteFile(rogue, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	raw = nil
	digest, err := measuredboot.DigestFile(rogue)
	if err != nil {
		t.Fatal(err)
	}
	// The host's workspace: the genuine policy and its signed measurements, the rogue image. The operator's
	// apply refuses it before anything boots: the signature binds the measurements to the genuine image's
	// digest. So the host runs the provider itself.
	host := cli{t: t, bin: c.bin, ws: t.TempDir()}
	for _, f := range []string{bootimage.MeasurementsFile, bootimage.MeasurementsFile + signed.BundleSuffix} {
		raw, err := os.ReadFile(filepath.Join(qemuImageDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(filepath.Dir(rogue), f), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rogueConf := *conf
	q := *conf.Provider.QEMU
	q.Image, q.ImageDigest = rogue, fmt.Sprintf("sha256:%x", digest)
	rogueConf.Provider.QEMU = &q
	if err := rogueConf.Write(filepath.Join(host.ws, config.FileName), false); err != nil {
		t.Fatal(err)
	}
	hostDir := filepath.Join(host.ws, "constellation-qemu")
	out, code = host.run("apply", "--allow-dev-signed")
	if _, err := os.Stat(hostDir); code != 1 || !strings.Contains(out, "not for image") || !os.IsNotExist(err) {
		t.Fatalf("apply of the rogue image: exit %d, want 1 before anything boots (%v)\n%s", code, err, out)
	}
	state = hostileProvider(t, host)
	// The operator's verify, with the operator's configuration, refuses the node and names the PCRs.
	akCA := filepath.Join(hostDir, "ak-ca", "ca-cert.pem")
	deadline := time.Now().Add(20 * time.Minute)
	for {
		out, code = c.run("verify", "--node-endpoint", node+":9090", "--ak-ca", akCA)
		if strings.Contains(out, "measurements do not match") || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Second)
	}
	if code != 1 || !strings.Contains(out, "measurements do not match the policy (PCRs 4, 11)") {
		t.Fatalf("verify of the rogue machine: exit %d, want 1 naming PCRs 4 and 11\n%s", code, out)
	}
	t.Logf("rogue machine refused:\n%s", out)
	if out, code := host.run("terminate", "--yes"); code != 0 {
		t.Fatalf("terminate: exit %d\n%s", code, out)
	}
	qemuLeftovers(t, state)

	// ATTACK: the host boots the machine from an image whose root filesystem differs in one byte. The node
	// refuses to boot (dm-verity) and powers off, saying so on its console.
	if raw, err = os.ReadFile(filepath.Join(qemuImageDir, bootimage.ImageFile)); err != nil {
		t.Fatal(err)
	}
	// The second GPT partition entry (LBA 2 on, 128 bytes each) is the root; its first LBA at offset 32.
	rootStart := int(binary.LittleEndian.Uint64(raw[2*512+128+32:])) * 512
	raw[rootStart+1<<20] ^= 0xff
	if err := os.WriteFile(rogue, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	raw = nil
	if digest, err = measuredboot.DigestFile(rogue); err != nil {
		t.Fatal(err)
	}
	q.ImageDigest = fmt.Sprintf("sha256:%x", digest)
	if err := rogueConf.Write(filepath.Join(host.ws, config.FileName), true); err != nil {
		t.Fatal(err)
	}
	state = hostileProvider(t, host)
	m := state.Nodes[0]
	for deadline := time.Now().Add(20 * time.Minute); processAlive(m.PID) && time.Now().Before(deadline); {
		time.Sleep(2 * time.Second)
	}
	console, _ := os.ReadFile(m.Console)
	if processAlive(m.PID) || !bytes.Contains(console, []byte("REFUSING TO BOOT")) {
		t.Fatalf("the machine with a changed root: running %v, want powered off with the refusal on its console:\n%s", processAlive(m.PID), console)
	}
}

// hostileProvider runs the QEMU provider of host's workspace as the host can, without the operator's apply
// and its checks, and returns its state once its machines run; the test's cleanup removes them.
func hostileProvider(t *testing.T, host cli) qemu.State {
	t.Helper()
	dir := filepath.Join(host.ws, "constellation-qemu")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "provider.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	daemon := exec.Command(host.bin, "qemu", "daemon", "--workspace", host.ws, "--init-secret-hash", strings.Repeat("0", 64))
	daemon.Stdout, daemon.Stderr = logFile, logFile
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { daemon.Wait(); close(exited) }()
	var running qemu.State
	t.Cleanup(func() {
		host.run("terminate", "--yes")
		daemon.Process.Kill()
		<-exited
		qemuLeftovers(t, running)
	})
	for {
		s, ok, _ := qemu.ReadState(dir)
		if ok && s.Phase == qemu.PhaseRunning {
			running = s
			return s
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("the provider stopped before its machines ran:\n%s", log)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// processAlive tells whether the process pid exists (and is no zombie).
func processAlive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !bytes.Contains(raw, []byte(") Z "))
}

// A Kubernetes cluster of QEMU machines (1 control plane, 1 worker) under UEFI firmware: apply attests both
// machines with the generated qemu-vtpm policy, initialises Kubernetes on the control plane over aTLS, and the
// worker joins through the join service; both are Ready, and the CLI's verify passes for each as a member of
// the cluster. Each node's state disk is LUKS2 with integrity and its mesh kernel WireGuard: their logs say so,
// and each node's kernel says its mesh interface is a WireGuard link (not the TUN device of a userspace
// implementation). ATTACK: the host reads the worker's state disk: a pod on the worker writes a marker under
// /var (its log, on the node's state disk), and the marker never appears in the disk's file on the host.
// ATTACK: the host snoops the node network (its bridge) while a pod on the control plane writes a marker into
// a pod on the worker and reads it back: the marker never crosses in plain text, nor does a pod address in a
// packet's header; between the nodes there is only WireGuard (transport data on the mesh port). A request from
// the host to a node carries a second marker in plain text, and the same capture sees that one.
//
// Under TCG this takes a long time (tens of minutes): it runs from 'make e2e-qemu' (which sets
// CONSTELLATION_E2E_QEMU_CLUSTER), not with the other end-to-end tests.
func TestQEMUCluster(t *testing.T) {
	if os.Getenv("CONSTELLATION_E2E_QEMU_CLUSTER") == "" {
		t.Skip("a cluster of emulated machines takes tens of minutes: run it with 'make e2e-qemu' (CONSTELLATION_E2E_QEMU_CLUSTER=1)")
	}
	requireQEMU(t)
	kubectl, _ := filepath.Abs("../../_out/kubernetes/bin/kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Skipf("no kubectl (%v); build it with 'make kubernetes'", err)
	}
	bins := t.TempDir()
	c := cli{t: t, bin: goBuild(t, bins, "github.com/constellation-dev/constellation/cmd/constellation", "constellation"), ws: t.TempDir()}
	start := time.Now()
	if out, code := c.run("config", "generate", "qemu", "--image-dir", qemuImageDir, "--allow-dev-signed", "--workers", "1"); code != 0 {
		t.Fatalf("config generate qemu: exit %d\n%s", code, out)
	}
	out, code := c.run("apply", "--allow-dev-signed")
	dir := filepath.Join(c.ws, "constellation-qemu")
	state, _, _ := qemu.ReadState(dir)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range state.Nodes {
				t.Logf("console of %s:\n%s", n.Name, tailFile(n.Console, 60))
			}
		}
		c.run("terminate", "--yes")
		qemuLeftovers(t, state)
	})
	if code != 0 {
		log, _ := os.ReadFile(filepath.Join(dir, "provider.log"))
		t.Fatalf("apply: exit %d\n%s\nprovider log:\n%s", code, out, log)
	}
	t.Logf("config generate to cluster ready (1 control plane, 1 worker, %s): %s\n%s", state.Nodes[0].Accel, time.Since(start).Round(time.Second), out)
	if out, code := c.run("status"); code != 0 { // exit 0: every node attested as a member and Ready
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	for _, n := range state.Nodes {
		out, code := c.run("verify", "--node-endpoint", n.IP+":9090", "-o", "json")
		var res struct {
			Node     string `json:"node"`
			Variant  string `json:"variant"`
			Verified bool   `json:"verified"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.Verified || res.Node != n.Name || res.Variant != "qemu-vtpm" {
			t.Fatalf("verify %s: exit %d\n%s", n.Name, code, out)
		}
		console, err := os.ReadFile(n.Console)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"encryption":"luks2"`, `"backend":"kernel"`} {
			if !bytes.Contains(console, []byte(want)) {
				t.Errorf("the console of %s lacks %s", n.Name, want)
			}
		}
	}

	// ATTACK: the host reads the worker's state disk. The pod's container writes the marker to its log, which
	// the node keeps under /var/log/pods on the state disk (the marker is in the container's arguments: the
	// node image's images have no shell).
	kubeconfig := filepath.Join(c.ws, "constellation-admin.conf")
	k := func(args ...string) (string, error) {
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		return string(out), err
	}
	marker := "constellation-qemu-disk-marker-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"marker"},"spec":{"nodeName":"worker-0","restartPolicy":"Never",`+
		`"containers":[{"name":"marker","image":"registry.k8s.io/kube-proxy:%s","imagePullPolicy":"Never","command":["/usr/local/bin/kube-proxy","--%s"]}]}}`,
		kubeProxyVersion(t), marker)
	kApply := func(manifest string) {
		t.Helper()
		apply := exec.Command(kubectl, "--kubeconfig", kubeconfig, "apply", "-f", "-")
		apply.Stdin = strings.NewReader(manifest)
		if out, err := apply.CombinedOutput(); err != nil {
			t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, manifest)
		}
	}
	kApply(pod)
	for deadline := time.Now().Add(20 * time.Minute); ; {
		out, _ := k("logs", "marker")
		if strings.Contains(out, marker) {
			break
		}
		if time.Now().After(deadline) {
			desc, _ := k("describe", "pod", "marker")
			t.Fatalf("the marker pod never logged the marker:\n%s\n%s", out, desc)
		}
		time.Sleep(5 * time.Second)
	}
	// The node wrote the marker to its state disk; the kernel writes dirty pages back within 30 s
	// (vm.dirty_expire_centisecs) and ext4 commits every 5 s. Look at the host's disk file for well past that.
	disk := filepath.Join(dir, "nodes", "worker-0", "state-disk.img")
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Second) {
		if found, err := fileContains(disk, []byte(marker)); err != nil || found {
			t.Fatalf("the host reads the pod's marker in the worker's state disk %s (found %v, %v)", disk, found, err)
		}
	}
	t.Logf("the marker is not in the worker's state disk file")

	checkQEMUKernelWireGuard(t, k, kApply, state)
	checkQEMUNetworkEncrypted(t, k, kApply, state)
	t.Logf("whole test: %s", time.Since(start).Round(time.Second))
}

// checkQEMUKernelWireGuard asks each node's kernel what its mesh interface is: a pod in the node's network
// namespace reads the interface's sysfs entry. A link of the kernel's WireGuard says DEVTYPE=wireguard (the
// kind `ip -d link` shows); the TUN device of a userspace implementation does not.
func checkQEMUKernelWireGuard(t *testing.T, k func(...string) (string, error), kApply func(string), state qemu.State) {
	t.Helper()
	for _, n := range state.Nodes {
		kApply(busyboxPod(t, "wireguard-"+n.Name, n.Name, true, "cat", "/sys/class/net/"+meshagent.Interface+"/uevent"))
	}
	for _, n := range state.Nodes {
		out := waitPodDone(t, k, "wireguard-"+n.Name)
		if !strings.Contains(out, "INTERFACE="+meshagent.Interface+"\n") || !strings.Contains(out, "DEVTYPE=wireguard\n") {
			t.Errorf("the mesh interface of %s is no kernel WireGuard link; its sysfs entry:\n%s", n.Name, out)
			continue
		}
		t.Logf("%s: %s is a kernel WireGuard link (%s)", n.Name, meshagent.Interface, strings.Join(strings.Fields(out), " "))
	}
}

// checkQEMUNetworkEncrypted captures every frame the node network's bridge forwards (in the provider's
// namespace, where the host can) while a pod on control-plane-0 writes a marker into a pod on worker-0 (etcd's
// HTTP API; the value base64-encoded in the body, the marker itself in a header) and reads it back. The marker
// must not appear, nor an address of the pod network in a packet's header; between the nodes only WireGuard
// may cross, and its transport data must. A request from this machine to worker-0's verification service
// carries a second marker in plain text, and the capture must see that one: otherwise it could not tell.
func checkQEMUNetworkEncrypted(t *testing.T, k func(...string) (string, error), kApply func(string), state qemu.State) {
	t.Helper()
	var worker qemu.NodeState
	var nodes []netip.Addr
	for _, n := range state.Nodes {
		nodes = append(nodes, netip.MustParseAddr(n.IP))
		if n.Name == "worker-0" {
			worker = n
		}
	}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	marker := "constellation-qemu-pod-marker-" + suffix
	control := "constellation-qemu-plain-control-" + suffix
	encoded := base64.StdEncoding.EncodeToString([]byte(marker)) // etcd's JSON API carries values in base64
	capture, err := wgmeshtest.StartCaptureWith(wgmeshtest.CaptureOptions{
		Netns: qemu.Netns, Interfaces: []string{qemu.Bridge},
		Markers: [][]byte{[]byte(marker), []byte(encoded), []byte(control)},
		Nodes:   nodes,
		Allowed: func(f wgmeshtest.Flow) bool {
			return f.Proto == unix.IPPROTO_UDP && (f.SrcPort == meshpeers.Port || f.DstPort == meshpeers.Port)
		},
		WireGuardPort: meshpeers.Port,
		Watched:       []netip.Prefix{guest.PodSubnet},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			capture.Stop()
		}
	}()
	exchangeMarker(t, k, kApply, "control-plane-0", "worker-0", marker)
	exec.Command("curl", "-s", "-m", "5", "http://"+net.JoinHostPort(worker.IP, strconv.Itoa(verifyservice.Port))+"/"+control).Run()
	time.Sleep(time.Second) // the last frames reach the bridge
	st := capture.Stop()
	stopped = true
	t.Logf("capture on %s in %s: %d frames, %d packets between nodes on the mesh port, WireGuard messages by type %v",
		qemu.Bridge, qemu.Netns, st.Frames, st.Tunnel, st.WireGuard)
	if !st.Found[2] {
		t.Fatal("the capture did not see the plain-text control request: it could not tell plain text either")
	}
	if st.Found[0] || st.Found[1] {
		t.Error("the pod-to-pod marker crossed the node network in plain text")
	}
	if w := st.WatchedFlows(); len(w) > 0 {
		t.Errorf("addresses of the pod network %s in plain text on the node network:\n%s", guest.PodSubnet, strings.Join(w, "\n"))
	}
	if u := st.Unexpected(); len(u) > 0 {
		t.Errorf("traffic between nodes outside the tunnel:\n%s", strings.Join(u, "\n"))
	}
	if st.Tunnel == 0 || st.WireGuard[wgmeshtest.WireGuardData] == 0 {
		t.Error("no WireGuard transport data between the nodes during the transfer")
	}
	if st.WireGuard[0] != 0 {
		t.Errorf("%d datagrams on the mesh port are no WireGuard messages", st.WireGuard[0])
	}
}

// exchangeMarker has a pod on node from write marker into a pod on node to (etcd's HTTP API: the value
// base64-encoded in the body, the marker itself in a header) and read it back, and fails the test if that
// does not work.
func exchangeMarker(t *testing.T, k func(...string) (string, error), kApply func(string), from, to, marker string) {
	t.Helper()
	encoded := base64.StdEncoding.EncodeToString([]byte(marker))
	key := base64.StdEncoding.EncodeToString([]byte("marker"))
	server := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "peer-server"},
		"spec": map[string]any{"nodeName": to, "containers": []any{map[string]any{
			"name": "etcd", "image": "registry.k8s.io/etcd:" + nodeImageTag(t, "etcd"), "imagePullPolicy": "Never",
			"command": []string{"/usr/local/bin/etcd", "--listen-client-urls=http://0.0.0.0:2379", "--advertise-client-urls=http://127.0.0.1:2379",
				"--listen-peer-urls=http://127.0.0.1:2380", "--data-dir=/tmp/etcd"},
			"ports":          []any{map[string]any{"containerPort": 2379}},
			"readinessProbe": map[string]any{"tcpSocket": map[string]any{"port": 2379}, "periodSeconds": 2},
		}}}}
	raw, err := json.Marshal(server)
	if err != nil {
		t.Fatal(err)
	}
	kApply(string(raw))
	serverIP := waitPodReady(t, k, "peer-server")
	url := "http://" + net.JoinHostPort(serverIP, "2379")
	kApply(busyboxPod(t, "peer-put", from, false, "wget", "-q", "-O", "-", "--header", "X-Marker: "+marker,
		"--post-data", fmt.Sprintf(`{"key":%q,"value":%q}`, key, encoded), url+"/v3/kv/put"))
	put := waitPodDone(t, k, "peer-put")
	kApply(busyboxPod(t, "peer-get", from, false, "wget", "-q", "-O", "-", "--post-data", fmt.Sprintf(`{"key":%q}`, key), url+"/v3/kv/range"))
	got := waitPodDone(t, k, "peer-get")
	if !strings.Contains(put, `"revision"`) || !strings.Contains(got, encoded) {
		t.Fatalf("the pod on %s writing to and reading from the pod on %s (%s):\nput: %s\nrange: %s", from, to, serverIP, put, got)
	}
}

// busyboxPod is the manifest of a pod on node that runs busybox with args and ends. The images of the node
// image have no shell: the pod runs the node's own busybox (a static binary of the node image), mounted into a
// container of the kube-proxy image, in the node's network namespace if hostNetwork.
func busyboxPod(t *testing.T, name, node string, hostNetwork bool, args ...string) string {
	t.Helper()
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"nodeName": node, "hostNetwork": hostNetwork, "restartPolicy": "Never",
			"tolerations": []any{map[string]any{"operator": "Exists"}},
			"containers": []any{map[string]any{
				"name": "busybox", "image": "registry.k8s.io/kube-proxy:" + kubeProxyVersion(t), "imagePullPolicy": "Never",
				"command":      append([]string{"/busybox"}, args...),
				"volumeMounts": []any{map[string]any{"name": "busybox", "mountPath": "/busybox", "readOnly": true}},
			}},
			"volumes": []any{map[string]any{"name": "busybox", "hostPath": map[string]any{"path": "/usr/bin/busybox", "type": "File"}}},
		}}
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// waitPodDone waits until the pod name has run to completion and returns its log; a pod that failed, or has
// not ended after 20 minutes, fails the test.
func waitPodDone(t *testing.T, k func(...string) (string, error), name string) string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Minute); ; time.Sleep(3 * time.Second) {
		phase, _ := k("get", "pod", name, "-o", "jsonpath={.status.phase}")
		if phase == "Succeeded" {
			out, err := k("logs", name)
			if err != nil {
				t.Fatalf("the log of pod %s: %v\n%s", name, err, out)
			}
			return out
		}
		if phase == "Failed" || time.Now().After(deadline) {
			logs, _ := k("logs", name)
			desc, _ := k("describe", "pod", name)
			t.Fatalf("pod %s did not succeed (phase %q):\n%s\n%s", name, phase, logs, desc)
		}
	}
}

// waitPodReady waits until the pod name is ready and returns its address; a pod not ready after 20 minutes
// fails the test.
func waitPodReady(t *testing.T, k func(...string) (string, error), name string) string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Minute); ; time.Sleep(3 * time.Second) {
		out, _ := k("get", "pod", name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.podIP}`)
		if f := strings.Fields(out); len(f) == 2 && f[0] == "True" {
			return f[1]
		}
		if time.Now().After(deadline) {
			desc, _ := k("describe", "pod", name)
			t.Fatalf("pod %s not ready: %s\n%s", name, out, desc)
		}
	}
}

// nodeImageTag is the tag of the node image's image registry.k8s.io/<name>.
func nodeImageTag(t *testing.T, name string) string {
	t.Helper()
	prefix := "registry.k8s.io_" + strings.ReplaceAll(name, "/", "_") + "_"
	matches, _ := filepath.Glob(filepath.Join(qemuImageDir, "images", prefix+"*.tar"))
	if len(matches) != 1 {
		t.Fatalf("the node image's image %s: %v", name, matches)
	}
	return strings.TrimSuffix(strings.TrimPrefix(filepath.Base(matches[0]), prefix), ".tar")
}

// kubeProxyVersion is the Kubernetes version of the node image (its kube-proxy image's tag).
func kubeProxyVersion(t *testing.T) string {
	t.Helper()
	return nodeImageTag(t, "kube-proxy")
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
