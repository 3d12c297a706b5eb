package bootstrapper

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// Kubernetes is what Init needs from the node's Kubernetes driver.
type Kubernetes interface {
	PrepareRuntime(ctx context.Context) error
	Init(ctx context.Context) (adminKubeconfig []byte, err error)
	// Join joins the cluster, as a control-plane node if controlPlane (its shared PKI already in place). A
	// failure that another attempt cannot cure is kubeadm.Permanent, and reported on the node's Node object.
	Join(ctx context.Context, endpoint, token, caHash string, controlPlane bool, kubelet kubeadm.KubeletCredentials) error
	// ResetJoin undoes what a failed Join left, so that Join can run again.
	ResetJoin(ctx context.Context) error
	// ReportJoinFailure reports the failure of the last Join, once the node gives up, on the node's Node object.
	ReportJoinFailure(ctx context.Context, failure error) error
	// Apply creates or updates Kubernetes objects (JSON or YAML) with the administrator's credentials.
	Apply(ctx context.Context, manifests []byte) error
	// Restart starts the kubelet of a node whose Kubernetes state is on its state disk (after a recovery).
	Restart(ctx context.Context) error
	// EnablePodNetwork makes the node Ready for pods once kube-proxy has programmed the Services on it (or
	// cannot run on it), or returns when ctx ends.
	EnablePodNetwork(ctx context.Context) error
	// ConfigureRegistryMirrors makes the container runtime pull the mirrored registries' images from their
	// mirrors only, with the mirrors' credentials (a validated list, from the cluster configuration).
	ConfigureRegistryMirrors(ms []registrymirror.Mirror, cs []registrymirror.Credentials) error
	// ConfigureDNS makes servers the node's and CoreDNS's DNS servers; none: no resolver at all.
	ConfigureDNS(servers []string) error
}

// Lifecycle is the rest of the node, as the init service drives it: the steps that follow from Init and
// Recover. Run implements it with the node's mesh agent, key holder and cluster services.
type Lifecycle interface {
	// StartNetwork brings the node's encrypted network up once its state disk is unlocked, before Kubernetes
	// starts; recovery says whether the node recovers (keeping its key) or is initialised.
	StartNetwork(recovery bool) error
	// Initialised runs after a successful init, with the cluster's master secret, cluster ID, attestation
	// policy and the nodes' egress (registry mirrors, their credentials, DNS servers).
	Initialised(ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, egress Egress) error
	// Recovered runs after a successful recovery, with the cluster's master secret, cluster ID and the policy
	// kept on the state disk.
	Recovered(ms *kms.MasterSecret, clusterID []byte, kept KeptPolicy) error
}

// initServer initialises the cluster on the first control-plane node, once. It serves only a caller who knows
// the cluster's init secret: anyone who reaches the port first could otherwise initialise the node with a
// master secret, policy and KMS of their own, and take the administrator's kubeconfig.
type initServer struct {
	initpb.UnimplementedInitServer
	issuer attestation.Issuer
	k8s    Kubernetes
	log    *slog.Logger
	// initSecretHash is the SHA-256 of the cluster's init secret, from the node's instance metadata. Without
	// it the node refuses Init and Recover.
	initSecretHash []byte
	// life is the rest of the node; nil: nothing follows (tests of init alone).
	life Lifecycle

	// disk is the node's state disk, unlocked with the key derived for it before Kubernetes starts; nil for
	// a node without one.
	disk *stateDisk
	// recovering is set when the state disk holds an initialised cluster's state: the node then waits for
	// Recover, and refuses Init.
	recovering bool

	// lock makes init one-shot: a node is initialised or joins, once, never twice.
	lock sync.Mutex
	done bool
}

// authenticate checks the init secret of a request before anything else of it is looked at: SHA-256 of the
// secret must equal the hash from the node's instance metadata (compared in constant time). A refusal is
// logged with the caller's address, never with the secret; the node stays as it was.
func (s *initServer) authenticate(ctx context.Context, rpc string, secret []byte) error {
	remote := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	if len(s.initSecretHash) != sha256.Size {
		s.log.Error(rpc+" refused: this node's instance metadata holds no init-secret hash", "remote", remote)
		return status.Error(codes.FailedPrecondition, "this node's instance metadata holds no hash of the cluster's init secret, so the node cannot "+
			"tell the operator who created it from anyone else and refuses to be initialised or recovered; create the "+
			"nodes with 'constellation apply', which hands the provider the hash of the workspace's init secret")
	}
	sum := sha256.Sum256(secret)
	ok := subtle.ConstantTimeCompare(sum[:], s.initSecretHash) & subtle.ConstantTimeEq(int32(len(secret)), initpb.InitSecretSize)
	if ok != 1 {
		s.log.Warn(rpc+" refused: wrong or missing init secret", "remote", remote, "secretSent", len(secret) > 0)
		return status.Error(codes.Unauthenticated, "the request's init secret is missing or wrong: only the operator who created "+
			"the nodes (with the init secret in their workspace) may initialise or recover this node; nothing was changed")
	}
	return nil
}

func (s *initServer) Init(ctx context.Context, req *initpb.InitRequest) (*initpb.InitResponse, error) {
	// First, before the lock (a caller without the secret must not hold it) and before anything of the request
	// is acted on.
	if err := s.authenticate(ctx, "Init", req.GetInitSecret()); err != nil {
		return nil, err
	}
	if !s.lock.TryLock() {
		return nil, status.Error(codes.FailedPrecondition, "initialisation of this node is already in progress")
	}
	defer s.lock.Unlock()
	if s.done {
		return nil, status.Error(codes.FailedPrecondition, "this node is already initialised; a node is initialised only once")
	}
	if s.recovering {
		return nil, status.Error(codes.FailedPrecondition, "this node's state disk holds an initialised cluster; bring it back with 'constellation recover'")
	}
	att, err := s.attestationPolicy(req.GetAttestation())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	policy, err := s.measurementPolicy(req.GetMeasurements())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	att.Measurements = policy
	egress, err := egressFromWire(req.GetRegistryMirrors(), req.GetRegistryCredentials(), req.GetDnsServers())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ms, err := s.masterSecret(ctx, req)
	if err != nil {
		return nil, err
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	clusterID, err := d.ClusterID()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// From here on the node is no longer fresh, whatever happens next.
	s.done = true
	where, err := recordClusterID(s.issuer, clusterID)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.log.Info("cluster ID measured", "into", where, "clusterID", fmt.Sprintf("%x", clusterID))
	if s.disk != nil {
		key, err := d.DiskKey(s.disk.uuid)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if err := s.disk.unlock(key); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if policy != nil {
			if err := keepPolicy(s.disk, policy); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
		wire, err := attestationWire(att)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if wire != nil {
			if err := keepAttestation(s.disk, wire); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
		if err := keepEgress(s.disk, egress); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if s.life != nil {
		if err := s.life.StartNetwork(false); err != nil {
			return nil, status.Error(codes.Internal, fmt.Sprintf("starting the encrypted network: %v", err))
		}
	}
	if err := egress.configure(s.k8s); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := s.k8s.PrepareRuntime(ctx); err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("preparing the container runtime: %v", err))
	}
	kubeconfig, err := s.k8s.Init(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("initialising Kubernetes: %v", err))
	}
	s.log.Info("Kubernetes initialised")
	go s.enablePodNetwork(ctx)
	if s.life != nil {
		if err := s.life.Initialised(ms, clusterID, att, egress); err != nil {
			return nil, status.Error(codes.Internal, fmt.Sprintf("starting the cluster services: %v", err))
		}
	}
	return &initpb.InitResponse{Kubeconfig: kubeconfig, ClusterId: clusterID}, nil
}

// enablePodNetwork makes the node Ready for pods once kube-proxy has programmed the Services on it (it runs
// beyond the request that started Kubernetes). The first control-plane node has no peer to wait for; after a
// recovery, the other control-plane nodes may not be up yet.
func (s *initServer) enablePodNetwork(ctx context.Context) {
	if err := s.k8s.EnablePodNetwork(context.WithoutCancel(ctx)); err != nil {
		s.log.Error("enabling the pod network failed; the node takes no pods", "error", err)
	}
}

// attestationPolicy parses the cluster's attestation policy from an init request: the variant must be the one
// this node attests as, or the join service would refuse every node of the cluster. An empty policy means this
// node's variant with the measurements alone.
func (s *initServer) attestationPolicy(raw []byte) (*validators.Policy, error) {
	own := s.issuer.Variant().Name
	if len(raw) == 0 {
		if !s.issuer.Variant().VTPM {
			return nil, fmt.Errorf("the request carries no attestation policy, and %s evidence is checked by its hardware policy alone: send it (attestation.snp in the configuration)", own)
		}
		return &validators.Policy{Variant: own}, nil
	}
	att, err := validators.ParsePolicy(raw)
	if err != nil {
		return nil, fmt.Errorf("attestation policy: %w", err)
	}
	if att.Variant != own {
		return nil, fmt.Errorf("the configuration's attestation variant is %s, but this node attests as %s: set attestation.variant to %s (with its policy) in the configuration", att.Variant, own, own)
	}
	if !s.issuer.Variant().VTPM {
		// The hardware part is all there is to the policy: check now that the join service can enforce it,
		// before the node acts on anything of the request.
		if _, err := validators.New(att, validators.Options{}); err != nil {
			return nil, fmt.Errorf("attestation policy: %w", err)
		}
	}
	return att, nil
}

// measurementPolicy parses the cluster's PCR measurement policy from an init request. A node whose evidence
// has no vTPM (qemu-sev-snp) takes none: its launch measurement is in the attestation policy's hardware part,
// and a PCR policy for it would be one nothing enforces, so it is refused rather than ignored.
func (s *initServer) measurementPolicy(raw []byte) (measurements.M, error) {
	if !s.issuer.Variant().VTPM {
		if t := strings.TrimSpace(string(raw)); t != "" && t != "null" && t != "{}" {
			return nil, fmt.Errorf("measurement policy: %s evidence has no vTPM, so PCR measurements do not apply; send the launch measurement in the attestation policy", s.issuer.Variant())
		}
		return nil, nil
	}
	policy, err := measurements.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("measurement policy: %w", err)
	}
	return policy, nil
}

// claim makes the node's start one-shot for a control-plane node that rejoins through another control-plane
// node's join service while it also waits for Recover: true if the rejoin goes ahead, false if Init or
// Recover came first. Recover, after a claim, is refused as for a recovered node.
func (s *initServer) claim() bool {
	s.lock.Lock()
	defer s.lock.Unlock()
	if s.done {
		return false
	}
	s.done = true
	return true
}

// isDone reports whether the node was initialised, recovered or rejoined.
func (s *initServer) isDone() bool {
	s.lock.Lock()
	defer s.lock.Unlock()
	return s.done
}

// unwrapTimeout bounds the wait for the external KMS during init (its client retries with backoff meanwhile).
const unwrapTimeout = time.Minute

// masterSecret returns the request's master secret: as sent, or unwrapped by the external KMS. Nothing on the
// node changes before it returns, so a failed init can be retried.
func (s *initServer) masterSecret(ctx context.Context, req *initpb.InitRequest) (*kms.MasterSecret, error) {
	wrapped := req.GetWrappedMasterSecret()
	plain := len(req.GetMasterSecret()) > 0 || len(req.GetSalt()) > 0
	switch {
	case plain && len(wrapped) > 0:
		return nil, status.Error(codes.InvalidArgument, "the request holds both a plain and a wrapped master secret; send one")
	case plain:
		return &kms.MasterSecret{Key: req.GetMasterSecret(), Salt: req.GetSalt()}, nil
	case len(wrapped) == 0:
		return nil, status.Error(codes.InvalidArgument, "the request holds no master secret")
	}
	file, err := kms.ParseSecretFile(wrapped)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("wrapped master secret: %v", err))
	}
	if !file.IsWrapped() {
		return nil, status.Error(codes.InvalidArgument, "wrapped_master_secret holds a plain master secret; send it as master_secret")
	}
	k := req.GetKmip()
	cfg := kmip.Config{Endpoint: k.GetEndpoint(), ServerCA: k.GetServerCa(), ClientCert: k.GetClientCert(), ClientKey: k.GetClientKey()}
	if err := cfg.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("KMS configuration: %v", err))
	}
	client, err := kmip.New(cfg)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("KMS configuration: %v", err))
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, unwrapTimeout)
	defer cancel()
	s.log.Info("unwrapping the master secret with the external KMS", "endpoint", cfg.Endpoint, "kek", file.Wrapped.KeyID)
	ms, err := kms.UnwrapMasterSecret(ctx, client, file)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, fmt.Sprintf("%v; the node is unchanged, fix the KMS and init again", err))
	}
	return ms, nil
}

// Recover brings the node back with the cluster's master secret: the secret must open the node's state disk
// (otherwise nothing changes and the node stays fresh); then the node measures the cluster ID, restarts
// Kubernetes from its state and its key service, once.
func (s *initServer) Recover(ctx context.Context, req *initpb.InitRequest) (*initpb.RecoverResponse, error) {
	// The same init secret as for Init: without it, anyone could make the node dial a KMS of their choosing or
	// try master secrets of their own on its disk.
	if err := s.authenticate(ctx, "Recover", req.GetInitSecret()); err != nil {
		return nil, err
	}
	if !s.lock.TryLock() {
		return nil, status.Error(codes.FailedPrecondition, "initialisation or recovery of this node is already in progress")
	}
	defer s.lock.Unlock()
	if s.done {
		return nil, status.Error(codes.FailedPrecondition, "this node is already initialised or recovered")
	}
	if !s.recovering {
		return nil, status.Error(codes.FailedPrecondition, "this node's state disk holds no cluster to recover; initialise it with 'constellation apply'")
	}
	ms, err := s.masterSecret(ctx, req)
	if err != nil {
		return nil, err
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	clusterID, err := d.ClusterID()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	key, err := d.DiskKey(s.disk.uuid)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := s.disk.unlock(key); err != nil {
		// The wrong master secret: the disk's key identifier tells, before anything is written.
		return nil, status.Error(codes.FailedPrecondition, fmt.Sprintf("%v; is this the master secret of this cluster?", err))
	}
	// Every control-plane node keeps the cluster's policy for its key service (one that joined before key
	// services ran on every control-plane node has none).
	kept, err := readKeptPolicy(s.disk, s.issuer.Variant())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	egress, err := keptEgress(s.disk)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.done = true
	where, err := recordClusterID(s.issuer, clusterID)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.log.Info("state disk unlocked with the recovered master secret; cluster ID measured", "into", where, "clusterID", fmt.Sprintf("%x", clusterID))
	if s.life != nil {
		if err := s.life.StartNetwork(true); err != nil {
			return nil, status.Error(codes.Internal, fmt.Sprintf("starting the encrypted network: %v", err))
		}
	}
	if err := egress.configure(s.k8s); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := s.k8s.PrepareRuntime(ctx); err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("preparing the container runtime: %v", err))
	}
	if err := s.k8s.Restart(ctx); err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("restarting Kubernetes: %v", err))
	}
	go s.enablePodNetwork(ctx)
	if s.life != nil {
		if err := s.life.Recovered(ms, clusterID, kept); err != nil {
			return nil, status.Error(codes.Internal, fmt.Sprintf("starting the cluster services: %v", err))
		}
	}
	s.log.Info("node recovered")
	return &initpb.RecoverResponse{ClusterId: clusterID}, nil
}

// KeptPolicy is the policy a control-plane node kept on its encrypted state disk for its key service: the
// cluster's measurements on a variant with a vTPM, the cluster's attestation policy (package validators' wire
// form) on a variant without one that binds the cluster in its reports (qemu-sev-snp). At most one is set;
// neither: the node kept none.
type KeptPolicy struct {
	Measurements measurements.M
	Attestation  []byte
}

// readKeptPolicy reads the policy that init or a join kept on the state disk of a node that attests as own. It
// fails closed on a disk that holds both files, measurements on a node without a vTPM, or an attestation
// policy that is not of own, not of a variant that binds the cluster, or not one a validator can enforce.
// The disk is encrypted with authentication under a key derived from the master secret, which the node checked
// by unlocking it: the host can withhold or roll back what is there, never write a policy of its own.
func readKeptPolicy(disk *stateDisk, own attestation.Variant) (KeptPolicy, error) {
	m, err := readClusterPolicy(disk.policyFile())
	if err != nil {
		return KeptPolicy{}, err
	}
	att, err := readAttestationPolicy(disk.attestationFile(), own)
	if err != nil {
		return KeptPolicy{}, err
	}
	switch {
	case m != nil && att != nil:
		return KeptPolicy{}, fmt.Errorf("the state disk holds both a measurement policy (%s) and an attestation policy (%s): a cluster's variant has one of them; this disk was not written by a node of one cluster, recover with the disk the node was initialised or joined with", disk.policyFile(), disk.attestationFile())
	case m != nil && !own.VTPM:
		return KeptPolicy{}, fmt.Errorf("the state disk holds a measurement policy (%s), but this node attests as %s, which has no vTPM: no key service of its cluster enforces PCR measurements; recover with the disk the node was initialised or joined with", disk.policyFile(), own)
	}
	return KeptPolicy{Measurements: m, Attestation: att}, nil
}

// readAttestationPolicy reads the attestation policy kept at path; nil if there is none. The policy must be of
// own, a variant without a vTPM that binds the cluster in its reports, and one a validator can enforce.
func readAttestationPolicy(path string, own attestation.Variant) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's attestation policy from the state disk: %w", err)
	}
	att, err := validators.ParsePolicy(raw)
	if err != nil {
		return nil, fmt.Errorf("the attestation policy on the state disk %s: %w", path, err)
	}
	if att.Variant != own.Name {
		return nil, fmt.Errorf("the attestation policy on the state disk %s is of %s, but this node attests as %s; recover with the disk the node was initialised or joined with", path, att.Variant, own)
	}
	if own.VTPM || !validators.BindsCluster(own) {
		return nil, fmt.Errorf("the state disk %s holds an attestation policy of %s, whose key service enforces the cluster's measurements instead; recover with the disk the node was initialised or joined with", path, own)
	}
	if _, err := validators.New(att, validators.Options{}); err != nil {
		return nil, fmt.Errorf("the attestation policy on the state disk %s: %w", path, err)
	}
	return raw, nil
}

// readClusterPolicy reads the cluster's measurement policy that init or a join kept on the state disk; nil if
// there is none (a control-plane node that joined before key services ran on every control-plane node). A policy that is not valid (one that would accept
// any node image, or the genuine image booted with any boot parameters, too) is an error: the key service is
// never started with it.
func readClusterPolicy(path string) (measurements.M, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's measurement policy from the state disk: %w", err)
	}
	policy, err := measurements.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("the measurement policy on the state disk %s: %w", path, err)
	}
	return policy, nil
}
