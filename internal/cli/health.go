package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// clusterHealth is what 'status' reports, and what 'apply' waits for: every node attested (as a member of
// this cluster, once it is initialised) and Ready in Kubernetes, and the pods of the cluster's services ready.
type clusterHealth struct {
	Initialised bool
	State       clusterState
	Nodes       []nodeHealth
	Services    []serviceStatus
	// KubeErr is why Kubernetes could not be asked (the nodes' and services' readiness is then unknown).
	KubeErr error
}

// nodeHealth is one node as status shows it.
type nodeHealth struct {
	Name, Role, IP string
	Attestation    string // "member of this cluster", "runs the configured image", or "FAILED: why"
	Attested       bool
	Kubernetes     string // "Ready", "NotReady", "Unknown", "not registered", "unknown" or "-" (not initialised)
	// Continuous is the cluster's continuous attestation of the node (package reattestation): the state of
	// its record (which only the join service writes) and when its evidence last verified, "QUARANTINED:
	// reason", "pending" without a current record, or "-".
	Continuous string
	// Image is the node image the continuous attestation proved (the image the measurement set its evidence
	// matched names), shortened; "-" without a Trusted record that names one.
	Image string
	// Kubelet is the kubelet version the node reports, or "-".
	Kubelet string
}

// awaited is one thing that keeps a cluster from being ready: what (a node, a service, the Kubernetes API),
// its state in a few words, and the details (why attestation failed).
type awaited struct{ What, State, Detail string }

// short is what progress shows.
func (a awaited) short() string { return a.What + " (" + a.State + ")" }

// String is what an error shows.
func (a awaited) String() string {
	if a.Detail == "" {
		return a.short()
	}
	return a.What + " (" + a.State + ": " + a.Detail + ")"
}

// notReady lists what keeps the cluster from being healthy, in the order status prints it; empty when healthy.
func (h clusterHealth) notReady() []awaited {
	var out []awaited
	for _, n := range h.Nodes {
		switch {
		case !n.Attested:
			state := "not attested"
			if h.Initialised {
				state = "not attested as a member"
			}
			out = append(out, awaited{n.Name, state, strings.TrimPrefix(n.Attestation, "FAILED: ")})
		case h.Initialised && n.Kubernetes != "Ready":
			out = append(out, awaited{What: n.Name, State: n.Kubernetes})
		}
	}
	if h.Initialised && h.KubeErr != nil {
		out = append(out, awaited{"Kubernetes API", "not answering", firstLine(h.KubeErr.Error())})
	}
	for _, s := range h.Services {
		if !s.Healthy {
			state := s.State // "not deployed", "no node to run on"
			if strings.Contains(state, "/") {
				state = "pods ready " + state
			}
			out = append(out, awaited{What: s.Name, State: state})
		}
	}
	return out
}

// errNoCluster says that a workspace holds no cluster, and how to make one.
func errNoCluster(ws, why string) error {
	return checkFailed(fmt.Errorf("no cluster in %s (%s); create one with 'constellation mini up'", ws, why))
}

// checkCluster attests every node of the workspace's running cluster and asks Kubernetes about the nodes and
// the cluster's services.
func checkCluster(ctx context.Context, ws string) (clusterHealth, error) {
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return clusterHealth{}, errNoCluster(ws, "no "+config.FileName)
	}
	if err != nil {
		return clusterHealth{}, badInput("%w", err)
	}
	nodes, att, err := runningNodes(ws, c)
	if err != nil {
		return clusterHealth{}, err
	}
	h := clusterHealth{}
	var initialised bool
	h.State, initialised, err = loadClusterState(ws)
	if err != nil {
		return clusterHealth{}, badInput("%s: %w", StateFile, err)
	}
	h.Initialised = initialised
	if initialised {
		if att.Measurements, err = withClusterID(att.Measurements, h.State); err != nil {
			return clusterHealth{}, badInput("%w", err)
		}
	}
	var kube map[string]kubeNode
	if initialised {
		// The kubeconfig keeps naming an API server that answers (a control-plane node may be down).
		if endpoint, err := selectAPIServer(ctx, ws, controlPlaneIPs(nodes)); err == nil {
			h.State.Endpoint = endpoint
		}
		var api *kubeapi.Client
		if api, h.KubeErr = kubeapi.FromKubeconfig(filepath.Join(ws, AdminKubeconfigFile)); h.KubeErr == nil {
			if kube, h.KubeErr = nodeReadiness(ctx, api, time.Now()); h.KubeErr == nil {
				h.Services, h.KubeErr = serviceReadiness(ctx, api, expectedPods(nodes))
			}
		}
	}
	for _, n := range nodes {
		nh := nodeHealth{Name: n.Name, Role: n.Role, IP: n.IP, Attestation: "member of this cluster", Attested: true, Kubernetes: "-", Continuous: "-", Image: "-", Kubelet: "-"}
		kn, registered := kube[n.Name]
		if registered {
			nh.Continuous, nh.Image, nh.Kubelet = kn.Continuous, kn.Image, kn.Kubelet
		}
		if !initialised {
			nh.Attestation = "runs the configured image"
		}
		vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := verifyNode(vctx, n.IP+":"+strconv.Itoa(verifyservice.Port), att, nil, 0); err != nil {
			nh.Attestation, nh.Attested = "FAILED: "+firstLine(err.Error()), false
		}
		cancel()
		switch {
		case !initialised:
		case h.KubeErr != nil:
			nh.Kubernetes = "unknown"
		case !registered:
			nh.Kubernetes = "not registered"
		default:
			nh.Kubernetes = kn.Ready
		}
		h.Nodes = append(h.Nodes, nh)
	}
	return h, nil
}

// clusterNode is a node of the workspace's running cluster, from its provider's record.
type clusterNode struct{ Name, Role, IP string }

// controlPlaneIPs are the addresses of the control-plane nodes among nodes.
func controlPlaneIPs(nodes []clusterNode) []string {
	var out []string
	for _, n := range nodes {
		if n.Role == provider.RoleControlPlane {
			out = append(out, n.IP)
		}
	}
	return out
}

// runningNodes returns the nodes of the workspace's running cluster (mini or QEMU provider) and the policy of
// its configured image, before any cluster ID.
func runningNodes(ws string, c *config.Config) ([]clusterNode, *validators.Policy, error) {
	var nodes []clusterNode
	if c.Provider.QEMU != nil {
		state, found, err := qemu.ReadState(filepath.Join(ws, qemuDirName))
		if err != nil {
			return nil, nil, badInput("%w", err)
		}
		if !found || !state.DaemonAlive() {
			return nil, nil, errNoCluster(ws, "no running machines")
		}
		roots, err := qemuPolicyRoots(ws)
		if err != nil {
			return nil, nil, failed(err)
		}
		att, err := c.Attestation.Policy(roots)
		if err != nil {
			return nil, nil, badInput("%w", err)
		}
		for _, n := range state.Nodes {
			nodes = append(nodes, clusterNode{Name: n.Name, Role: n.Role, IP: n.IP})
		}
		return nodes, att, nil
	}
	dir := filepath.Join(ws, miniDirName)
	state, found, err := mini.ReadState(dir)
	if err != nil {
		return nil, nil, badInput("%w", err)
	}
	if !found || !state.DaemonAlive() {
		return nil, nil, errNoCluster(ws, "no running nodes")
	}
	roots, err := readCertificates(filepath.Join(dir, "ak-ca", "ca-cert.pem"))
	if err != nil {
		return nil, nil, failed(err)
	}
	for _, n := range state.Nodes {
		nodes = append(nodes, clusterNode{Name: n.Name, Role: n.Role, IP: n.IP})
	}
	return nodes, miniPolicy(roots, c.Attestation.Measurements), nil
}

// print writes the health of a cluster as status shows it.
func (h clusterHealth) print(out io.Writer) {
	if h.Initialised {
		fmt.Fprintf(out, "Cluster %s…, Kubernetes API at https://%s\n", h.State.ClusterID[:16], h.State.Endpoint)
	} else {
		fmt.Fprintln(out, "Nodes booted; Kubernetes not initialised")
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tADDRESS\tATTESTATION\tKUBERNETES\tKUBELET\tIMAGE\tCONTINUOUS")
	for _, n := range h.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, n.IP, n.Attestation, n.Kubernetes, orDash(n.Kubelet), orDash(n.Image), n.Continuous)
	}
	tw.Flush()
	if h.KubeErr != nil {
		fmt.Fprintf(out, "Kubernetes API: %v\n", h.KubeErr)
	}
	if len(h.Services) > 0 {
		fmt.Fprintln(out)
		tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tPODS READY")
		for _, svc := range h.Services {
			fmt.Fprintf(tw, "%s\t%s\n", svc.Name, svc.State)
		}
		tw.Flush()
	}
}

// orDash is s, or "-" if it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// DefaultWait is how long 'apply' and 'mini up' wait, by default, for the created cluster to be ready.
const DefaultWait = 10 * time.Minute

// readyWaiter waits until a cluster is healthy, as 'status' checks it, and reports on the way what it still
// waits for.
type readyWaiter struct {
	check func(context.Context) (clusterHealth, error)
	limit time.Duration
	out   io.Writer
	// now and sleep are the clock; time.Now and a sleep that ends with ctx, unless a test replaces them.
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

// waitPoll is the pause between two checks of a cluster that is not ready yet.
const waitPoll = 2 * time.Second

func newReadyWaiter(ws string, limit time.Duration, out io.Writer) *readyWaiter {
	return &readyWaiter{
		check: func(ctx context.Context) (clusterHealth, error) { return checkCluster(ctx, ws) },
		limit: limit, out: out, now: time.Now,
		sleep: func(ctx context.Context, d time.Duration) error {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
				return nil
			}
		},
	}
}

// wait checks the cluster until it is healthy; after the limit it fails with what is not ready. It prints
// each node once it is ready, and what it still waits for whenever that changes.
func (w *readyWaiter) wait(ctx context.Context) error {
	deadline := w.now().Add(w.limit)
	done := map[string]bool{}
	var last string
	for {
		h, err := w.check(ctx)
		if err != nil {
			return err
		}
		for _, n := range h.Nodes {
			if n.Attested && (!h.Initialised || n.Kubernetes == "Ready") && !done[n.Name] {
				done[n.Name] = true
				if h.Initialised {
					fmt.Fprintf(w.out, "  %s attested as a member of this cluster and Ready\n", n.Name)
				}
			}
		}
		missing := h.notReady()
		if len(missing) == 0 {
			return nil
		}
		var names []string
		for _, m := range missing {
			names = append(names, m.short())
		}
		if now := strings.Join(names, ", "); now != last {
			fmt.Fprintf(w.out, "  waiting for %s\n", now)
			last = now
		}
		if !w.now().Before(deadline) {
			var why strings.Builder
			for _, m := range missing {
				why.WriteString("\n  " + m.String())
			}
			return checkFailed(fmt.Errorf("the cluster is not ready after %s; not ready:%s\nIt keeps running: see 'constellation status', or remove it with 'constellation mini down'", w.limit, why.String()))
		}
		if err := w.sleep(ctx, min(waitPoll, deadline.Sub(w.now()))); err != nil {
			return failed(fmt.Errorf("waiting for the cluster to be ready: %w", err))
		}
	}
}

// removeCluster removes the workspace's cluster: it stops the provider and its nodes, removes what they left
// on this machine and the provider's directory (the nodes' TPMs and state disks, which held the cluster's
// data), then the state file, the admin kubeconfig, the init secret and the controller credential. The configuration and the master
// secret stay: the master secret is what recovers data encrypted by this cluster.
func removeCluster(out, errOut io.Writer, ws string) error {
	if ok, err := removeQEMUCluster(out, errOut, ws); err != nil {
		return err
	} else if ok {
		for _, f := range []string{StateFile, AdminKubeconfigFile, InitSecretFile, ControllerCredentialFile} {
			if err := os.Remove(filepath.Join(ws, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return failed(err)
			}
		}
		return nil
	}
	dir := filepath.Join(ws, miniDirName)
	state, found, err := mini.ReadState(dir)
	if err != nil {
		return badInput("%w", err)
	}
	if found && state.DaemonAlive() {
		fmt.Fprintf(out, "Stopping the provider (pid %d) and %d node(s)\n", state.DaemonPID, len(state.Nodes))
		if err := mini.StopDaemon(state, time.Minute); err != nil {
			fmt.Fprintf(errOut, "warning: %v\n", err)
		}
		// A provider that stopped cleanly removed its nodes and its state; what is left is stale.
		if state, found, err = mini.ReadState(dir); err != nil {
			return failed(err)
		}
	}
	// Whatever the provider did not remove (or when it had died): remove it now. Without a state file, no
	// provider of this workspace left anything running.
	if found {
		if err := mini.Cleanup(dir, state); err != nil {
			return failed(fmt.Errorf("removing the cluster's nodes: %w", err))
		}
	}
	if err := mini.Remove(dir); err != nil {
		return failed(fmt.Errorf("removing the nodes' state disks and TPMs: %w", err))
	}
	// The init secret and the controller credential belong to this cluster; a new cluster gets new ones.
	for _, f := range []string{StateFile, AdminKubeconfigFile, InitSecretFile, ControllerCredentialFile} {
		if err := os.Remove(filepath.Join(ws, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return failed(err)
		}
	}
	return nil
}

// removedText says what removeCluster removed and kept, for the help of the commands that call it.
var removedText = "the nodes, their state disks (with the cluster's data) and TPMs, " + StateFile + ", " + AdminKubeconfigFile + ",\n" +
	InitSecretFile + " and " + ControllerCredentialFile + ". " + config.FileName + " and the master secret stay: the master secret is what recovers\n" +
	"data encrypted by this cluster; delete it yourself when nothing needs it any more."
