package suite

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
)

func init() {
	register(Suite{Names: []string{"net-pod2pod", "net-pod2pod-plain", "net-pod2pod-ratio"}, Run: runPod2Pod})
}

// pod2podManifest is two pods, one on each worker, whose network namespaces the benchmark enters.
const pod2podManifest = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: bench-a}
  spec:
    nodeName: worker-0
    containers: [{name: c, image: "registry.k8s.io/etcd:%[1]s", imagePullPolicy: Never, command: ["/usr/local/bin/etcd", "--name=bench-a", "--data-dir=/tmp/etcd"]}]
- apiVersion: v1
  kind: Pod
  metadata: {name: bench-b}
  spec:
    nodeName: worker-1
    containers: [{name: c, image: "registry.k8s.io/etcd:%[1]s", imagePullPolicy: Never, command: ["/usr/local/bin/etcd", "--name=bench-b", "--data-dir=/tmp/etcd"]}]
`

// runPod2Pod measures TCP throughput from a pod on one worker to a pod on the other, across the node network:
// through the nodes' WireGuard tunnel, and, interleaved in the same run, over the same path with the
// tunnel bypassed on both workers (their policy rule and link filter switched off for that round).
func runPod2Pod(ctx context.Context) ([]Result, error) {
	c, err := newBenchCluster(ctx, "net-pod2pod")
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.up(); err != nil {
		return nil, err
	}
	etcdTag, err := etcdImageTag()
	if err != nil {
		return nil, err
	}
	manifest := filepath.Join(c.ws, "pods.yaml")
	if err := os.WriteFile(manifest, []byte(fmt.Sprintf(pod2podManifest, etcdTag)), 0o600); err != nil {
		return nil, err
	}
	if out, err := c.kubectl("apply", "-f", manifest); err != nil {
		return nil, fmt.Errorf("creating the pods: %v: %s", err, out)
	}
	if out, err := c.kubectl("wait", "--for=condition=Ready", "pod/bench-a", "pod/bench-b", "--timeout=3m"); err != nil {
		return nil, fmt.Errorf("pods not ready: %v: %s", err, out)
	}
	ipB, err := c.kubectl("get", "pod", "bench-b", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		return nil, err
	}
	pidA, err := pidOf("--name=bench-a")
	if err != nil {
		return nil, err
	}
	pidB, err := pidOf("--name=bench-b")
	if err != nil {
		return nil, err
	}
	sink, err := wgmeshtest.StartSink(pidB, net.JoinHostPort(ipB, "8082"))
	if err != nil {
		return nil, err
	}
	defer sink.Stop()
	state, err := c.state()
	if err != nil {
		return nil, err
	}
	var workers []int
	for _, n := range state.Nodes {
		if n.Role == "worker" {
			workers = append(workers, n.PID)
		}
	}
	bypass := func(on bool) error {
		for _, pid := range workers {
			if err := bypassTunnel(pid, on); err != nil {
				return err
			}
		}
		return nil
	}
	defer bypass(false)
	const size = 256 << 20
	target := net.JoinHostPort(ipB, "8082")
	// The workers become each other's peers once both have published their keys: wait for the path.
	for deadline := time.Now().Add(2 * time.Minute); ; {
		_, err := wgmeshtest.ThroughputFrom(pidA, target, 1<<20)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pod bench-a does not reach pod bench-b through the tunnel: %w", err)
		}
		time.Sleep(time.Second)
	}
	var enc, plain []float64
	for range 5 {
		e, err := wgmeshtest.ThroughputFrom(pidA, target, size)
		if err != nil {
			return nil, fmt.Errorf("through the tunnel: %w", err)
		}
		if err := bypass(true); err != nil {
			return nil, err
		}
		p, err := wgmeshtest.ThroughputFrom(pidA, target, size)
		if berr := bypass(false); berr != nil {
			return nil, berr
		}
		if err != nil {
			return nil, fmt.Errorf("around the tunnel: %w", err)
		}
		enc, plain = append(enc, e), append(plain, p)
	}
	slices.Sort(enc)
	slices.Sort(plain)
	return []Result{
		{"net-pod2pod", enc[len(enc)/2], "Mbit/s"},
		{"net-pod2pod-plain", plain[len(plain)/2], "Mbit/s"},
		{"net-pod2pod-ratio", enc[len(enc)/2] / plain[len(plain)/2], "x"},
	}, nil
}

// bypassTunnel switches a node's strict routing off (on=true) or back on, from outside the node: a policy rule
// before the tunnel's sends everything by the main table, whose routes to the other nodes' pods go over the
// link, and a first rule in the link filter lets plain text in.
func bypassTunnel(nodePID int, on bool) error {
	ns := []string{"-t", strconv.Itoa(nodePID), "-n"}
	op, ipt := "del", "-D"
	if on {
		op, ipt = "add", "-I"
	}
	for _, args := range [][]string{
		{"ip", "rule", op, "pref", "5205", "lookup", "main"},
		{"iptables", "-w", "-t", "raw", ipt, "CONSTELLATION-MESH", "-j", "RETURN"},
	} {
		if out, err := exec.Command("nsenter", append(ns, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// pidOf finds the process whose command line contains arg (pods run in the host's PID namespace).
func pidOf(arg string) (int, error) {
	for range 50 {
		out, _ := exec.Command("pgrep", "-f", "--", regexp.QuoteMeta(arg)).Output()
		if f := strings.Fields(string(out)); len(f) == 1 {
			return strconv.Atoi(f[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("no single process with %s", arg)
}

// readNodeImageManifest reads the built node image's manifest.
func readNodeImageManifest() (nodeimage.Manifest, error) {
	var m nodeimage.Manifest
	raw, err := os.ReadFile(filepath.Join(NodeImageDir, "node-image.json"))
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(raw, &m)
}

// etcdImageTag is the tag of the etcd image in the node image.
func etcdImageTag() (string, error) {
	m, err := readNodeImageManifest()
	if err != nil {
		return "", err
	}
	if m.Versions.Etcd == "" {
		return "", fmt.Errorf("the node image names no etcd version")
	}
	return m.Versions.Etcd, nil
}
