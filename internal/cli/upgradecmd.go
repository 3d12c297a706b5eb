package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

func newUpgradeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "The measurement policy of a node image upgrade: what it would change, and its rollback",
		Long: "While an upgrade runs, the key service of every control-plane node, and the join service with it,\n" +
			"accept exactly two node images, the old and the new one; when it ends, the new one only. Only the holder\n" +
			"of the master secret (this CLI) authors these measurement policies; the key services keep the newest on\n" +
			"their nodes' encrypted state disks and refuse an older one sent again.",
	}
	cmd.PersistentFlags().String("workspace", ".", "directory with "+config.FileName)
	check := &cobra.Command{
		Use:   "check",
		Short: "Show what the configuration would move the cluster to: node image and measurements, against those in force",
		Args:  cobra.NoArgs,
		RunE:  runUpgradeCheck,
	}
	check.Flags().String("trusted-root", defaultTrustedRoot(), trustedRootUsage)
	abort := &cobra.Command{
		Use:   "abort",
		Short: "Roll an open upgrade back: every node of the new image is replaced by one of the old, then the old node image only is accepted again",
		Long: "abort turns the cluster's upgrade back toward the node image the state file records (the one the cluster ran\n" +
			"before): the upgrade controller finishes the node it is replacing, then replaces every node that its attestation\n" +
			"does not prove to run the old image by one that does, control plane first, one extra node at a time, as\n" +
			"PodDisruptionBudgets allow; abort prints each node's progress (up to --wait; abort again follows a rollback that\n" +
			"runs). An upgrade that succeeded is not rolled back. Once no node of the new image is left, abort authors the\n" +
			"measurement policy that accepts the old image only, at an epoch above every policy authored for the upgrade (so\n" +
			"the upgrade's narrowing left in the cluster can never take effect), and sends it to the key service of every\n" +
			"control-plane node there is then; a key service that does not answer (its node still joining) is waited for,\n" +
			"never skipped. Nodes of the new image are refused from then on. Without a NodeUpgrade (an upgrade opened with\n" +
			"'upgrade start') only the measurement policy is rolled back.",
		Args: cobra.NoArgs,
		RunE: runUpgradeAbort,
	}
	abort.Flags().Duration("wait", DefaultWait, "how long to follow the rollback and wait for the key services; the rollback goes on in the cluster after it")
	start := &cobra.Command{
		Use:   "start --measurements FILE",
		Short: "Open an upgrade: every key service accepts the configured node image and the one of FILE",
		Long: "start authors the measurement policy that accepts two images, the configuration's (the running one)\n" +
			"and the new one whose measurements FILE holds (JSON or YAML, as in the configuration), and sends it to the\n" +
			"key service of every control-plane node; it fails unless every one has it in force. The narrowing to the\n" +
			"new image only is left in ConfigMap kube-system/" + keyservice.NarrowingConfigMap + " for 'upgrade finish' (or the\n" +
			"upgrade controller). Nodes of the new image are admitted from now on; 'upgrade abort' rolls back.",
		Args: cobra.NoArgs,
		RunE: runUpgradeStart,
	}
	start.Flags().String("measurements", "", "measurements of the new node image (required)")
	start.Flags().String("image-digest", "", "digest (sha256:<hex>) of the new node image (default: the digest in the manifest next to the measurements file)")
	_ = start.MarkFlagRequired("measurements")
	finish := &cobra.Command{
		Use:   "finish",
		Short: "End an open upgrade: every key service accepts the new node image only",
		Long: "finish puts the narrowing that 'upgrade start' left in the cluster in force at the key service of every\n" +
			"control-plane node: from then on a node of the old image is refused at join, and continuous attestation\n" +
			"fails every running node of the old image at its next check. Run it once no node of the old image is left.",
		Args: cobra.NoArgs,
		RunE: runUpgradeFinish,
	}
	cmd.AddCommand(check, start, finish, abort)
	return cmd
}

func runUpgradeStart(cmd *cobra.Command, _ []string) error {
	path, _ := cmd.Flags().GetString("measurements")
	raw, err := readFile(path, "the new image's measurements")
	if err != nil {
		return err
	}
	next, err := measurements.Parse(raw)
	if err != nil {
		return badInput("%s: %w", path, err)
	}
	digest, _ := cmd.Flags().GetString("image-digest")
	if digest == "" {
		img, known := nodeimage.MeasuredImageFor(path)
		if !known {
			return badInput("%s is none of the measurements files of a node image: pass --image-digest, the digest of the image they are of", path)
		}
		if digest, err = nodeimage.ManifestDigest(filepath.Join(filepath.Dir(path), img.Manifest)); err != nil {
			return badInput("the new image's digest: %w (or pass --image-digest)", err)
		}
	}
	if err := policyupdate.CheckImageDigest(digest); err != nil {
		return badInput("--image-digest: %w", err)
	}
	up, c, err := policyUpgradeOf(cmd)
	if err != nil {
		return err
	}
	if c.ImageDigest() == "" {
		return badInput("the configuration names no node image: the upgrade's measurement sets name the images they are of")
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Opening the upgrade from the configured image to the one of %s at %d key services\n", path, len(up.KeyServices))
	window, _, err := up.Start(cmd.Context(),
		policyupdate.ImageSet{Image: c.ImageDigest(), Measurements: c.Attestation.Measurements},
		policyupdate.ImageSet{Image: digest, Measurements: next})
	if err != nil {
		return failed(err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Upgrade open: %s; nodes of both images are admitted\n", window)
	return nil
}

func runUpgradeFinish(cmd *cobra.Command, _ []string) error {
	up, _, err := policyUpgradeOf(cmd)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Finishing the upgrade at %d key services\n", len(up.KeyServices))
	narrowed, err := up.Finish(cmd.Context())
	if err != nil {
		return failed(err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Upgrade finished: %s; nodes of the old image are refused from now on\n", narrowed)
	return nil
}

// policyUpgradeOf returns the measurement policy of the workspace's running cluster as the CLI drives it,
// with the configuration.
func policyUpgradeOf(cmd *cobra.Command) (*PolicyUpgrade, *config.Config, error) {
	ws := workspace(cmd)
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		return nil, nil, badInput("%w", err)
	}
	cs, initialised, err := loadClusterState(ws)
	if err != nil {
		return nil, nil, badInput("%s: %w", StateFile, err)
	}
	if !initialised {
		return nil, nil, badInput("no %s in %s: this workspace has no initialised cluster", StateFile, ws)
	}
	clusterID, err := hex.DecodeString(cs.ClusterID)
	if err != nil || len(clusterID) != 32 {
		return nil, nil, badInput("%s: clusterID must be 64 hex digits", StateFile)
	}
	nodes, att, err := runningNodes(ws, c)
	if err != nil {
		return nil, nil, err
	}
	variant, err := attestation.VariantByName(att.Variant)
	if err != nil {
		return nil, nil, badInput("%w", err)
	}
	if !variant.VTPM {
		return nil, nil, badInput("%s evidence has no vTPM: the measurement policy of an upgrade applies to variants with a vTPM only", variant)
	}
	secretPath := filepath.Join(ws, kms.MasterSecretFileName)
	file, err := kms.ReadSecretFile(secretPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, badInput("no %s in %s: only the holder of the master secret can change the measurement policy", kms.MasterSecretFileName, ws)
	} else if err != nil {
		return nil, nil, badInput("%w", err)
	}
	if file.IsWrapped() {
		return nil, nil, badInput("%s is wrapped by a KMS key: authoring a measurement policy with it is not supported yet", secretPath)
	}
	d, err := kms.NewDeriver(file.Plain)
	if err != nil {
		return nil, nil, badInput("%w", err)
	}
	if id, err := d.ClusterID(); err != nil || !bytes.Equal(id, clusterID) {
		return nil, nil, badInput("%s is not the master secret of the cluster %s… in %s", secretPath, cs.ClusterID[:16], StateFile)
	}
	key, err := d.MeasurementPolicyKey()
	if err != nil {
		return nil, nil, failed(err)
	}
	// The kubeconfig keeps naming an API server that answers (an upgrade replaces control-plane nodes).
	selectAPIServer(cmd.Context(), ws, controlPlaneIPs(nodes))
	api, err := kubeapi.FromKubeconfig(filepath.Join(ws, AdminKubeconfigFile))
	if err != nil {
		return nil, nil, badInput("%w", err)
	}
	addrs, err := keyServicesOfControlPlane(cmd.Context(), api, nodes)
	if err != nil {
		return nil, nil, failed(err)
	}
	// The key services run the configured image, or the one the state file records (before an upgrade to the
	// configured one finished).
	known := []measurements.M{c.Attestation.Measurements}
	if len(cs.Measurements) > 0 {
		known = append(known, cs.Measurements)
	}
	up := &PolicyUpgrade{
		Key: key, ClusterID: clusterID, KeyServices: addrs, Known: known, API: api,
		Out: cmd.OutOrStdout(),
		Trust: func(sets ...measurements.M) (attestation.Validator, error) {
			return keyservice.MemberValidators(variant, att.AKRoots, clusterID, nil)(sets)
		},
	}
	if c.Provider.Mini != nil {
		dir := filepath.Join(ws, miniDirName)
		up.PeerPolicy = func(ctx context.Context, sets ...measurements.M) error {
			var raw []byte
			if len(sets) > 0 {
				h, err := policyupdate.NewPeerHint(sets...)
				if err != nil {
					return err
				}
				raw = h.Marshal()
			}
			return mini.SetPeerPolicy(ctx, dir, raw)
		}
	}
	return up, c, nil
}

func runUpgradeAbort(cmd *cobra.Command, _ []string) error {
	up, c, err := policyUpgradeOf(cmd)
	if err != nil {
		return err
	}
	ws := workspace(cmd)
	cs, _, err := loadClusterState(ws)
	if err != nil {
		return badInput("%s: %w", StateFile, err)
	}
	limit, _ := cmd.Flags().GetDuration("wait")
	// The image the cluster ran before the upgrade is the one the state file records (an upgrade records its
	// image only once it is finished).
	iu := &imageUpgrade{
		Policy: up, API: up.API, Out: cmd.OutOrStdout(), Deadline: time.Now().Add(limit),
		From:      clusterImage{Digest: cs.ImageDigest, Measurements: cs.Measurements},
		Reconnect: func(ctx context.Context) (*kubeapi.Client, []string, error) { return reconnectAPI(ctx, ws, c) },
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Rolling the upgrade back to node image %s: every node of the new image is replaced by one of it, then the key services accept it only\n", cs.ImageDigest)
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return iu.abort(ctx)
}

func runUpgradeCheck(cmd *cobra.Command, _ []string) error {
	up, c, err := policyUpgradeOf(cmd)
	if err != nil {
		return err
	}
	st, err := up.Status(cmd.Context())
	if err != nil {
		return failed(err)
	}
	var k8s kubernetesVersions
	// Shown, not acted on (apply checks again, and wants --allow-dev-signed for a development build): the
	// version of the image's verified signed measurements, never of its manifest.
	res, err := verifyConfiguredImage(cmd, c, filepath.Join(workspace(cmd), config.FileName), true)
	if err == nil {
		k8s.Image, err = imageKubernetesVersion(res)
	}
	if err != nil {
		k8s.Image = "unknown (" + err.Error() + ")"
	}
	if k8s.Cluster, err = clusterKubernetesVersion(cmd.Context(), up.API); err != nil {
		k8s.Cluster = "unknown (" + err.Error() + ")"
	}
	return printUpgradeCheck(cmd.OutOrStdout(), c, st, k8s)
}

// kubernetesVersions are the Kubernetes versions 'upgrade check' shows: the cluster's and the configured
// image's.
type kubernetesVersions struct{ Cluster, Image string }

// printUpgradeCheck writes what the configuration would change: its node image and measurements against the
// measurement policy in force at each key service.
func printUpgradeCheck(out io.Writer, c *config.Config, st *PolicyStatus, k8s kubernetesVersions) error {
	digest := ""
	switch {
	case c.Provider.Mini != nil:
		digest = c.Provider.Mini.ImageDigest
	case c.Provider.QEMU != nil:
		digest = c.Provider.QEMU.ImageDigest
	}
	want := c.Attestation.Measurements
	fmt.Fprintf(out, "Configuration: node image %s, %s\n", digest, policyupdate.Describe(want))
	fmt.Fprintf(out, "Kubernetes: the cluster runs %s, the configuration's node image %s\n", k8s.Cluster, k8s.Image)
	if k8s.Cluster != k8s.Image && strings.HasPrefix(k8s.Image, "v") && strings.HasPrefix(k8s.Cluster, "v") {
		fmt.Fprintf(out, "  apply upgrades Kubernetes from %s to %s with kubeadm, the control plane first\n", k8s.Cluster, k8s.Image)
	}
	printSet(out, "  ", want)
	addrs := make([]string, 0, len(st.InForce))
	for a := range st.InForce {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY SERVICE\tEPOCH\tIMAGES IN FORCE")
	var running []measurements.M
	for _, a := range addrs {
		f := st.InForce[a]
		epoch := "0 (init)"
		if f.Update != nil {
			epoch = strconv.FormatUint(f.Update.Epoch, 10)
		}
		var names []string
		for _, set := range f.Sets() {
			names = append(names, policyupdate.Describe(set))
			if !containsSet(running, set) {
				running = append(running, set)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\n", a, epoch, names)
	}
	for a, err := range st.Unreachable {
		fmt.Fprintf(tw, "%s\t-\tno answer: %v\n", a, err)
	}
	tw.Flush()
	for i, set := range running {
		if !containsSet([]measurements.M{want}, set) {
			fmt.Fprintf(out, "In force, image %d: %s\n", i+1, policyupdate.Describe(set))
			printDiff(out, set, want)
		}
	}
	switch {
	case len(running) == 1 && containsSet(running, want):
		fmt.Fprintln(out, "The configuration's image is the one in force: nothing to upgrade")
	case len(running) == 2:
		fmt.Fprintf(out, "An upgrade is open (both images accepted); it ends with the narrowing left in ConfigMap kube-system/%s, or 'constellation upgrade abort'\n", keyservice.NarrowingConfigMap)
	default:
		fmt.Fprintln(out, "An upgrade would accept both images until the last node of the old image is gone, then the configuration's only")
	}
	return nil
}

// printSet writes every PCR of a set.
func printSet(out io.Writer, indent string, set measurements.M) {
	for _, idx := range set.Indices() {
		fmt.Fprintf(out, "%sPCR %d: %s\n", indent, idx, set[idx].Expected)
	}
}

// printDiff writes the PCRs in which from and to differ.
func printDiff(out io.Writer, from, to measurements.M) {
	idx := map[uint32]bool{}
	for i := range from {
		idx[i] = true
	}
	for i := range to {
		idx[i] = true
	}
	keys := make([]int, 0, len(idx))
	for i := range idx {
		keys = append(keys, int(i))
	}
	sort.Ints(keys)
	for _, k := range keys {
		a, inA := from[uint32(k)]
		b, inB := to[uint32(k)]
		switch {
		case !inA:
			fmt.Fprintf(out, "  PCR %d: (none) -> %s\n", k, b.Expected)
		case !inB:
			fmt.Fprintf(out, "  PCR %d: %s -> (none)\n", k, a.Expected)
		case a != b:
			fmt.Fprintf(out, "  PCR %d: %s -> %s\n", k, a.Expected, b.Expected)
		}
	}
}
