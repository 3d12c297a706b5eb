package suite

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/provider/mini"
)

func init() {
	register(Suite{Names: []string{"cluster-create", "node-join", "node-rejoin", "node-memory"}, Run: runClusterCreate})
}

// benchCluster is a mini cluster in a workspace of its own, created with the built CLI and node image.
type benchCluster struct {
	ctx                  context.Context
	ws, bin, kubectlPath string
}

// newBenchCluster prepares a workspace with the configuration of a 1 + 2 node cluster.
func newBenchCluster(ctx context.Context, what string) (*benchCluster, error) {
	bin, _ := filepath.Abs("bin/constellation")
	kubectl, _ := filepath.Abs("_out/kubernetes/bin/kubectl")
	imageDir, _ := filepath.Abs(NodeImageDir)
	for _, f := range []string{bin, kubectl, filepath.Join(imageDir, "node-image.json")} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%s needs the built CLI and node image (make build node-image): %w", what, err)
		}
	}
	if os.Geteuid() != 0 || mini.NetworkInUse() {
		return nil, fmt.Errorf("%s needs root and no running mini cluster", what)
	}
	ws, err := os.MkdirTemp("", "bench-cluster-")
	if err != nil {
		return nil, err
	}
	c := &benchCluster{ctx: ctx, ws: ws, bin: bin, kubectlPath: kubectl}
	if out, err := c.run(bin, "config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws, "--allow-dev-signed"); err != nil {
		os.RemoveAll(ws)
		return nil, fmt.Errorf("config generate: %v: %s", err, out)
	}
	return c, nil
}

func (c *benchCluster) run(name string, args ...string) (string, error) {
	out, err := exec.CommandContext(c.ctx, name, args...).CombinedOutput()
	return string(out), err
}

func (c *benchCluster) kubectl(args ...string) (string, error) {
	return c.run(c.kubectlPath, append([]string{"--kubeconfig", filepath.Join(c.ws, "constellation-admin.conf")}, args...)...)
}

// up creates the cluster: `mini up` returns once every node is attested as a member and Ready and the
// cluster's services are ready, which `status` then confirms.
func (c *benchCluster) up() error {
	if out, err := c.run(c.bin, "mini", "up", "--workspace", c.ws, "--allow-dev-signed"); err != nil {
		return fmt.Errorf("mini up: %v: %s", err, out)
	}
	return nil
}

// ready checks with `status` that the cluster is healthy.
func (c *benchCluster) ready() error {
	if out, err := c.run(c.bin, "status", "--workspace", c.ws); err != nil {
		return fmt.Errorf("status right after mini up: %v: %s", err, out)
	}
	return nil
}

// close removes the cluster and its workspace.
func (c *benchCluster) close() {
	c.run(c.bin, "mini", "down", "--workspace", c.ws)
	os.RemoveAll(c.ws)
}

func (c *benchCluster) state() (mini.State, error) {
	st, _, err := mini.ReadState(filepath.Join(c.ws, "constellation-mini"))
	return st, err
}

// runClusterCreate measures, with the built CLI and node image, seconds that `constellation mini up` takes
// (1 control plane + 2 workers): it returns when the cluster is ready as `status` checks it, every node
// attested as a member of the cluster and Ready, and the pods of the join, key and verification services
// ready. It also measures the resident memory per node once the cluster has settled.
func runClusterCreate(ctx context.Context) ([]Result, error) {
	c, err := newBenchCluster(ctx, "cluster-create")
	if err != nil {
		return nil, err
	}
	defer c.close()
	start := time.Now()
	if err := c.up(); err != nil {
		return nil, err
	}
	created := time.Since(start)
	if err := c.ready(); err != nil {
		return nil, err
	}
	state, err := c.state()
	if err != nil {
		return nil, err
	}
	// node-join: from a worker's power-on to its Ready condition (attestation, join service, disk unlock,
	// kubeadm join, kubelet); the slower of the two workers.
	var join time.Duration
	for _, n := range state.Nodes {
		if n.Role != "worker" {
			continue
		}
		out, err := c.kubectl("get", "node", n.Name,
			"-o", `jsonpath={.status.conditions[?(@.type=="Ready")].lastTransitionTime}`)
		if err != nil {
			return nil, fmt.Errorf("reading %s's Ready time: %v: %s", n.Name, err, out)
		}
		ready, err := time.Parse(time.RFC3339, strings.TrimSpace(out))
		if err != nil {
			return nil, fmt.Errorf("reading %s's Ready time: %w", n.Name, err)
		}
		join = max(join, ready.Sub(n.Started))
	}
	time.Sleep(30 * time.Second) // let the control plane settle before measuring memory and rebooting a node
	var total float64
	for _, n := range state.Nodes {
		if n.Cgroup == "" {
			continue
		}
		rss, err := cgroupRSS(filepath.Join("/sys/fs/cgroup/memory", n.Cgroup, "memory.stat"))
		if err != nil {
			return nil, err
		}
		total += rss
	}
	// node-rejoin: a worker of the running cluster reboots; from its power-on until its kubelet reports Ready
	// again (attestation, join service, disk key, state disk, containerd, kubelet).
	if out, err := c.run(c.bin, "mini", "reboot", "worker-0", "--workspace", c.ws); err != nil {
		return nil, fmt.Errorf("mini reboot: %v: %s", err, out)
	}
	rebooted, err := c.state()
	if err != nil {
		return nil, err
	}
	var powerOn time.Time
	for _, n := range rebooted.Nodes {
		if n.Name == "worker-0" {
			powerOn = n.Started
		}
	}
	var rejoin time.Duration
	for {
		out, err := c.kubectl("get", "node", "worker-0",
			"-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}`)
		if err == nil {
			status, beat, _ := strings.Cut(strings.TrimSpace(out), " ")
			if t, perr := time.Parse(time.RFC3339, beat); perr == nil && status == "True" && t.After(powerOn) {
				rejoin = time.Since(powerOn)
				break
			}
		}
		if time.Since(powerOn) > 5*time.Minute {
			return nil, fmt.Errorf("worker-0 not Ready 5 minutes after its reboot: %s", out)
		}
		time.Sleep(250 * time.Millisecond)
	}
	return []Result{
		{"cluster-create", created.Seconds(), "s"},
		{"node-rejoin", rejoin.Seconds(), "s"},
		{"node-join", join.Seconds(), "s"},
		{"node-memory", total / float64(len(state.Nodes)) / (1 << 20), "MiB"},
	}, nil
}

// cgroupRSS reads the resident memory (anonymous and mapped file pages) of a cgroup v1 subtree.
func cgroupRSS(statFile string) (float64, error) {
	f, err := os.Open(statFile)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var rss, mapped float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		n, _ := strconv.ParseFloat(v, 64)
		switch k {
		case "total_rss":
			rss = n
		case "total_mapped_file":
			mapped = n
		}
	}
	return rss + mapped, sc.Err()
}
