package cli

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/provider/daemon"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// qemuDirName is the QEMU provider's directory in a workspace.
const qemuDirName = "constellation-qemu"

func newQEMUCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "qemu",
		Short:  "The provider of QEMU virtual machines on this machine",
		Hidden: true,
	}
	daemon := &cobra.Command{
		Use:   "daemon",
		Short: "Run the provider of a QEMU cluster (started by 'apply')",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadQEMUConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			spec, err := qemuSpec(c, workspace(cmd), cmd)
			if err != nil {
				return err
			}
			p := &qemu.Provider{
				Dir: filepath.Join(workspace(cmd), qemuDirName),
				Log: slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil)).With("component", "qemu-provider"),
			}
			return p.Run(ctx, spec)
		},
	}
	daemon.Flags().String("workspace", ".", "directory with "+config.FileName)
	daemon.Flags().String("init-secret-hash", "", "SHA-256 (hex) of the cluster's init secret, for the nodes' instance metadata")
	cmd.AddCommand(daemon)
	return cmd
}

// loadQEMUConfig reads the workspace configuration, which must be one of the QEMU provider.
func loadQEMUConfig(cmd *cobra.Command) (*config.Config, error) {
	path := filepath.Join(workspace(cmd), config.FileName)
	c, err := config.Load(path)
	if err != nil {
		return nil, badInput("%w", err)
	}
	if c.Provider.QEMU == nil {
		return nil, badInput("%s configures no QEMU provider (provider.qemu)", path)
	}
	return c, nil
}

// qemuSpec is what the provider daemon boots.
func qemuSpec(c *config.Config, ws string, cmd *cobra.Command) (qemu.Spec, error) {
	q := c.Provider.QEMU
	spec := qemu.Spec{
		ControlPlanes: q.ControlPlanes, Workers: q.Workers, MemoryMiB: q.MemoryMiB, Accel: q.Accelerator,
		Image: c.ImagePath(filepath.Join(ws, config.FileName)), ImageDigest: q.ImageDigest,
	}
	if l := snpLaunchOf(c, filepath.Join(ws, config.FileName)); l != nil {
		spec.SNP = l
		if c.Attestation.SNP != nil {
			for _, m := range c.Attestation.SNP.Measurements {
				spec.SNPMeasurements = append(spec.SNPMeasurements, m)
			}
		}
	}
	if hexHash, _ := cmd.Flags().GetString("init-secret-hash"); hexHash != "" {
		hash, err := hex.DecodeString(hexHash)
		if err != nil || len(hash) != sha256.Size {
			return qemu.Spec{}, badInput("--init-secret-hash must be a SHA-256 in hex (64 digits)")
		}
		spec.InitSecretHash = hash
	}
	return spec, nil
}

// generateQEMUConfig writes the workspace configuration for the QEMU provider from a built bootable disk
// image: its digest, and the measurements a machine booting it presents (the image's PCRs 4, 11, 12, 13 from
// measurements-uefi.json once its signature verifies for the disk image's digest and qemu-vtpm, and the
// firmware's PCRs pinned for the provider's OVMF build).
func generateQEMUConfig(cmd *cobra.Command, imageDir, workspace string, controlPlanes, workers int, force bool) error {
	manifestPath := filepath.Join(imageDir, bootimage.ManifestFile)
	raw, err := os.ReadFile(manifestPath)
	if err != nil {
		return badInput("reading the disk image's description: %w (build the image with 'make node-image' or pass --image-dir)", err)
	}
	var disk bootimage.Disk
	if err := json.Unmarshal(raw, &disk); err != nil {
		return badInput("%s: %w", manifestPath, err)
	}
	measPath := filepath.Join(imageDir, bootimage.MeasurementsFile)
	rawMeas, signature, err := verifyImageMeasurements(cmd, measPath, disk.Digest, attestation.QEMUVTPM.Name)
	if err != nil {
		return err
	}
	warnDevSigned(cmd, signature)
	var image measurements.M
	if err := json.Unmarshal(rawMeas, &image); err != nil {
		return badInput("%s: %w", measPath, err)
	}
	policy, err := qemu.Policy(image)
	if err != nil {
		return badInput("%s: %w", measPath, err)
	}
	imagePath, err := filepath.Abs(filepath.Join(imageDir, bootimage.ImageFile))
	if err != nil {
		return badInput("%w", err)
	}
	c := &config.Config{
		Version:     config.Version,
		Provider:    config.Provider{QEMU: &config.QEMU{ControlPlanes: controlPlanes, Workers: workers, Image: imagePath, ImageDigest: disk.Digest}},
		Attestation: config.Attestation{Variant: attestation.QEMUVTPM.Name, Measurements: policy},
	}
	path := filepath.Join(workspace, config.FileName)
	switch confidential, _ := cmd.Flags().GetString("confidential"); confidential {
	case "":
	case config.ConfidentialSEVSNP:
		launchInputs, snpPolicy, m, err := generateQEMUSNP(cmd, imageDir, image)
		if err != nil {
			return err
		}
		c.Provider.QEMU.Confidential, c.Provider.QEMU.SNP = config.ConfidentialSEVSNP, launchInputs
		c.Attestation = config.Attestation{Variant: attestation.QEMUSEVSNP.Name, SNP: snpPolicy}
		if err := c.Write(path, force); err != nil {
			return badInput("%w", err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s: %d control plane(s), %d worker(s), disk image %s, SEV-SNP machines (%d vCPUs of type %s, guest features %#x) with the expected launch measurement %x of firmware %s (%s) and UKI %s; signed: %s.\n",
			path, controlPlanes, workers, disk.Digest, qemu.CPUs, launchInputs.VCPUType, launchInputs.GuestFeatures, m, launchInputs.Firmware, launchInputs.FirmwareDigest, launchInputs.UKI, signedBy(signature))
		fmt.Fprintf(cmd.ErrOrStderr(), "NOTE: the expected launch measurement trusts %s as the machines' firmware: the node image's signature does not cover it. "+
			"Make sure it is the OVMF build you intend the machines to run (apply refuses any other file).\n", launchInputs.Firmware)
		return nil
	default:
		return badInput("--confidential %q: want sev-snp, or none", confidential)
	}
	if err := c.Write(path, force); err != nil {
		return badInput("%w", err)
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: qemu-vtpm machines run on no confidential hardware: the host runs their firmware and TPM and can read their memory; "+
		"attestation proves their boot chain only against a host that does not forge the TPM.")
	fw, _ := qemu.PinnedFirmware()
	fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s: %d control plane(s), %d worker(s), disk image %s, %d expected PCRs (firmware of OVMF %s); signed: %s.\n",
		path, controlPlanes, workers, disk.Digest, len(policy), fw.OVMF, signedBy(signature))
	return nil
}

// qemuPolicyRoots reads the QEMU provider's attestation-key CA of a workspace.
func qemuPolicyRoots(ws string) ([]*x509.Certificate, error) {
	return readCertificates(qemu.AKCAPath(filepath.Join(ws, qemuDirName)))
}

// runQEMUApply creates the machines of a QEMU configuration through the provider daemon, attests each, sends
// the master secret over aTLS to the attested first control-plane machine, which initialises Kubernetes, and
// waits, as mini's apply does, until every machine is attested as a member of the cluster and Ready (the
// others join through the join service) and the cluster's services are ready.
func runQEMUApply(cmd *cobra.Command, c *config.Config) error {
	out := cmd.OutOrStdout()
	ws := workspace(cmd)
	dir := filepath.Join(ws, qemuDirName)
	state, found, err := qemu.ReadState(dir)
	if err != nil {
		return badInput("%w", err)
	}
	if found && state.DaemonAlive() {
		return badInput("a QEMU cluster is already running (provider pid %d, %d machines); run 'constellation terminate' first", state.DaemonPID, len(state.Nodes))
	}
	if snpLaunchOf(c, filepath.Join(ws, config.FileName)) != nil {
		if err := (qemu.SNPHost{}).Check(); err != nil {
			return badInput("%w", err)
		}
	}
	if found {
		fmt.Fprintln(out, "Cleaning up the leftovers of a previous cluster that did not shut down")
		if err := qemu.Cleanup(dir, state); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: cleanup: %v\n", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return failed(err)
	}
	exe, err := os.Executable()
	if err != nil {
		return failed(err)
	}
	initSecret, err := loadOrCreateInitSecret(ws)
	if err != nil {
		return failed(err)
	}
	if err := daemon.Start(out, dir, exe, []string{"qemu", "daemon", "--workspace", ws, "--init-secret-hash", initSecretHash(initSecret)}, "the machines", func() (daemon.Status, bool) {
		s, ok, _ := qemu.ReadState(dir)
		state = s
		return s.Status, ok
	}); err != nil {
		return failed(err)
	}
	roots, err := qemuPolicyRoots(ws)
	if err != nil {
		return failed(err)
	}
	policy, err := c.Attestation.Policy(roots)
	if err != nil {
		return badInput("%w", err)
	}
	// An emulated machine (TCG) takes many minutes for Kubernetes: unless --wait says otherwise, wait longer.
	wait, _ := cmd.Flags().GetDuration("wait")
	if !cmd.Flags().Changed("wait") {
		wait = qemuDefaultWait
	}
	start := time.Now()
	for _, n := range state.Nodes {
		endpoint := n.IP + ":" + strconv.Itoa(verifyservice.Port)
		fmt.Fprintf(out, "  attesting %s at %s (%s; the machine boots under %s)\n", n.Name, endpoint, n.Console, n.Accel)
		ctx, poweredOff := whileRunning(cmd.Context(), n.PID)
		res, err := verifyNode(ctx, endpoint, policy, cmd, wait)
		off := poweredOff()
		if err != nil && off {
			return failed(fmt.Errorf("machine %s powered off while it booted (the node refused to boot, or QEMU failed: %s)\nLast lines of its console (%s):\n%s\nRun 'constellation terminate' to remove the cluster",
				n.Name, filepath.Join(dir, "nodes", n.Name, "qemu.log"), n.Console, tailFile(n.Console, 15)))
		}
		if err != nil {
			return checkFailed(fmt.Errorf("node %s failed attestation: %w\nLast lines of its console (%s):\n%s\nThe machines are still up for inspection; run 'constellation terminate' to remove them",
				n.Name, err, n.Console, tailFile(n.Console, 15)))
		}
		fmt.Fprintf(out, "  %s verified: %s\n", n.Name, res.Node)
	}
	fmt.Fprintf(out, "  every machine attested after %s\n", time.Since(start).Round(time.Second))
	if skip, _ := cmd.Flags().GetBool("skip-init"); skip {
		fmt.Fprintf(out, "QEMU cluster up: %d machine(s) booted from %s and attested against %s (Kubernetes not initialised)\n",
			len(state.Nodes), c.Provider.QEMU.ImageDigest, filepath.Join(ws, config.FileName))
		return nil
	}
	first := state.Nodes[0]
	fmt.Fprintf(out, "  initialising Kubernetes on %s over aTLS (the master secret goes only to the attested node)\n", first.Name)
	start = time.Now()
	var kmsConf *kms.KMIPConfig
	if c.KMS != nil {
		kmsConf = c.KMS.KMIP
	}
	ictx, cancel := context.WithTimeout(cmd.Context(), wait)
	cs, err := initCluster(ictx, ws, first.IP, c.ImageDigest(), policy, kmsConf, c)
	cancel()
	if err != nil {
		return failed(fmt.Errorf("%w\nLast lines of %s's console (%s):\n%s", err, first.Name, first.Console, tailFile(first.Console, 15)))
	}
	fmt.Fprintf(out, "  Kubernetes initialised on %s after %s, cluster ID %s…\n", first.Name, time.Since(start).Round(time.Second), cs.ClusterID[:16])
	fmt.Fprintf(out, "  waiting up to %s for every node to join and be Ready, and for the cluster's services\n", wait)
	start = time.Now()
	if err := newReadyWaiter(ws, wait, out).wait(cmd.Context()); err != nil {
		fmt.Fprintf(out, "The machines' consoles: %s\n", qemu.ConsolePath(filepath.Join(dir, "nodes", "*")))
		return err
	}
	fmt.Fprintf(out, "QEMU cluster up after %s more: Kubernetes at https://%s with %d machine(s) booted from %s, every node attested and Ready; kubeconfig %s\n",
		time.Since(start).Round(time.Second), cs.Endpoint, len(state.Nodes), c.Provider.QEMU.ImageDigest, filepath.Join(ws, AdminKubeconfigFile))
	return nil
}

// qemuDefaultWait is how long apply waits on a QEMU cluster unless --wait is given: each phase (boot and
// attestation, Kubernetes init, joining and readiness) of emulated machines takes many minutes.
const qemuDefaultWait = time.Hour

// whileRunning returns a context that ends when the process pid (a machine's QEMU) has exited, and a
// function that stops watching and tells whether it had.
func whileRunning(parent context.Context, pid int) (context.Context, func() bool) {
	ctx, cancel := context.WithCancel(parent)
	var exited atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if syscall.Kill(pid, 0) != nil {
				exited.Store(true)
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return ctx, func() bool {
		cancel()
		<-done
		return exited.Load()
	}
}

// removeQEMUCluster stops the workspace's QEMU provider and removes its machines and network; ok is false
// when the workspace has no QEMU provider directory.
func removeQEMUCluster(out, errOut io.Writer, ws string) (bool, error) {
	dir := filepath.Join(ws, qemuDirName)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	state, found, err := qemu.ReadState(dir)
	if err != nil {
		return true, badInput("%w", err)
	}
	if found && state.DaemonAlive() {
		fmt.Fprintf(out, "Stopping the provider (pid %d) and %d machine(s)\n", state.DaemonPID, len(state.Nodes))
		if err := qemu.StopDaemon(state, time.Minute); err != nil {
			fmt.Fprintf(errOut, "warning: %v\n", err)
		}
		if state, found, err = qemu.ReadState(dir); err != nil {
			return true, failed(err)
		}
	}
	if found {
		if err := qemu.Cleanup(dir, state); err != nil {
			return true, failed(fmt.Errorf("removing the cluster's machines: %w", err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return true, failed(fmt.Errorf("removing the machines' disks and TPMs: %w", err))
	}
	return true, nil
}

// qemuStatus shows every machine of the workspace's QEMU cluster: attested or not, and the tail of the
// serial console of a machine that is not.
func qemuStatus(cmd *cobra.Command, c *config.Config) error {
	out := cmd.OutOrStdout()
	ws := workspace(cmd)
	dir := filepath.Join(ws, qemuDirName)
	state, found, err := qemu.ReadState(dir)
	if err != nil {
		return badInput("%w", err)
	}
	if !found || !state.DaemonAlive() {
		return checkFailed(fmt.Errorf("no running QEMU cluster in %s", ws))
	}
	roots, err := qemuPolicyRoots(ws)
	if err != nil {
		return failed(err)
	}
	policy, err := c.Attestation.Policy(roots)
	if err != nil {
		return badInput("%w", err)
	}
	bad := 0
	for _, n := range state.Nodes {
		res, err := verifyNode(cmd.Context(), n.IP+":"+strconv.Itoa(verifyservice.Port), policy, cmd, 0)
		if err != nil {
			bad++
			fmt.Fprintf(out, "%s\t%s\tNOT ATTESTED: %v\n  last lines of its console (%s):\n%s\n", n.Name, n.IP, err, n.Console, tailFile(n.Console, 10))
			continue
		}
		fmt.Fprintf(out, "%s\t%s\tattested (%s)\n", n.Name, n.IP, res.Node)
	}
	if bad > 0 {
		return checkFailed(fmt.Errorf("%d of %d machines are not attested", bad, len(state.Nodes)))
	}
	return nil
}
