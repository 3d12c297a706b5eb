package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

func newApplyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Create the cluster of " + config.FileName + ": boot and attest the nodes, initialise Kubernetes",
		Long: "Create the nodes through the provider, attest each, send the master secret over aTLS to the attested\n" +
			"first control-plane node, which initialises Kubernetes and installs the in-cluster services; write\n" +
			AdminKubeconfigFile + " and " + StateFile + ". Every other node joins after the join service attested it.",
		Args: cobra.NoArgs,
		RunE: runMiniUp,
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	return cmd
}

func newTerminateCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "terminate",
		Short: "Remove the cluster and its nodes; keep the configuration and the master secret",
		Long: "Remove every node and what the provider created, then " + StateFile + " and " + AdminKubeconfigFile + ".\n" +
			config.FileName + " and the master secret stay: the master secret is what recovers data encrypted by\n" +
			"this cluster; delete it yourself when nothing needs it any more.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ws := workspace(cmd)
			if _, found, err := mini.ReadState(filepath.Join(ws, miniDirName)); err != nil {
				return badInput("%w", err)
			} else if !found {
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
			if err := newMiniDownCmd().RunE(cmd, nil); err != nil {
				return err
			}
			for _, f := range []string{StateFile, AdminKubeconfigFile} {
				if err := os.Remove(filepath.Join(ws, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return failed(err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cluster terminated. Kept %s and the master secret.\n", config.FileName)
			return nil
		},
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
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
		Short: "Show every node: attested as a member of this cluster, and Ready in Kubernetes",
		Long: "Attest every node of the cluster against " + config.FileName + "'s measurements and the cluster ID of\n" +
			StateFile + ", and ask Kubernetes for each node's readiness. Exit code 0 if every node is attested\n" +
			"and Ready, 1 if not.",
		Args: cobra.NoArgs,
		RunE: runStatus,
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	return cmd
}

func runStatus(cmd *cobra.Command, _ []string) error {
	ws := workspace(cmd)
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		return badInput("%w", err)
	}
	dir := filepath.Join(ws, miniDirName)
	state, found, err := mini.ReadState(dir)
	if err != nil {
		return badInput("%w", err)
	}
	if !found || !state.DaemonAlive() {
		return checkFailed(fmt.Errorf("no running cluster in %s; create one with 'constellation apply'", ws))
	}
	cs, initialised, err := loadClusterState(ws)
	if err != nil {
		return badInput("%s: %w", StateFile, err)
	}
	policy := c.Attestation.Measurements
	if initialised {
		if policy, err = withClusterID(policy, cs); err != nil {
			return badInput("%w", err)
		}
	}
	roots, err := readCertificates(filepath.Join(dir, "ak-ca", "ca-cert.pem"))
	if err != nil {
		return failed(err)
	}
	var ready map[string]string
	var kubeErr error
	if initialised {
		ready, kubeErr = nodeReadiness(cmd.Context(), filepath.Join(ws, AdminKubeconfigFile))
	}

	out := cmd.OutOrStdout()
	if initialised {
		fmt.Fprintf(out, "Cluster %s…, Kubernetes API at https://%s\n", cs.ClusterID[:16], cs.Endpoint)
	} else {
		fmt.Fprintln(out, "Nodes booted; Kubernetes not initialised")
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tADDRESS\tATTESTATION\tKUBERNETES")
	healthy := true
	for _, n := range state.Nodes {
		att := "member of this cluster"
		if !initialised {
			att = "runs the configured image"
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
		if _, err := verifyNode(ctx, n.IP+":"+strconv.Itoa(verifyservice.Port), miniPolicy(roots, policy), nil, 0); err != nil {
			att, healthy = "FAILED: "+firstLine(err.Error()), false
		}
		cancel()
		k8s := "-"
		switch {
		case !initialised:
		case kubeErr != nil:
			k8s, healthy = "unknown", false
		case ready[n.Name] == "":
			k8s, healthy = "not registered", false
		default:
			k8s = ready[n.Name]
			healthy = healthy && k8s == "Ready"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, n.IP, att, k8s)
	}
	tw.Flush()
	if kubeErr != nil {
		fmt.Fprintf(out, "Kubernetes API: %v\n", kubeErr)
	}
	if !healthy {
		return checkFailed(errors.New("not every node is attested and Ready"))
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// nodeReadiness returns each Kubernetes node's Ready condition ("Ready", "NotReady" or "Unknown") by name.
func nodeReadiness(ctx context.Context, kubeconfigPath string) (map[string]string, error) {
	api, err := kubeapi.FromKubeconfig(kubeconfigPath)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := api.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	out := map[string]string{}
	for _, n := range list.Items {
		out[n.Metadata.Name] = "Unknown"
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" {
				switch c.Status {
				case "True":
					out[n.Metadata.Name] = "Ready"
				case "False":
					out[n.Metadata.Name] = "NotReady"
				}
			}
		}
	}
	return out, nil
}
