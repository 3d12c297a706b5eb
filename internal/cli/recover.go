package cli

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

func newRecoverCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Bring the cluster back after its control-plane nodes restarted",
		Long: "A restarted control-plane node has the cluster's state on its encrypted state disk, but not the key to\n" +
			"open it (the join service that would hand it out runs on the control plane): it waits. recover attests\n" +
			"each control-plane node (it must run the configured image and be fresh), sends it the master secret over\n" +
			"aTLS (or, with an external KMS, the wrapped secret and the KMS credentials), from which it derives the key\n" +
			"of its own state disk, and checks that every one proves its membership again. It then waits, as 'mini up'\n" +
			"does, until the cluster is ready as 'status' checks it (every node attested and Ready, the cluster's\n" +
			"services ready); after --wait it fails (exit 1) and names what is not ready. The nodes accept recovery\n" +
			"only with the cluster's init secret (" + InitSecretFile + ", written by 'apply'). First it verifies again,\n" +
			"offline, that the configuration's measurements are the signed measurements of the configured node image.",
		Args: cobra.NoArgs,
		RunE: runRecover,
	}
	cmd.Flags().String("workspace", ".", "directory with "+config.FileName)
	addSignatureFlags(cmd)
	addWaitFlag(cmd)
	return cmd
}

func runRecover(cmd *cobra.Command, _ []string) error {
	out := cmd.OutOrStdout()
	ws := workspace(cmd)
	confPath := filepath.Join(ws, config.FileName)
	c, err := config.Load(confPath)
	if err != nil {
		return badInput("%w", err)
	}
	// The measurements decide which nodes get the master secret: only the signed ones of the configured image.
	allowDev, _ := cmd.Flags().GetBool("allow-dev-signed")
	signature, err := verifyConfiguredImage(cmd, c, confPath, allowDev)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Node image %s: measurements verified offline, %s\n", c.ImageDigest(), signedBy(signature))
	warnDevSigned(cmd, signature)
	cs, initialised, err := loadClusterState(ws)
	if err != nil {
		return badInput("%s: %w", StateFile, err)
	}
	if !initialised {
		return badInput("no %s in %s: this workspace has no initialised cluster to recover", StateFile, ws)
	}
	dir := filepath.Join(ws, miniDirName)
	state, found, err := mini.ReadState(dir)
	if err != nil {
		return badInput("%w", err)
	}
	if !found || !state.DaemonAlive() || len(state.Nodes) == 0 {
		return badInput("no running cluster in %s", ws)
	}
	roots, err := readCertificates(filepath.Join(dir, "ak-ca", "ca-cert.pem"))
	if err != nil {
		return failed(err)
	}
	var kmsConf *kms.KMIPConfig
	if c.KMS != nil {
		kmsConf = c.KMS.KMIP
	}
	req, err := recoverRequest(ws, kmsConf)
	if err != nil {
		return err
	}
	member, err := withClusterID(c.Attestation.Measurements, cs)
	if err != nil {
		return failed(err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
	defer cancel()
	// Every control-plane node waits: with several, none can start its etcd member without the others.
	var recovered []string
	controlPlanes := 0
	for _, n := range state.Nodes {
		if n.Role == "control-plane" {
			controlPlanes++
		}
	}
	for _, n := range state.Nodes {
		if n.Role != "control-plane" {
			continue
		}
		if err := recoverNode(ctx, out, n, roots, c, member, req, cs, controlPlanes > 1); err != nil {
			return err
		}
		recovered = append(recovered, n.Name)
	}
	if len(recovered) == 0 {
		return badInput("the cluster in %s has no control-plane node", ws)
	}
	limit, _ := cmd.Flags().GetDuration("wait")
	fmt.Fprintf(out, "  %s prove membership of the cluster; waiting up to %s for every node to be Ready, and for the cluster's services\n", strings.Join(recovered, ", "), limit)
	if err := newReadyWaiter(ws, limit, out).wait(cmd.Context()); err != nil {
		return err
	}
	fmt.Fprintf(out, "Cluster recovered: Kubernetes at https://%s, every node attested and Ready\n", cs.Endpoint)
	return nil
}

// recoverRequest is what recover sends every waiting control-plane node: the master secret (plain, or wrapped
// with the KMS credentials) and the init secret, without which the nodes refuse Recover.
func recoverRequest(ws string, kmsConf *kms.KMIPConfig) (*initpb.InitRequest, error) {
	secretPath := filepath.Join(ws, kms.MasterSecretFileName)
	file, err := kms.ReadSecretFile(secretPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, badInput("no %s in %s: the cluster cannot be recovered without its master secret", kms.MasterSecretFileName, ws)
	} else if err != nil {
		return nil, badInput("%w", err)
	}
	req, err := initRequest(secretPath, file, kmsConf)
	if err != nil {
		return nil, err
	}
	if req.InitSecret, err = requireInitSecret(ws); err != nil {
		return nil, err
	}
	return req, nil
}

// recoverNode attests a waiting control-plane node, sends it what it needs to open its state disk, and checks
// that it then proves membership of the cluster. With several control-plane nodes (canRejoin), a node that
// already proves membership rejoined through another one's join service meanwhile, and is left as it is.
func recoverNode(ctx context.Context, out io.Writer, n mini.NodeState, roots []*x509.Certificate, c *config.Config, member measurements.M, req *initpb.InitRequest, cs clusterState, canRejoin bool) error {
	// While other control-plane nodes run, a restarted one rejoins through their join service by itself.
	if canRejoin {
		if _, err := verifyNode(ctx, n.IP+":"+strconv.Itoa(verifyservice.Port), miniPolicy(roots, member), nil, 0); err == nil {
			fmt.Fprintf(out, "  %s already proves membership of the cluster: it rejoined through another control-plane node\n", n.Name)
			return nil
		}
	}
	fmt.Fprintf(out, "Attesting %s at %s (it must run the configured image and wait for recovery)\n", n.Name, n.IP)
	conn, endpoint, err := dialFreshNode(n.IP, miniPolicy(roots, c.Attestation.Measurements))
	if err != nil {
		return failed(err)
	}
	defer conn.Close()
	var resp *initpb.RecoverResponse
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// The node may still be booting: retry while it is unreachable, not when it refuses.
		resp, err = initpb.NewInitClient(conn).Recover(ctx, req)
		if err == nil || !unavailable(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return failed(fmt.Errorf("recovering %s at %s: %w", n.Name, endpoint, err))
	}
	if got := hex.EncodeToString(resp.GetClusterId()); got != cs.ClusterID {
		return failed(fmt.Errorf("%s recovered cluster %s, but %s records cluster %s", n.Name, got, StateFile, cs.ClusterID))
	}
	fmt.Fprintf(out, "  %s unlocked its state disk and measured the cluster ID %s…\n", n.Name, cs.ClusterID[:16])
	if _, err := verifyNode(ctx, n.IP+":"+strconv.Itoa(verifyservice.Port), miniPolicy(roots, member), nil, 0); err != nil {
		return checkFailed(fmt.Errorf("%s does not prove membership after recovery: %w", n.Name, err))
	}
	return nil
}

// unavailable reports whether a gRPC call failed because the server could not be reached (yet), not because
// the node failed attestation (which the transport also reports as unavailable, with the reason).
func unavailable(err error) bool {
	return status.Code(err) == codes.Unavailable && !strings.Contains(err.Error(), "attestation failed")
}
