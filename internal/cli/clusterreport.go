package cli

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// This file holds the cluster report: `verify --all -o FILE` collects it, `verify-report FILE` checks it offline.

// reportFlags are the flags of `verify --all`.
type reportFlags struct {
	out, akCA, seed, measurements string
}

// runVerifyAll collects fresh evidence from every node of the workspace's cluster, each for its nonce derived
// from one random seed, verifies each as `verify` does, checks the assembled report offline as
// `verify-report` will, and writes it.
func runVerifyAll(cmd *cobra.Command, f reportFlags) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ws := workspace(cmd)
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		return badInput("%w", err)
	}
	if c.Provider.Mini == nil {
		return badInput("%s names no mini provider; a cluster report lists the nodes of a mini cluster", config.FileName)
	}
	cs, initialised, err := loadClusterState(ws)
	if err != nil {
		return badInput("%s: %w", StateFile, err)
	}
	if !initialised {
		return badInput("no initialised cluster in %s (no %s): a cluster report proves that every node belongs to the cluster; create one with 'constellation apply'", ws, StateFile)
	}
	var roots []*x509.Certificate
	if c.Attestation.Variant == attestation.MiniVTPM.Name {
		if f.akCA == "" {
			f.akCA = filepath.Join(ws, miniDirName, "ak-ca", "ca-cert.pem")
		}
		if roots, err = readCertificates(f.akCA); err != nil {
			return err
		}
	} else if f.akCA != "" {
		return badInput("--ak-ca: %s trusts the attestation key only through the hardware report; remove --ak-ca", c.Attestation.Variant)
	}
	policy, err := c.Attestation.Policy(roots)
	if err != nil {
		return badInput("%w", err)
	}
	img, err := reportImage(c, f.measurements)
	if err != nil {
		return err
	}
	if len(policy.Measurements) > 0 {
		if policy.Measurements, err = withClusterID(policy.Measurements, cs); err != nil {
			return badInput("%w", err)
		}
	}
	v, err := validators.New(policy, validators.Options{Log: logger(cmd)})
	if err != nil {
		return badInput("%w", err)
	}
	printVariantWarning(cmd, policy.Variant)
	rootRaw, err := readFile(trustedRootFlag(cmd), "trusted root")
	if err != nil {
		return err
	}
	seed, err := reportSeed(f.seed)
	if err != nil {
		return err
	}
	nodes, err := clusterNodes(ctx, ws)
	if err != nil {
		return err
	}
	r, err := clusterreport.New(time.Now(), seed, cs.ClusterID, img, policy, nodes)
	if err != nil {
		return failed(err)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "Collecting evidence from %d nodes for a cluster report (seed %x)\n", len(r.Nodes), seed)
	list := r.NodeList()
	var bad []string
	for i, n := range r.Nodes {
		nonce := list.Nonce(seed, n.Name)
		ev, err := verifyservice.Fetch(ctx, n.Endpoint, nonce)
		if err == nil {
			_, err = v.Validate(ctx, ev, nonce)
		}
		if err != nil {
			fmt.Fprintf(out, "  %s at %s: FAILED: %v\n", n.Name, n.Endpoint, err)
			bad = append(bad, n.Name)
			continue
		}
		r.Nodes[i].Evidence = ev
		fmt.Fprintf(out, "  %s at %s: verified\n", n.Name, n.Endpoint)
	}
	if len(bad) > 0 {
		return checkFailed(fmt.Errorf("%d of %d nodes failed attestation (%s); no report written", len(bad), len(r.Nodes), strings.Join(bad, ", ")))
	}
	// Check the report as a third party will, before anyone relies on it.
	allowDev, _ := cmd.Flags().GetBool("allow-dev-signed")
	res, err := clusterreport.Verify(ctx, r, rootRaw, clusterreport.VerifyOptions{AllowDevelopment: allowDev, AKRoots: roots, Validators: validators.Options{Log: logger(cmd)}})
	if err != nil {
		return checkFailed(fmt.Errorf("the collected report does not verify offline, no report written: %w", err))
	}
	warnDevSigned(cmd, res.Signature)
	raw, err := r.Marshal()
	if err != nil {
		return failed(err)
	}
	if err := atomicfile.Write(f.out, raw, 0o644); err != nil {
		return failed(fmt.Errorf("writing the report: %w", err))
	}
	fmt.Fprintf(out, "Wrote %s: %d nodes (%s) of cluster %s, image %s; verify it anywhere with 'constellation verify-report %s --trusted-root FILE'\n",
		f.out, len(r.Nodes), nodeNames(r), cs.ClusterID, img.Digest, filepath.Base(f.out))
	return nil
}

// trustedRootFlag is the command's --trusted-root.
func trustedRootFlag(cmd *cobra.Command) string {
	p, _ := cmd.Flags().GetString("trusted-root")
	return p
}

// reportImage reads the signed measurements of the configured node image: measurementsPath and its bundle
// next to it (default: measurements.json next to the image), which must be the configuration's measurements.
func reportImage(c *config.Config, measurementsPath string) (clusterreport.Image, error) {
	if measurementsPath == "" {
		measurementsPath = filepath.Join(filepath.Dir(c.Provider.Mini.Image), "measurements.json")
	}
	meas, err := readFile(measurementsPath, "signed measurements")
	if err != nil {
		return clusterreport.Image{}, err
	}
	bundle, err := readFile(measurementsPath+signed.BundleSuffix, "measurements bundle")
	if err != nil {
		return clusterreport.Image{}, err
	}
	img := clusterreport.Image{Digest: c.Provider.Mini.ImageDigest, Variant: c.Attestation.Variant, Measurements: meas, Bundle: bundle}
	variant, err := attestation.VariantByName(img.Variant)
	if err != nil {
		return img, badInput("%w", err)
	}
	if !variant.VTPM {
		return img, nil
	}
	m, err := measurements.Parse(meas)
	if err != nil {
		return img, badInput("%s: %w", measurementsPath, err)
	}
	if !maps.Equal(m, c.Attestation.Measurements) {
		return img, badInput("the measurements of %s are not the signed measurements %s; regenerate the configuration with 'constellation config generate mini --force', or pass --measurements",
			config.FileName, measurementsPath)
	}
	return img, nil
}

// reportSeed decodes --seed, or draws a random seed.
func reportSeed(s string) ([]byte, error) {
	if s == "" {
		seed := make([]byte, clusterreport.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, failed(err)
		}
		return seed, nil
	}
	seed, err := hex.DecodeString(s)
	if err != nil || len(seed) != clusterreport.SeedSize {
		return nil, badInput("--seed: want %d bytes as %d hex digits", clusterreport.SeedSize, 2*clusterreport.SeedSize)
	}
	return seed, nil
}

// clusterNodes returns every node of the workspace's cluster: the provider's instances and the Kubernetes
// nodes must be the same set, with the same roles.
func clusterNodes(ctx context.Context, ws string) ([]clusterreport.NodeEntry, error) {
	state, found, err := mini.ReadState(filepath.Join(ws, miniDirName))
	if err != nil {
		return nil, badInput("%w", err)
	}
	if !found || !state.DaemonAlive() {
		return nil, errNoCluster(ws, "no running nodes")
	}
	var cps []string
	for _, n := range state.Nodes {
		if n.Role == provider.RoleControlPlane {
			cps = append(cps, n.IP)
		}
	}
	// The kubeconfig keeps naming an API server that answers (a control-plane node may be down); if none
	// does, asking Kubernetes below says so.
	selectAPIServer(ctx, ws, cps)
	api, err := kubeapi.FromKubeconfig(filepath.Join(ws, AdminKubeconfigFile))
	if err != nil {
		return nil, badInput("%w", err)
	}
	kube, err := kubeNodeRoles(ctx, api)
	if err != nil {
		return nil, failed(err)
	}
	return nodeInventory(state.Nodes, kube)
}

// nodeInventory joins the provider's instances with the Kubernetes nodes (name -> role). A node in only one
// of them, or with another role in each, is an error that names it.
func nodeInventory(provider []mini.NodeState, kube map[string]string) ([]clusterreport.NodeEntry, error) {
	var out []clusterreport.NodeEntry
	var problems []string
	seen := map[string]bool{}
	for _, n := range provider {
		seen[n.Name] = true
		role, ok := kube[n.Name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: an instance of the provider, but not a Kubernetes node", n.Name))
			continue
		case role != n.Role:
			problems = append(problems, fmt.Sprintf("%s: a %s for the provider, a %s in Kubernetes", n.Name, n.Role, role))
			continue
		}
		out = append(out, clusterreport.NodeEntry{Name: n.Name, Role: n.Role, Endpoint: net.JoinHostPort(n.IP, strconv.Itoa(verifyservice.Port))})
	}
	for name := range kube {
		if !seen[name] {
			problems = append(problems, fmt.Sprintf("%s: a Kubernetes node, but no instance of the provider", name))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, checkFailed(fmt.Errorf("the provider and Kubernetes do not know the same nodes, so no report lists them all:\n  %s", strings.Join(problems, "\n  ")))
	}
	if len(out) == 0 {
		return nil, checkFailed(errors.New("the cluster has no nodes"))
	}
	return out, nil
}

// kubeNodeRoles returns every Kubernetes node's role by name: control-plane when it carries the
// node-role.kubernetes.io/control-plane label, worker otherwise.
func kubeNodeRoles(ctx context.Context, api *kubeapi.Client) (map[string]string, error) {
	var list struct {
		Items []struct {
			Metadata struct {
				Name   string
				Labels map[string]string
			}
		}
	}
	if err := api.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing the Kubernetes nodes: %w", err)
	}
	out := map[string]string{}
	for _, n := range list.Items {
		out[n.Metadata.Name] = clusterreport.RoleWorker
		if _, ok := n.Metadata.Labels["node-role.kubernetes.io/control-plane"]; ok {
			out[n.Metadata.Name] = clusterreport.RoleControlPlane
		}
	}
	return out, nil
}

func nodeNames(r *clusterreport.Report) string {
	var names []string
	for _, n := range r.Nodes {
		names = append(names, n.Name)
	}
	return strings.Join(names, ", ")
}

func newVerifyReportCmd() *cobra.Command {
	var akCA, seed string
	cmd := &cobra.Command{
		Use:   "verify-report REPORT [--trusted-root FILE] [--allow-dev-signed] [--ak-ca FILE | --ak-ca-from-report] [--seed HEX]",
		Short: "Verify a cluster report offline: signed measurements, policy and every node's evidence",
		Long: "Verify a cluster report written by 'verify --all -o REPORT', with no access to the cluster and no network:\n" +
			"the measurements bundle against the trusted root (signature, transparency log inclusion, signed checkpoint)\n" +
			"for the report's measurements file, image digest and variant; the policy, rebuilt from the signed\n" +
			"measurements and the cluster ID (the report's stated policy must be the same); and every node's evidence\n" +
			"against it, for the nonce derived from the report's seed, its node list and the node's name. It prints the\n" +
			"node count and names: compare them with the nodes you expect. Where the provider certifies the nodes'\n" +
			"attestation keys (mini-vtpm, qemu-vtpm), --ak-ca pins its CA: the cluster's, from the operator's\n" +
			"workspace. A CA the report names proves nothing about who wrote it; --ak-ca-from-report accepts it\n" +
			"anyway (a consistency check only). --seed requires the seed you chose.\n" +
			"Exit code 0: everything verified. 1: something does not. 2: an input is unusable.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runVerifyReportFile(cmd, args[0], akCA, seed) },
	}
	cmd.Flags().StringVar(&akCA, "ak-ca", "", "PEM certificate of the attestation-key CA to pin (the cluster's: <workspace>/constellation-mini/ak-ca/ca-cert.pem)")
	cmd.Flags().Bool("ak-ca-from-report", false, "accept the attestation-key CA the report names (proves only that the report is consistent, not who wrote it)")
	cmd.MarkFlagsMutuallyExclusive("ak-ca", "ak-ca-from-report")
	cmd.Flags().StringVar(&seed, "seed", "", "the seed the report must have been collected with, hex (the one you chose)")
	addSignatureFlags(cmd)
	return cmd
}

func runVerifyReportFile(cmd *cobra.Command, path, akCA, seedHex string) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	raw, err := readReport(path)
	if err != nil {
		return err
	}
	r, err := clusterreport.Parse(raw)
	if err != nil {
		return badInput("%s: %w", path, err)
	}
	rootRaw, err := readFile(trustedRootFlag(cmd), "trusted root")
	if err != nil {
		return err
	}
	opts := clusterreport.VerifyOptions{Validators: validators.Options{Log: logger(cmd)}}
	opts.AllowDevelopment, _ = cmd.Flags().GetBool("allow-dev-signed")
	opts.TrustReportAKRoots, _ = cmd.Flags().GetBool("ak-ca-from-report")
	if akCA != "" {
		if opts.AKRoots, err = readCertificates(akCA); err != nil {
			return err
		}
	}
	if seedHex != "" {
		if opts.Seed, err = hex.DecodeString(seedHex); err != nil || len(opts.Seed) != clusterreport.SeedSize {
			return badInput("--seed: want %d bytes as %d hex digits", clusterreport.SeedSize, 2*clusterreport.SeedSize)
		}
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "Cluster report %s: format %d, created %s (the collector's clock), seed %x\n", path, r.Version, r.Created, r.Seed)
	fmt.Fprintf(out, "Cluster %s: %d nodes listed: %s\n", r.ClusterID, len(r.Nodes), nodeNames(r))
	fmt.Fprintln(out, "  Compare them with the nodes you expect: the report proves what each listed node runs, not that no node is left out.")
	res, verr := clusterreport.Verify(ctx, r, rootRaw, opts)
	printReportResult(out, r, res)
	if res != nil && res.Signature != nil {
		warnDevSigned(cmd, res.Signature)
	}
	if errors.Is(verr, clusterreport.ErrUnpinnedAKRoots) {
		return checkFailed(fmt.Errorf("%s does not verify: %w: pass it with --ak-ca FILE, or --ak-ca-from-report to check only that the report is consistent", path, verr))
	}
	if verr != nil {
		return checkFailed(fmt.Errorf("%s does not verify: %w", path, verr))
	}
	fmt.Fprintf(out, "Verified: all %d nodes run image %s as signed and belong to cluster %s.\n", len(r.Nodes), r.Image.Digest, r.ClusterID)
	return nil
}

// readReport reads a report file of at most clusterreport.MaxSize bytes.
func readReport(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, badInput("reading the cluster report: %w", err)
	}
	defer fh.Close()
	raw, err := io.ReadAll(io.LimitReader(fh, clusterreport.MaxSize+1))
	if err != nil {
		return nil, badInput("reading the cluster report %s: %w", path, err)
	}
	if len(raw) > clusterreport.MaxSize {
		return nil, badInput("%s is larger than a cluster report can be (%d bytes)", path, clusterreport.MaxSize)
	}
	return raw, nil
}

// printReportResult writes what Verify checked, as far as it got.
func printReportResult(out io.Writer, r *clusterreport.Report, res *clusterreport.Result) {
	if res == nil || res.Signature == nil {
		return
	}
	s := res.Signature
	fmt.Fprintf(out, "Signed measurements: sha256 %s, for image %s (%s)\n", s.MeasurementsSHA256, s.Predicate.ImageDigest, s.Predicate.Variant)
	fmt.Fprintf(out, "  signature: valid, key %q\n", s.Key.Name)
	fmt.Fprintf(out, "  transparency log %s: entry %d included in the signed checkpoint of size %d\n", s.LogOrigin, s.LogIndex, s.CheckpointSize)
	if res.Policy == nil {
		return
	}
	if pcrs := res.Policy.Measurements.Indices(); len(pcrs) > 0 {
		fmt.Fprintf(out, "Policy: rebuilt from the signed measurements and the cluster ID (PCR %d): PCRs %v; the report states the same\n", measurements.PCRClusterID, pcrs)
	} else {
		fmt.Fprintf(out, "Policy: %s has no vTPM: the report's hardware policy, which the signature does not cover, pins the image\n", res.Policy.Variant)
	}
	printHardwarePolicy(out, res.Policy)
	for _, c := range res.Policy.AKRoots {
		sum := sha256.Sum256(c.Raw)
		how := "pinned by --ak-ca"
		if res.AKRootsFromReport {
			how = "taken from the report (--ak-ca-from-report: it proves nothing about who wrote the report; pin it with --ak-ca)"
		}
		fmt.Fprintf(out, "Attestation-key CA %q (sha256 %x): %s\n", c.Subject.CommonName, sum, how)
	}
	for _, n := range res.Nodes {
		fmt.Fprintf(out, "Node %s (%s, %s): ", n.Name, n.Role, n.Endpoint)
		if n.Err != nil {
			fmt.Fprintf(out, "FAILED: %v\n", n.Err)
			continue
		}
		fmt.Fprintln(out, "verified")
		fmt.Fprintf(out, "  nonce %x: HMAC-SHA256 of the seed, the node list and the node's name; the %s evidence is bound to it\n", n.Nonce, n.Variant)
		if n.Subject != "" {
			fmt.Fprintf(out, "  attestation key certified for %s by the attestation-key CA\n", n.Subject)
		}
		if k := len(res.Policy.Measurements); k > 0 {
			fmt.Fprintf(out, "  %d PCRs match: image and boot parameters as signed, member of cluster %s\n", k, r.ClusterID)
		} else {
			fmt.Fprintf(out, "  the hardware report matches the policy\n")
		}
	}
}

// printHardwarePolicy shows the SEV-SNP or TDX policy the report carries: the signature does not cover it, so
// the reader must judge it (launch measurement, minimum TCB and the like).
func printHardwarePolicy(out io.Writer, p *validators.Policy) {
	var what, vendor string
	var v any
	switch {
	case p.SNP != nil:
		what, vendor, v = "SEV-SNP", "AMD", p.SNP.Policy
	case p.TDX != nil:
		what, vendor, v = "TDX", "Intel", p.TDX.Policy
	default:
		return
	}
	raw, err := json.Marshal(v)
	if err != nil {
		raw = []byte(err.Error())
	}
	fmt.Fprintf(out, "%s policy, from the report (the signature does not cover it; check it is the one you expect): %s\n", what, raw)
	fmt.Fprintf(out, "  each hardware report is verified to the %s root embedded in this binary, with the revocation lists and collateral the report carries\n", vendor)
}
