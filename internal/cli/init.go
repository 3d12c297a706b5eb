package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kms"
)

// Workspace files written by init.
const (
	AdminKubeconfigFile = "constellation-admin.conf"
	StateFile           = "constellation-state.yaml"
)

// clusterState is constellation-state.yaml.
type clusterState struct {
	ClusterID string `json:"clusterID"`
	Endpoint  string `json:"endpoint"`
	// ImageDigest and Measurements are the node image the cluster runs, as this CLI verified it: the
	// configuration's at init, the new one once 'apply' finished an upgrade to it. A configuration that names
	// another image makes 'apply' upgrade the cluster to that one. Empty in the state of a cluster that an
	// earlier CLI created.
	ImageDigest  string         `json:"imageDigest,omitempty"`
	Measurements measurements.M `json:"measurements,omitempty"`
}

// writeClusterState writes constellation-state.yaml.
func writeClusterState(ws string, s clusterState) error {
	raw, err := yaml.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(ws, StateFile), raw, 0o644)
}

// loadClusterState reads constellation-state.yaml; ok is false when the cluster was not initialised.
func loadClusterState(ws string) (clusterState, bool, error) {
	var s clusterState
	raw, err := os.ReadFile(filepath.Join(ws, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return s, false, nil
	}
	if err != nil {
		return s, false, err
	}
	return s, true, yaml.UnmarshalStrict(raw, &s)
}

// withClusterID adds the expected PCR 15 of an initialised cluster to a policy.
func withClusterID(policy measurements.M, s clusterState) (measurements.M, error) {
	id, err := hex.DecodeString(s.ClusterID)
	if err != nil || len(id) != 32 {
		return nil, fmt.Errorf("%s: clusterID must be 64 hex digits", StateFile)
	}
	return measurements.MemberPolicy(policy, id), nil
}

// initCluster sends the master secret to the first control-plane node, after its evidence (checked during
// the aTLS handshake) proved it runs the configured image and is fresh, and writes the kubeconfig and state.
//
// With an external KMS (kmsConf) the node gets the master secret only wrapped, with the KMS credentials, and
// unwraps it itself: the plain master secret never exists outside attested nodes.
//
// The request carries the workspace's init secret, whose hash the provider handed the node: the node accepts
// Init from no one else; and the cluster's registry mirrors (with their credentials) and node DNS servers, which
// the node hands on to the join service. The state records imageDigest, the configured node image whose signed
// measurements att holds.
func initCluster(ctx context.Context, ws, nodeIP, imageDigest string, att *validators.Policy, kmsConf *kms.KMIPConfig, egress *config.Config) (clusterState, error) {
	secretPath := filepath.Join(ws, kms.MasterSecretFileName)
	file, err := kms.ReadSecretFile(secretPath)
	if errors.Is(err, fs.ErrNotExist) && kmsConf != nil {
		return clusterState{}, badInput("no %s, and the configuration names an external KMS: create the wrapped master secret with 'constellation kms init --kms-config FILE' first", secretPath)
	}
	initSecret, ierr := requireInitSecret(ws)
	if ierr != nil {
		return clusterState{}, ierr
	}
	if errors.Is(err, fs.ErrNotExist) {
		ms, err := kms.GenerateMasterSecret()
		if err != nil {
			return clusterState{}, err
		}
		file = &kms.SecretFile{Plain: ms}
		if err := kms.WriteSecretFile(secretPath, file, false); err != nil {
			return clusterState{}, err
		}
	} else if err != nil {
		return clusterState{}, err
	}
	req, err := initRequest(secretPath, file, kmsConf)
	if err != nil {
		return clusterState{}, err
	}
	req.InitSecret = initSecret
	if egress != nil {
		// The credentials travel only inside this attested channel.
		req.RegistryMirrors = initpb.MirrorsToProto(egress.Mirrors())
		req.RegistryCredentials = initpb.CredentialsToProto(egress.MirrorCredentials())
		req.DnsServers = egress.DNSServers()
	}
	conn, endpoint, err := dialFreshNode(nodeIP, att)
	if err != nil {
		return clusterState{}, err
	}
	defer conn.Close()
	// Ten minutes unless the caller set its own deadline (an emulated machine takes longer).
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
	}
	rawPolicy, err := json.Marshal(att.Measurements)
	if err != nil {
		return clusterState{}, err
	}
	req.Measurements = rawPolicy
	// The first node hands the variant and hardware policy on to the join service.
	if req.Attestation, err = validators.MarshalPolicy(att); err != nil {
		return clusterState{}, err
	}
	resp, err := initpb.NewInitClient(conn).Init(ctx, req)
	if err != nil {
		return clusterState{}, fmt.Errorf("initialising the cluster on %s: %w", endpoint, err)
	}
	// The node's kubeconfig names its own endpoint of the API, on its loopback: here, the attested node's API
	// server is named instead.
	kubeconfig, apiEndpoint, err := adminKubeconfigFor(resp.GetKubeconfig(), nodeIP)
	if err != nil {
		return clusterState{}, err
	}
	if err := atomicfile.Write(filepath.Join(ws, AdminKubeconfigFile), kubeconfig, 0o600); err != nil {
		return clusterState{}, err
	}
	state := clusterState{ClusterID: hex.EncodeToString(resp.GetClusterId()), Endpoint: apiEndpoint, ImageDigest: imageDigest, Measurements: att.Measurements}
	return state, writeClusterState(ws, state)
}

// initRequest puts the master secret into an init request: plain, or wrapped together with what the node needs
// to reach the KMS.
func initRequest(secretPath string, file *kms.SecretFile, kmsConf *kms.KMIPConfig) (*initpb.InitRequest, error) {
	if !file.IsWrapped() {
		if kmsConf != nil {
			return nil, badInput("%s holds a plain master secret, but the configuration names an external KMS; wrap it with 'constellation kms init' or remove the kms section", secretPath)
		}
		return &initpb.InitRequest{MasterSecret: file.Plain.Key, Salt: file.Plain.Salt}, nil
	}
	if kmsConf == nil {
		return nil, badInput("%s is wrapped by key-encryption key %s on an external KMS, but the configuration has no kms.kmip section; add it", secretPath, file.Wrapped.KeyID)
	}
	cc, err := kmsConf.ClientConfig()
	if err != nil {
		return nil, badInput("%w", err)
	}
	wrapped, err := file.Marshal()
	if err != nil {
		return nil, err
	}
	return &initpb.InitRequest{
		WrappedMasterSecret: wrapped,
		Kmip:                &initpb.KMIP{Endpoint: cc.Endpoint, ServerCa: cc.ServerCA, ClientCert: cc.ClientCert, ClientKey: cc.ClientKey},
	}, nil
}

// dialFreshNode connects to the init service of the first control-plane node over aTLS, accepting only a node
// that runs the configured image and is fresh: PCR 15 zero, so an initialised or recovered node is refused.
func dialFreshNode(nodeIP string, att *validators.Policy) (*grpc.ClientConn, string, error) {
	// A fresh node has measured no cluster ID yet (PCR 15 zero), where its variant has a vTPM.
	fresh := *att
	if len(att.Measurements) > 0 {
		fresh.Measurements = measurements.FreshPolicy(att.Measurements)
	} else if v, err := attestation.VariantByName(att.Variant); err == nil && validators.BindsCluster(v) {
		// The node's report binds no cluster yet (qemu-sev-snp: the second half of REPORT_DATA zero).
		fresh.Fresh = true
	}
	v, err := validators.New(&fresh, validators.Options{})
	if err != nil {
		return nil, "", err
	}
	creds, err := atls.NewCredentials(nil, []attestation.Validator{v})
	if err != nil {
		return nil, "", err
	}
	endpoint := nodeIP + ":" + strconv.Itoa(initpb.Port)
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(creds))
	return conn, endpoint, err
}
