package cli

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

// verifyResult is what `verify -o json` prints.
type verifyResult struct {
	Endpoint     string         `json:"endpoint"`
	Node         string         `json:"node"`
	Variant      string         `json:"variant"`
	Verified     bool           `json:"verified"`
	Measurements measurements.M `json:"measurements"`
}

func newVerifyCmd() *cobra.Command {
	var endpoint, output, akCA string
	var all bool
	var rf reportFlags
	cmd := &cobra.Command{
		Use:   "verify (--node-endpoint HOST:PORT [-o json] | --all -o REPORT)",
		Short: "Attest a node, or every node into a cluster report: fresh evidence checked against the configuration",
		Long: "With --node-endpoint: ask the node for evidence bound to a random nonce and check it against the\n" +
			"configuration's policy (and, in an initialised cluster, its cluster ID).\n" +
			"With --all -o REPORT: do that for every node of the cluster (the provider's instances and the Kubernetes\n" +
			"nodes must be the same), each with its nonce derived from one random seed (--seed: one you chose), and\n" +
			"write one self-contained report: the evidence, the node list, the signed measurements of the image and\n" +
			"the policy. 'constellation verify-report REPORT' checks it anywhere, offline. The report holds no secret.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all {
				if endpoint != "" {
					return badInput("--all and --node-endpoint exclude each other")
				}
				if output == "" || output == "json" {
					return badInput("--all needs -o REPORT, the file to write the report to")
				}
				if useGRPC, _ := cmd.Flags().GetBool("grpc"); useGRPC {
					return badInput("--all asks every node's HTTP verification service; remove --grpc")
				}
				rf.out, rf.akCA = output, akCA
				return runVerifyAll(cmd, rf)
			}
			if endpoint == "" {
				return badInput("--node-endpoint (or --all) is required")
			}
			if rf.seed != "" || rf.measurements != "" {
				return badInput("--seed and --measurements go with --all")
			}
			if output != "" && output != "json" {
				return badInput("-o %q is not supported; use json", output)
			}
			a, err := config.LoadAttestation(filepath.Join(workspace(cmd), config.FileName))
			if err != nil {
				return badInput("%w", err)
			}
			var roots []*x509.Certificate
			if a.Variant == attestation.MiniVTPM.Name || a.Variant == attestation.QEMUVTPM.Name {
				if akCA == "" {
					providerDir := miniDirName
					if a.Variant == attestation.QEMUVTPM.Name {
						providerDir = qemuDirName
					}
					akCA = filepath.Join(workspace(cmd), providerDir, "ak-ca", "ca-cert.pem")
				}
				if roots, err = readCertificates(akCA); err != nil {
					return err
				}
			} else if akCA != "" {
				return badInput("--ak-ca: %s trusts the attestation key only through the hardware report; remove --ak-ca", a.Variant)
			}
			policy, err := a.Policy(roots)
			if err != nil {
				return badInput("%w", err)
			}
			if _, err := validators.New(policy, validators.Options{}); err != nil {
				return badInput("%w", err)
			}
			printVariantWarning(cmd, policy.Variant)
			if cs, ok, err := loadClusterState(workspace(cmd)); err != nil {
				return badInput("%w", err)
			} else if ok {
				// An initialised cluster: the node must also prove it belongs to this cluster.
				if v, _ := attestation.VariantByName(policy.Variant); validators.BindsCluster(v) {
					// qemu-sev-snp: the cluster ID bound in the report's REPORT_DATA.
					if policy.ClusterID, err = hex.DecodeString(cs.ClusterID); err != nil || len(policy.ClusterID) != 32 {
						return badInput("%s: clusterID must be 64 hex digits", StateFile)
					}
				} else if len(policy.Measurements) == 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "Note: %s evidence has no vTPM, so it cannot prove that the node belongs to cluster %s; only its image is verified.\n", a.Variant, cs.ClusterID)
				} else if policy.Measurements, err = withClusterID(policy.Measurements, cs); err != nil {
					return badInput("%w", err)
				}
			}
			res, err := verifyNode(cmd.Context(), endpoint, policy, cmd, 0)
			if err != nil {
				return checkFailed(fmt.Errorf("node at %s failed attestation: %w", endpoint, err))
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			if len(res.Measurements) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "Node %s at %s verified: %s evidence, the hardware report matches the configuration.\n", res.Node, endpoint, res.Variant)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Node %s at %s verified: %s evidence, %d PCRs match the configuration.\n", res.Node, endpoint, res.Variant, len(res.Measurements))
			return nil
		},
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	cmd.Flags().StringVar(&endpoint, "node-endpoint", "", "the node's verification service, HOST:PORT (required)")
	cmd.Flags().Bool("grpc", false, "ask the node's gRPC verification service (port 9091) instead of HTTP (port 9090)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json; with --all: the report file to write")
	cmd.Flags().StringVar(&akCA, "ak-ca", "", "PEM certificate of the attestation-key CA (default: the workspace's mini or QEMU provider's)")
	cmd.Flags().BoolVar(&all, "all", false, "attest every node of the cluster and write a cluster report to -o")
	cmd.Flags().StringVar(&rf.seed, "seed", "", "with --all: the seed of the nodes' nonces, 64 hex digits (default: random)")
	cmd.Flags().StringVar(&rf.measurements, "measurements", "", "with --all: the signed measurements file, its bundle next to it (default: measurements.json next to the configured node image)")
	addSignatureFlags(cmd)
	return cmd
}

// verifyNode asks a node for evidence bound to a fresh nonce and validates it. With wait > 0 it retries
// fetching until the node's verification service answers or wait has passed (a node that is still booting);
// validation itself is never retried.
func verifyNode(ctx context.Context, endpoint string, policy *validators.Policy, cmd *cobra.Command, wait time.Duration) (*verifyResult, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	var log *slog.Logger
	if cmd != nil {
		log = logger(cmd)
	}
	v, err := validators.New(policy, validators.Options{Log: log})
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	fetch := verifyservice.Fetch
	if cmd != nil {
		if useGRPC, _ := cmd.Flags().GetBool("grpc"); useGRPC {
			fetch = verifyservice.FetchGRPC
		}
	}
	deadline := time.Now().Add(wait)
	var ev []byte
	for {
		ev, err = fetch(ctx, endpoint, nonce)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	if _, err := v.Validate(ctx, ev, nonce); err != nil {
		return nil, err
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		return nil, err
	}
	return &verifyResult{Endpoint: endpoint, Node: doc.AttestationKeySubject(), Variant: doc.Variant, Verified: true, Measurements: policy.Measurements}, nil
}

// miniPolicy is the policy of the mini provider's nodes: mini-vtpm evidence, its AK CA and pcrs.
func miniPolicy(roots []*x509.Certificate, pcrs measurements.M) *validators.Policy {
	return &validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: pcrs, AKRoots: roots}
}
