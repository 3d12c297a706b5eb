package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

func newApplyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Create the cluster of " + config.FileName + ": boot and attest the nodes, initialise Kubernetes",
		Long: "Create the nodes through the provider, attest each, send the master secret over aTLS to the attested\n" +
			"first control-plane node, which initialises Kubernetes and installs the in-cluster services; write\n" +
			AdminKubeconfigFile + " and " + StateFile + ". Every other node joins after the join service attested it.\n" +
			"Before it creates the nodes, apply generates the cluster's init secret (" + InitSecretFile + ", 0600; kept\n" +
			"for retries and 'recover') and hands the provider only its hash: the nodes accept Init from no one else.\n" +
			"Likewise it generates the controller credential (" + ControllerCredentialFile + ", 0600), hands the provider only\n" +
			"its hash and, after init, keeps it in the Secret kube-system/" + provider.FleetSecretName + ": the\n" +
			"provider creates and deletes nodes only for the cluster's upgrade controller, which presents it.\n" +
			"apply returns when every node is attested, registered and Ready and the cluster's services are ready,\n" +
			"as 'status' checks them; after --wait it fails (exit 1) and names what is not ready.\n" +
			"First it verifies again, offline, that the configuration's measurements are the signed measurements of\n" +
			"the configured node image (a development-signed image only with --allow-dev-signed).\n\n" +
			"On a running cluster whose configuration names another node image than the one " + StateFile + "\n" +
			"records, apply upgrades it: it makes the image known to the provider, has every key service accept both\n" +
			"images, asks the cluster's upgrade controller (NodeUpgrade " + v1alpha1.Name + ") to replace every node, control plane\n" +
			"first, and prints each node's steps; once every node runs the new image only that image is accepted and\n" +
			StateFile + " records it. A failed upgrade exits 1 and says how to roll back ('upgrade abort'). Ctrl-C or\n" +
			"--wait leave the upgrade running: apply again follows it. Applying the old configuration while the upgrade\n" +
			"runs rolls it back, as 'upgrade abort' does.",
		Args: cobra.NoArgs,
		RunE: runMiniUp,
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	addSignatureFlags(cmd)
	addWaitFlag(cmd)
	cmd.Flags().Bool("skip-init", false, "boot and attest the nodes, but do not initialise Kubernetes")
	return cmd
}

func newTerminateCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "terminate",
		Short: "Remove the cluster and its nodes; keep the configuration and the master secret",
		Long:  "Remove the cluster: " + removedText,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ws := workspace(cmd)
			_, qemuErr := os.Stat(filepath.Join(ws, qemuDirName))
			if _, found, err := mini.ReadState(filepath.Join(ws, miniDirName)); err != nil {
				return badInput("%w", err)
			} else if !found && qemuErr != nil {
				if _, ok, _ := loadClusterState(ws); !ok {
					return badInput("no cluster in %s (no %s and no %s)", ws, miniDirName, StateFile)
				}
			}
			if !yes {
				ok, err := confirm(cmd, fmt.Sprintf("Terminate the cluster in %s? Its nodes and their data are removed. [y/N] ", ws))
				if err != nil {
					return err
				}
				if !ok {
					fmt.Fprintln(cmd.OutOrStdout(), "Nothing was changed.")
					return nil
				}
			}
			if err := removeCluster(cmd.OutOrStdout(), cmd.ErrOrStderr(), ws); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cluster terminated. Kept %s and the master secret.\n", config.FileName)
			return nil
		},
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// addWaitFlag adds --wait, how long a command that creates the cluster waits for it to be ready.
func addWaitFlag(cmd *cobra.Command) {
	cmd.Flags().Duration("wait", DefaultWait, "how long to wait for every node to be attested and Ready and the cluster's services to be ready")
}

// confirm asks a yes/no question on the terminal; without one it refuses, so scripts must pass --yes.
func confirm(cmd *cobra.Command, question string) (bool, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
			return false, badInput("no terminal to confirm on; pass --yes")
		}
	}
	fmt.Fprint(cmd.OutOrStdout(), question)
	answer, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, failed(err)
	}
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "y" || answer == "yes", nil
}

func newStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node (attested as a member of this cluster, Ready in Kubernetes) and the cluster's services",
		Long: "Attest every node of the cluster against " + config.FileName + "'s measurements and the cluster ID of\n" +
			StateFile + ", and ask Kubernetes for each node's readiness and for the pods of the join service, the\n" +
			"key service and the verification service. Exit code 0 if every node is attested and Ready and every\n" +
			"service's pods are ready, 1 if not, or if the workspace has no running cluster. While the cluster has a\n" +
			"NodeUpgrade, status shows the upgrade: its phase, the nodes replaced of all to replace, the node in flight\n" +
			"and its step.",
		Args: cobra.NoArgs,
		RunE: runStatus,
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	cmd.Flags().String("trusted-root", defaultTrustedRoot(), trustedRootUsage)
	return cmd
}

func runStatus(cmd *cobra.Command, _ []string) error {
	if c, err := config.Load(filepath.Join(workspace(cmd), config.FileName)); err == nil && c.Provider.QEMU != nil {
		if _, initialised, _ := loadClusterState(workspace(cmd)); !initialised {
			return qemuStatus(cmd, c) // machines attested, Kubernetes not (yet) initialised
		}
	}
	h, err := checkCluster(cmd.Context(), workspace(cmd))
	if err != nil {
		return err
	}
	h.print(cmd.OutOrStdout())
	if h.Initialised && h.KubeErr == nil {
		if api, err := kubeapi.FromKubeconfig(filepath.Join(workspace(cmd), AdminKubeconfigFile)); err == nil {
			showUpgrade(cmd.Context(), cmd.OutOrStdout(), api)
		}
	}
	printImageSignature(cmd)
	printRegistryMirrors(cmd.OutOrStdout(), workspace(cmd))
	if len(h.notReady()) > 0 {
		return checkFailed(errors.New("not every node is attested and Ready, or not every service of the cluster is running"))
	}
	return nil
}

// clusterServices are this project's services in the cluster, as DaemonSets in kube-system.
var clusterServices = []string{joinservice.Name, keyservice.Name, verifyservice.Name}

// serviceStatus is one of [clusterServices] as status shows it.
type serviceStatus struct {
	Name    string
	State   string // "2/2", or why not
	Healthy bool
}

// daemonSetList is the part of a DaemonSet list that status reads.
type daemonSetList struct {
	Items []struct {
		Metadata struct{ Name string }
		Status   struct{ DesiredNumberScheduled, NumberReady int }
	}
}

// serviceReadiness returns how many pods of each of this project's services are ready, against expected: the
// number of nodes each service must run on.
func serviceReadiness(ctx context.Context, api *kubeapi.Client, expected map[string]int) ([]serviceStatus, error) {
	var list daemonSetList
	if err := api.Do(ctx, http.MethodGet, "/apis/apps/v1/namespaces/kube-system/daemonsets?labelSelector=app.kubernetes.io%2Fpart-of%3Dconstellation", "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing the cluster's services: %w", err)
	}
	return servicesFromList(list, expected), nil
}

// expectedPods is how many pods of each of [clusterServices] the cluster of nodes runs when it is healthy: the
// join and key services one per control-plane node, the verification service one per node.
func expectedPods(nodes []clusterNode) map[string]int {
	controlPlanes := 0
	for _, n := range nodes {
		if n.Role == provider.RoleControlPlane {
			controlPlanes++
		}
	}
	return map[string]int{joinservice.Name: controlPlanes, keyservice.Name: controlPlanes, verifyservice.Name: len(nodes)}
}

// servicesFromList reports every one of [clusterServices]: healthy when it is scheduled on, and has ready pods
// on, at least the expected number of nodes (the DaemonSet controller counts a node that just registered only a
// moment later; a Node object whose machine the provider no longer has keeps being counted until it is
// deleted, and 'status' shows that node's state separately).
func servicesFromList(list daemonSetList, expected map[string]int) []serviceStatus {
	var out []serviceStatus
	for _, name := range clusterServices {
		s := serviceStatus{Name: name, State: "not deployed"}
		for _, it := range list.Items {
			if it.Metadata.Name != name {
				continue
			}
			st := it.Status
			s.State = fmt.Sprintf("%d/%d", st.NumberReady, st.DesiredNumberScheduled)
			want := max(expected[name], 1)
			s.Healthy = st.DesiredNumberScheduled >= want && st.NumberReady >= want
			switch {
			case st.DesiredNumberScheduled == 0:
				s.State = "no node to run on"
			case st.DesiredNumberScheduled < want:
				s.State += fmt.Sprintf(" (scheduled on %d nodes, %d expected)", st.DesiredNumberScheduled, want)
			}
		}
		out = append(out, s)
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// kubeNode is a Kubernetes node as status shows it.
type kubeNode struct {
	// Ready is its Ready condition: "Ready", "NotReady" or "Unknown".
	Ready string
	// Continuous is its continuous attestation (see reattestation.Describe).
	Continuous string
	// Image is the node image its attestation proved, shortened, while its record is Trusted (see
	// reattestation.Record.TrustedImage); "-" if none.
	Image string
	// Kubelet is the kubelet version the node reports (the kubelet's word, not attested); "-" if none.
	Kubelet string
}

// nodeReadiness returns each Kubernetes node by name: its Ready condition, its continuous attestation and the
// node image that proved, and its kubelet's version.
func nodeReadiness(ctx context.Context, api *kubeapi.Client, now time.Time) (map[string]kubeNode, error) {
	var list struct {
		Items []struct {
			Metadata struct {
				Name   string
				UID    types.UID
				Labels map[string]string
			}
			Status struct {
				Conditions []struct{ Type, Status string }
				NodeInfo   struct{ KubeletVersion string }
			}
		}
	}
	if err := api.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	// The records of the continuous attestation, which only the join service writes; unreadable, every node
	// is pending.
	records, recordsErr := reattestation.Records(ctx, api)
	out := map[string]kubeNode{}
	for _, n := range list.Items {
		name := n.Metadata.Name
		kn := kubeNode{Ready: "Unknown", Image: "-", Kubelet: "-"}
		kn.Continuous = continuousState(name, n.Metadata.UID, n.Metadata.Labels, records, recordsErr, now)
		if _, q := n.Metadata.Labels[meshpeers.QuarantineLabel]; !q && recordsErr == nil {
			if r, ok := reattestation.RecordOf(records[name], name, n.Metadata.UID); ok && r.TrustedImage(now) != "" {
				kn.Image = policyupdate.ShortImage(r.TrustedImage(now))
			}
		}
		if v := n.Status.NodeInfo.KubeletVersion; v != "" {
			kn.Kubelet = v
		}
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" {
				switch c.Status {
				case "True":
					kn.Ready = "Ready"
				case "False":
					kn.Ready = "NotReady"
				}
			}
		}
		out[name] = kn
	}
	return out, nil
}

// continuousState is the continuous attestation of a node: its quarantine (a label only the control plane
// sets), or its record, which only the join service writes (reattestation.Describe); pending if the records
// could not be read (recordsErr).
func continuousState(name string, uid types.UID, labels map[string]string, records map[string]*coordinationv1.Lease, recordsErr error, now time.Time) string {
	if _, q := labels[meshpeers.QuarantineLabel]; !q && recordsErr != nil {
		return "pending (records unreadable)"
	}
	return reattestation.Describe(name, uid, labels, records[name], now)
}

// printImageSignature shows who signed the configured node image's measurements, marking a development
// build, or why they do not verify.
func printImageSignature(cmd *cobra.Command) {
	out := cmd.OutOrStdout()
	confPath := filepath.Join(workspace(cmd), config.FileName)
	c, err := config.Load(confPath)
	if err != nil || c.ImageDigest() == "" {
		return
	}
	res, err := verifyConfiguredImage(cmd, c, confPath, true)
	if err != nil {
		fmt.Fprintf(out, "Node image %s: measurements NOT VERIFIED: %v\n", c.ImageDigest(), err)
		return
	}
	fmt.Fprintf(out, "Node image %s: measurements verified offline, %s\n", c.ImageDigest(), signedBy(res))
}
