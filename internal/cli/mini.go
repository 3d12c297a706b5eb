package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/daemon"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// miniDirName is the provider's directory inside a workspace.
const miniDirName = "constellation-mini"

func newMiniCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mini",
		Short: "Run a local cluster of measured node sandboxes on this machine",
	}
	cmd.PersistentFlags().String("workspace", ".", "directory with "+config.FileName)
	cmd.AddCommand(newMiniUpCmd(), newMiniDownCmd(), newMiniRebootCmd(), newMiniStopCmd(), newMiniAddWorkerCmd(), newMiniLoadCmd(), newMiniRegisterImageCmd(), newMiniDaemonCmd())
	return cmd
}

func workspace(cmd *cobra.Command) string {
	ws, _ := cmd.Flags().GetString("workspace")
	return ws
}

// loadMiniConfig reads the workspace configuration and applies node-count overrides.
func loadMiniConfig(cmd *cobra.Command) (*config.Config, string, error) {
	path := filepath.Join(workspace(cmd), config.FileName)
	c, err := config.Load(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", badInput("no %s in %s; run 'constellation config generate mini' first", config.FileName, workspace(cmd))
		}
		return nil, "", badInput("%w", err)
	}
	if c.Provider.Mini == nil {
		return c, path, nil // another provider: the flags of 'mini up' do not apply
	}
	if cmd.Flags().Changed("control-planes") {
		c.Provider.Mini.ControlPlanes, _ = cmd.Flags().GetInt("control-planes")
	}
	if cmd.Flags().Changed("workers") {
		c.Provider.Mini.Workers, _ = cmd.Flags().GetInt("workers")
	}
	if err := c.Validate(); err != nil {
		return nil, "", badInput("%w", err)
	}
	return c, path, nil
}

func newMiniUpCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up [--control-planes N] [--workers M]",
		Short: "Boot a local cluster: measured boot of every node, then attestation of every node",
		Long: "Write " + config.FileName + " from the node image if the workspace has none ('config generate mini'),\n" +
			"then create the cluster ('apply'): it returns when every node is attested, registered and Ready and the\n" +
			"cluster's services are ready, as 'status' checks them, or fails after --wait naming what is not ready.\n" +
			"It refuses while this workspace's cluster runs. Leftovers of one that did not shut down are removed\n" +
			"first; if that cluster was initialised, its nodes boot again with their state disks and it is recovered.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Stat(filepath.Join(workspace(cmd), config.FileName)); errors.Is(err, os.ErrNotExist) {
				imageDir, _ := cmd.Flags().GetString("image-dir")
				cps, _ := cmd.Flags().GetInt("control-planes")
				workers, _ := cmd.Flags().GetInt("workers")
				if err := generateMiniConfig(cmd, imageDir, workspace(cmd), cps, workers, false); err != nil {
					return err
				}
			}
			return runMiniUp(cmd, args)
		},
	}
	cmd.Flags().String("image-dir", "_out/node-image", "node image to write "+config.FileName+" from, if the workspace has none")
	addSignatureFlags(cmd)
	cmd.Flags().Int("control-planes", 1, "number of control-plane nodes (default from the configuration)")
	cmd.Flags().Int("workers", 2, "number of worker nodes (default from the configuration)")
	cmd.Flags().Bool("skip-init", false, "boot and attest the nodes, but do not initialise Kubernetes")
	addWaitFlag(cmd)
	return cmd
}

func runMiniUp(cmd *cobra.Command, _ []string) error {
	out := cmd.OutOrStdout()
	c, confPath, err := loadMiniConfig(cmd)
	if err != nil {
		return err
	}
	if c.Provider.QEMU != nil && cmd.Name() != "apply" {
		return badInput("%s configures the QEMU provider; create its cluster with 'constellation apply'", confPath)
	}
	// The measurements decide which nodes get the cluster's secrets: they are used only as the signed
	// measurements of the configured image, checked again at every start.
	allowDev, _ := cmd.Flags().GetBool("allow-dev-signed")
	signature, err := verifyConfiguredImage(cmd, c, confPath, allowDev)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Node image %s: measurements verified offline, %s\n", c.ImageDigest(), signedBy(signature))
	warnDevSigned(cmd, signature)
	if c.Provider.QEMU != nil {
		return runQEMUApply(cmd, c)
	}
	dir := filepath.Join(workspace(cmd), miniDirName)
	state, found, err := mini.ReadState(dir)
	if err != nil {
		return badInput("%w", err)
	}
	if found && state.DaemonAlive() && cmd.Name() == "apply" {
		if _, initialised, err := loadClusterState(workspace(cmd)); err == nil && initialised {
			return applyToRunningCluster(cmd, c, confPath, signature)
		}
	}
	if found && state.DaemonAlive() {
		return badInput("a mini cluster is already running (provider pid %d, %d nodes); run 'constellation mini down' first", state.DaemonPID, len(state.Nodes))
	}
	cs, initialised, err := loadClusterState(workspace(cmd))
	if err != nil {
		return badInput("%s: %w", StateFile, err)
	}
	skipInit, _ := cmd.Flags().GetBool("skip-init")
	disks := len(mini.StateDisks(dir)) > 0
	if initialised && !disks && !skipInit {
		// Recover or initialise is decided from the workspace and the disks; disks that went missing must not
		// turn a recorded cluster into a new, empty one over its state file and kubeconfig.
		return badInput("this workspace records cluster %s… (%s), but its nodes' state disks are gone; refusing to create a new cluster over it. "+
			"Restore the disks under %s to bring it back, or remove it with 'constellation mini down' to start a new one", shortID(cs.ClusterID), StateFile, dir)
	}
	if found {
		fmt.Fprintln(out, "Cleaning up the leftovers of a previous cluster that did not shut down")
		if err := mini.Cleanup(dir, state); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: cleanup: %v\n", err)
		}
	} else if mini.NetworkInUse() {
		return badInput("the node network %s exists but this workspace has no cluster: another mini cluster runs on this machine; run 'constellation mini down' in its workspace", mini.BridgeName)
	}
	// State disks left from an earlier cluster: if that cluster was initialised (the workspace has its state
	// file), it did not shut down and its nodes come back with their data, by recovery. Otherwise they belong
	// to no cluster this workspace could bring back, and the new nodes get empty disks.
	recovering := disks && initialised && !skipInit
	switch {
	case recovering:
		fmt.Fprintf(out, "The nodes' state disks hold cluster %s… (%s): it comes back with its data by 'constellation recover'.\n"+
			"To create a new cluster instead, remove this one first with 'constellation mini down'.\n", shortID(cs.ClusterID), StateFile)
	case disks && !initialised:
		fmt.Fprintf(out, "Removing the state disks of an earlier cluster that this workspace does not record (no %s)\n", StateFile)
		if err := mini.RemoveStateDisks(dir); err != nil {
			return failed(err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return failed(err)
	}
	exe, err := os.Executable()
	if err != nil {
		return failed(err)
	}
	// Only whoever holds the init secret may initialise (or later recover) the nodes: the provider gets its
	// hash for their instance metadata. A retried apply keeps the secret of the workspace.
	initSecret, err := loadOrCreateInitSecret(workspace(cmd))
	if err != nil {
		return failed(err)
	}
	// Only the cluster's upgrade controller may have the provider create and delete nodes: the provider gets
	// the hash of the controller credential, the cluster the credential itself (after init, below).
	controllerCredential, err := loadOrCreateControllerCredential(workspace(cmd))
	if err != nil {
		return failed(err)
	}
	if err := daemon.Start(out, dir, exe, providerDaemonArgs(workspace(cmd), c, initSecret, controllerCredential), "the cluster", func() (daemon.Status, bool) {
		s, ok, _ := mini.ReadState(dir)
		state = s
		return s.Status, ok
	}); err != nil {
		return failed(err)
	}

	// Every node must prove, before anything else happens, that it booted the configured image.
	roots, err := readCertificates(filepath.Join(dir, "ak-ca", "ca-cert.pem"))
	if err != nil {
		return failed(err)
	}
	for _, n := range state.Nodes {
		endpoint := n.IP + ":" + strconv.Itoa(verifyservice.Port)
		fmt.Fprintf(out, "  attesting %s at %s\n", n.Name, endpoint)
		res, err := verifyNode(cmd.Context(), endpoint, miniPolicy(roots, c.Attestation.Measurements), cmd, 2*time.Minute)
		if err != nil {
			console := filepath.Join(dir, "nodes", n.Name, "sandbox", "console.log")
			return checkFailed(fmt.Errorf("node %s failed attestation: %w\nLast lines of its console (%s):\n%s\nThe cluster is still up for inspection; run 'constellation mini down' to remove it",
				n.Name, err, console, tailFile(console, 15)))
		}
		fmt.Fprintf(out, "  %s verified: %s\n", n.Name, res.Node)
	}
	if skipInit {
		fmt.Fprintf(out, "Mini cluster up: %d node(s) booted from %s and attested against %s (Kubernetes not initialised)\n", len(state.Nodes), c.Provider.Mini.ImageDigest, confPath)
		return nil
	}
	if recovering {
		if err := runRecover(cmd, nil); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "  initialising Kubernetes on %s over aTLS (the master secret goes only to the attested node)\n", state.Nodes[0].Name)
		var kmsConf *kms.KMIPConfig
		if c.KMS != nil {
			kmsConf = c.KMS.KMIP
			fmt.Fprintf(out, "  the master secret stays wrapped: the node unwraps it with the KMS at %s\n", kmsConf.Endpoint)
		}
		if cs, err = initCluster(cmd.Context(), workspace(cmd), state.Nodes[0].IP, c.ImageDigest(), miniPolicy(roots, c.Attestation.Measurements), kmsConf, c); err != nil {
			return failed(fmt.Errorf("%w\nLast lines of %s's console:\n%s", err, state.Nodes[0].Name, tailFile(filepath.Join(dir, "nodes", state.Nodes[0].Name, "sandbox", "console.log"), 15)))
		}
		fmt.Fprintf(out, "  Kubernetes initialised on %s, cluster ID %s…\n", state.Nodes[0].Name, cs.ClusterID[:16])
	}
	// The cluster's upgrade controller finds the provider and the controller credential in a Secret, which
	// apply writes as soon as the API server answers (a recovered cluster's may take a while).
	access := provider.FleetAccess{Provider: metadata.ProviderName, Endpoint: state.MetadataURL, Credential: controllerCredential}
	if !recovering {
		if err := storeFleetAccess(cmd.Context(), workspace(cmd), access); err != nil {
			return failed(err)
		}
		fmt.Fprintf(out, "  the controller credential is in the Secret %s/%s\n", provider.FleetSecretNamespace, provider.FleetSecretName)
	}
	// Done when 'status' would say so: every node proves membership of this cluster (the others join through
	// the join service) and is Ready, and the pods of the cluster's services are ready.
	limit, _ := cmd.Flags().GetDuration("wait")
	fmt.Fprintf(out, "  waiting up to %s for every node to join and be Ready, and for the cluster's services\n", limit)
	if err := newReadyWaiter(workspace(cmd), limit, out).wait(cmd.Context()); err != nil {
		fmt.Fprintf(out, "The nodes' consoles: %s\n", filepath.Join(dir, "nodes", "*", "sandbox", "console.log"))
		return err
	}
	if recovering {
		if err := storeFleetAccess(cmd.Context(), workspace(cmd), access); err != nil {
			return failed(err)
		}
		fmt.Fprintf(out, "  the controller credential is in the Secret %s/%s\n", provider.FleetSecretNamespace, provider.FleetSecretName)
	}
	fmt.Fprintf(out, "Mini cluster up: Kubernetes at https://%s with %d node(s), every node attested and Ready; kubeconfig %s\n", cs.Endpoint, len(state.Nodes), filepath.Join(workspace(cmd), AdminKubeconfigFile))
	return nil
}

// applyToRunningCluster applies the configuration to the workspace's running, initialised cluster, whose
// configured image's signed measurements the caller verified (signature): if it names another node image than
// the one the state file records, it upgrades the cluster to it (imageUpgrade) and to the Kubernetes version
// the signature names (an image without one is refused), or follows, finishes or rolls back the upgrade that
// runs. Ctrl-C stops following and leaves the upgrade running.
func applyToRunningCluster(cmd *cobra.Command, c *config.Config, confPath string, signature *signed.Result) error {
	ws := workspace(cmd)
	cs, _, err := loadClusterState(ws)
	if err != nil {
		return badInput("%s: %w", StateFile, err)
	}
	if cs.ImageDigest == "" || len(cs.Measurements) == 0 {
		return badInput("%s records no node image (an earlier CLI created the cluster): add the imageDigest and measurements of the image the cluster runs to it, "+
			"then apply again", filepath.Join(ws, StateFile))
	}
	up, _, err := policyUpgradeOf(cmd)
	if err != nil {
		return err
	}
	// The upgrade controller moves the cluster's Kubernetes by the version the image runs (kubeadm's upgrade
	// path, version skew): that version counts only as signed. A rollback to the recorded image decides nothing
	// by it.
	k8s, err := imageKubernetesVersion(signature)
	if err != nil && c.ImageDigest() != cs.ImageDigest {
		return checkFailed(fmt.Errorf("%w; nothing was changed", err))
	}
	limit, _ := cmd.Flags().GetDuration("wait")
	dir := filepath.Join(ws, miniDirName)
	iu := &imageUpgrade{
		Policy: up, API: up.API, Out: cmd.OutOrStdout(), Deadline: time.Now().Add(limit),
		From: clusterImage{Digest: cs.ImageDigest, Measurements: cs.Measurements},
		To:   clusterImage{Digest: c.ImageDigest(), Measurements: c.Attestation.Measurements, KubernetesVersion: k8s},
		Register: func(ctx context.Context) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			defer cancel()
			return mini.RegisterNodeImage(ctx, dir, c.ImagePath(confPath))
		},
		Record: func(img clusterImage) error {
			cs.ImageDigest, cs.Measurements = img.Digest, img.Measurements
			return writeClusterState(ws, cs)
		},
		Ready: func(ctx context.Context) error {
			fmt.Fprintf(cmd.OutOrStdout(), "  waiting up to %s for every node to be attested and Ready, and for the cluster's services\n", limit)
			return newReadyWaiter(ws, limit, cmd.OutOrStdout()).wait(ctx)
		},
		Reconnect: func(ctx context.Context) (*kubeapi.Client, []string, error) { return reconnectAPI(ctx, ws, c) },
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return iu.run(ctx)
}

func newMiniDownCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the local cluster and everything it created; keep the configuration and the master secret",
		Long: "Remove the cluster, as 'terminate --yes' does, without asking: " + removedText + "\n" +
			"The next 'mini up' creates a new cluster.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := removeCluster(cmd.OutOrStdout(), cmd.ErrOrStderr(), workspace(cmd)); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Mini cluster removed. Kept %s and the master secret.\n", config.FileName)
			return nil
		},
	}
}

func newMiniDaemonCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "daemon",
		Short:  "Run the provider of a mini cluster (started by 'mini up')",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, err := loadMiniConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			p := &mini.Provider{
				Dir: filepath.Join(workspace(cmd), miniDirName),
				Log: slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil)).With("component", "mini-provider"),
			}
			hash, _ := cmd.Flags().GetString("init-secret-hash")
			credHash, _ := cmd.Flags().GetString("controller-credential-hash")
			spec, err := daemonSpec(c, workspace(cmd), hash, credHash)
			if err != nil {
				return err
			}
			return p.Run(ctx, spec)
		},
	}
	cmd.Flags().Int("control-planes", 1, "")
	cmd.Flags().Int("workers", 2, "")
	cmd.Flags().String("init-secret-hash", "", "SHA-256 (hex) of the cluster's init secret, for the nodes' instance metadata")
	cmd.Flags().String("controller-credential-hash", "", "SHA-256 (hex) of the controller credential, with which the cluster's upgrade controller has nodes created and deleted")
	return cmd
}

// providerDaemonArgs are the arguments of the provider daemon that 'apply' starts: the cluster's size, the
// hash of the init secret (never the secret), which the provider serves to the nodes as instance metadata, and
// the hash of the controller credential (never the credential), with which the provider authenticates its
// upgrade controller.
func providerDaemonArgs(ws string, c *config.Config, initSecret, controllerCredential []byte) []string {
	return []string{"mini", "daemon", "--workspace", ws,
		"--control-planes", strconv.Itoa(c.Provider.Mini.ControlPlanes), "--workers", strconv.Itoa(c.Provider.Mini.Workers),
		"--init-secret-hash", initSecretHash(initSecret), "--controller-credential-hash", controllerCredentialHash(controllerCredential)}
}

// daemonSpec is what the provider daemon boots. Without an init-secret hash the nodes refuse to be
// initialised, without a controller-credential hash the provider creates and deletes no nodes on request (the
// provider warns).
func daemonSpec(c *config.Config, ws, initSecretHashHex, controllerCredentialHashHex string) (mini.Spec, error) {
	spec := mini.Spec{
		ControlPlanes: c.Provider.Mini.ControlPlanes, Workers: c.Provider.Mini.Workers,
		Image: c.ImagePath(filepath.Join(ws, config.FileName)), ImageDigest: c.Provider.Mini.ImageDigest, Cmdline: nodeimage.DefaultCmdline,
		RegistryHostPort: registryHostPort(c),
	}
	if initSecretHashHex != "" {
		hash, err := hex.DecodeString(initSecretHashHex)
		if err != nil || len(hash) != sha256.Size {
			return mini.Spec{}, badInput("--init-secret-hash must be a SHA-256 in hex (64 digits)")
		}
		spec.InitSecretHash = hash
	}
	if controllerCredentialHashHex != "" {
		hash, err := hex.DecodeString(controllerCredentialHashHex)
		if err != nil || len(hash) != sha256.Size {
			return mini.Spec{}, badInput("--controller-credential-hash must be a SHA-256 in hex (64 digits)")
		}
		spec.ControllerCredentialHash = hash
	}
	return spec, nil
}

// tailFile returns the last n lines of a file, or a note why it cannot.
func tailFile(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// runningMini returns the provider directory of the workspace's running mini cluster.
func runningMini(cmd *cobra.Command) (string, error) {
	dir := filepath.Join(workspace(cmd), miniDirName)
	state, found, err := mini.ReadState(dir)
	if err != nil {
		return "", badInput("%w", err)
	}
	if !found || !state.DaemonAlive() {
		return "", badInput("no running mini cluster in %s", workspace(cmd))
	}
	return dir, nil
}

func newMiniAddWorkerCmd() *cobra.Command {
	var image string
	cmd := &cobra.Command{
		Use:   "add-worker",
		Short: "Boot a new worker into the running cluster; it joins by itself once the join service has attested it",
		Long: `Boot a new worker into the running cluster, as a cloud's scaling does. It attests to the join service and
joins by itself. With --image it boots another node image instead of the cluster's, as a malicious
infrastructure operator could: the join service refuses it unless its measurements match the cluster's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := runningMini(cmd)
			if err != nil {
				return err
			}
			if image != "" {
				if _, err := os.Stat(image); err != nil {
					return badInput("--image: %w", err)
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			name, err := mini.AddWorker(ctx, dir, image)
			if err != nil {
				return failed(fmt.Errorf("adding a worker: %w", err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s booted: it attests to the join service and joins the cluster if its measurements match\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "boot the worker from this node image instead of the cluster's")
	return cmd
}

func newMiniRegisterImageCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "register-image FILE",
		Short: "Make a node image known to the provider, which then boots nodes from it when the cluster's upgrade controller asks; prints its digest",
		Long: `Make a node image known to the running cluster's provider. The provider copies the image, computes its
digest from the copy and prints it ("sha256:<hex>"): the cluster's upgrade controller can then have nodes
created from that image by its digest. Before every node it boots from it, the provider checks the copy's
digest again. Whether a node from the image joins is decided by attestation: the join service admits it only
if its measurements match the cluster's.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := runningMini(cmd)
			if err != nil {
				return err
			}
			if info, err := os.Stat(args[0]); err != nil {
				return badInput("%w", err)
			} else if !info.Mode().IsRegular() {
				return badInput("%s is not a file", args[0])
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			digest, err := mini.RegisterNodeImage(ctx, dir, args[0])
			if err != nil {
				return failed(fmt.Errorf("registering %s: %w", args[0], err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), digest)
			return nil
		},
	}
}

func newMiniRebootCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reboot NODE",
		Short: "Power-cycle a node: its TPM resets, it boots the image again with its state disk and rejoins",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := runningMini(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			if err := mini.RebootNode(ctx, dir, args[0]); err != nil {
				return failed(fmt.Errorf("rebooting %s: %w", args[0], err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s rebooted: it attests again and rejoins the cluster with the key of its state disk\n", args[0])
			return nil
		},
	}
}

func newMiniStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop NODE",
		Short: "Power a node off (its state disk and TPM stay); 'mini reboot NODE' starts it again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := runningMini(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			if err := mini.StopNode(ctx, dir, args[0]); err != nil {
				return failed(fmt.Errorf("stopping %s: %w", args[0], err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s stopped: 'constellation mini reboot %s' starts it again\n", args[0], args[0])
			return nil
		},
	}
}

// shortID is the start of a cluster ID for messages (the whole of a shorter, damaged one).
func shortID(id string) string { return id[:min(16, len(id))] }
