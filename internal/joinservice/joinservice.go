// Package joinservice admits nodes into a running cluster. It runs in the cluster, on every control-plane
// node, and serves gRPC over mutual aTLS: it attests itself (through the node's attestation agent) to the
// joining node, and the joining node must present evidence that matches the cluster's attestation policy
// before it gets anything. Only then does it hand out what joining needs: a short-lived bootstrap token, the
// cluster CA's hash, and the cluster ID the node measures into its PCR, after which that node can never again
// pose as a fresh one; with the WireGuard mesh, its peers and the mesh's root key for preshared keys
// ([MeshRootKeyID]), from the key service.
//
// A node gets the key of the state disk it presents only if that disk is its own: the key service binds every
// disk UUID to the first node that got its key, by the node's attested name (the subject of its attestation
// key certificate, which the provider certified for that vTPM, never a name from the request), and a node that
// presents another node's disk is refused and logged.
//
// The attestation policy lives in the cluster (a ConfigMap mounted as a directory, see [Config]) and is read
// again whenever it changes, so tightening the measurements takes effect without a restart. Any administrator
// of the cluster can edit a ConfigMap, so the configuration counts only with a MAC under a key derived from the
// master secret ([ConfigMAC]): the first control-plane node writes it at init from the policy the CLI sent
// over aTLS, and only who holds the master secret (the CLI) can change it. The join service gets the key from
// the key service ([FetchConfigKey]), which it trusts by its own node's boot measurements and cluster ID; on
// qemu-sev-snp by its own node's report: the same launch measurement, and the same cluster binding in
// REPORT_DATA, which the join service requires without knowing the cluster ID ([KeyServiceTrust]).
//
// A joining node also gets the cluster's egress settings: the registry mirrors and the nodes' DNS servers from
// the join configuration (under its MAC), and the mirrors' credentials, a secret, from a Secret of their own
// that only this service mounts, under a MAC of their own ([CredentialsManifest]); never from a ConfigMap. They
// travel only inside the attested answer.
//
// Which node images may join is the measurement policy in force at the key service ([Config.FollowPolicy],
// [KeyServicePolicy]), asked at every join: the configuration's measurements until the operator's CLI sends
// a measurement policy update (package policyupdate), then the update's one or two sets (the old and the new
// image during an upgrade). The key service keeps the highest epoch it accepted on its node's encrypted state
// disk, so neither an update nor a join configuration saved from an upgrade's window reopens it. The continuous
// attestation (package reattestation) judges the running nodes by the same policy ([Config.MemberValidator]).
//
// The join service asks on the key service's policy port, where only the key service attests itself: the
// operator may remove the very image the cluster runs from the policy, and the key service then refuses this
// node's own join service at a mutual handshake, yet it must still learn the new policy, refuse the old image's
// nodes at join and fail the running ones. The update carries a MAC under a key derived from the master
// secret, which the join service does not hold and does not need: trusting the attested key service suffices.
// The key service proves, in evidence bound to the TLS channel, that it runs this node's own image on a
// control-plane node the provider certified, with this cluster's ID in PCR 15; that code holds the master
// secret and enforces or answers an update only after its MAC and cluster ID verified. Handing the join
// service the MAC key instead would let it author policies, which only the operator's CLI may. The host, which
// can redirect the connection, can answer only with evidence of such a node, or not at all; if no key service
// answers, nobody joins. A key service that lags behind (it missed an update while it was down) does not roll
// the join service back: it keeps the newest update it was answered.
//
// A join service that starts on a node whose image the policy in force no longer accepts gets no configuration
// key, and so admits nobody: it fails closed. It tells that apart from a passing refusal by asking the policy
// port ([OwnImageInForce]), and then says so as an error at every try, with what to do, and keeps waiting
// rather than exiting, so that its pod does not restart in a loop that hides the reason ([ConfigKeyWait]); it
// goes on by itself once a policy that accepts its image is in force again.
//
// A joining node trusts a join service, and a control-plane node the key services it gets the master secret
// from, that booted its own image, or one of the sets of the peer policy its provider hints during an upgrade
// ([PeerValidator], [MemberPeerValidator]). The host writes that hint, so the node measures it into PCR 14
// first ([MeasurePeerHint]); the join service replays PCR 14 from the node's event log, counting only what the
// verified quote proves, and admits the node only if every set it trusted is covered by a set in force. A node
// the host pointed at a rogue image's join service is refused by the genuine one. The member policy of the
// continuous attestation leaves PCR 14 alone.
package joinservice

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// Tokens creates Kubernetes bootstrap tokens.
type Tokens interface {
	CreateToken(ctx context.Context, ttl time.Duration) (string, error)
}

// Roles tells whether a node, by the name its attestation key certificate gives it, is a control-plane node.
// The provider answers, as it also issued that certificate.
type Roles interface {
	IsControlPlane(ctx context.Context, name string) (bool, error)
}

// Mesh is the cluster's WireGuard mesh (see package meshpeers).
type Mesh interface {
	// Admit makes the node name, with key, a peer of the control plane the joining node talks to.
	Admit(ctx context.Context, name string, key wgmesh.Key) error
	// List returns the nodes of the mesh.
	List(ctx context.Context) ([]meshpeers.Peer, error)
	// PresharedRoot returns the mesh's root key for WireGuard preshared keys (see MeshRootKeyID).
	PresharedRoot(ctx context.Context) (wgmesh.Key, error)
}

// Options are what a join service works with.
type Options struct {
	// Config is the cluster's join configuration.
	Config *Config
	Tokens Tokens
	Roles  Roles
	// Disks hands out state disk keys; nil: the service refuses joins that name a disk.
	Disks DiskKeys
	// Mesh admits nodes into the WireGuard mesh; nil: no keys are required.
	Mesh Mesh
	// PKIDir is the control plane's PKI directory (kubeadm's /etc/kubernetes/pki).
	PKIDir string
	// CredentialsDir is the mounted Secret with the registry mirrors' credentials ([CredentialsDir]); empty:
	// none are handed out.
	CredentialsDir string
	// Endpoint is the API server address (host:port) joining nodes use.
	Endpoint string
	// Release lifts the quarantine of a node that failed its continuous attestation (reattestation.Release), once
	// it rejoins with fresh valid evidence; nil: no continuous attestation.
	Release func(ctx context.Context, name string) (released bool, err error)
	// IssuanceLimiter limits the evidence the service issues in handshakes, before anyone is authenticated;
	// nil: atls.DefaultIssuanceLimits.
	IssuanceLimiter *atls.IssuanceLimiter
	Log             *slog.Logger
}

// Server implements the Join gRPC API.
type Server struct {
	joinpb.UnimplementedJoinServer
	config   *Config
	tokens   Tokens
	roles    Roles
	disks    DiskKeys
	mesh     Mesh
	pkiDir   string // the control plane's PKI directory
	credsDir string // the mounted Secret with the registry mirrors' credentials
	endpoint string // host:port of the API server joining nodes use
	release  func(ctx context.Context, name string) (bool, error)
	limit    *atls.IssuanceLimiter
	log      *slog.Logger
}

// New returns a join service.
func New(o Options) *Server {
	return &Server{config: o.Config, tokens: o.Tokens, roles: o.Roles, disks: o.Disks, mesh: o.Mesh, pkiDir: o.PKIDir, credsDir: o.CredentialsDir, endpoint: o.Endpoint, release: o.Release, limit: o.IssuanceLimiter, log: o.Log}
}

// NewGRPCServer returns a gRPC server with the join service over mutual aTLS: issuer attests the service,
// and joining nodes are checked against the current configuration. The evidence it issues in handshakes is
// limited per source and in total (see atls.IssuanceLimiter), so that a flood of handshakes does not hold up
// the joins of genuine nodes.
func NewGRPCServer(s *Server, issuer attestation.Issuer) (*grpc.Server, error) {
	creds, err := atls.NewCredentials(issuer, []attestation.Validator{s.config.Validator()})
	if err != nil {
		return nil, err
	}
	if s.limit != nil {
		creds.LimitIssuance(s.limit)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	joinpb.RegisterJoinServer(srv, s)
	return srv, nil
}

// Join admits a node whose evidence the aTLS handshake has validated.
func (s *Server) Join(ctx context.Context, req *joinpb.JoinRequest) (*joinpb.JoinResponse, error) {
	caller, ok := atls.AttestedPeer(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "the join service only admits attested nodes")
	}
	if uuid := req.GetDiskUuid(); uuid != "" {
		if err := CheckDiskUUID(uuid); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if s.disks == nil {
			return nil, status.Error(codes.FailedPrecondition, "this join service hands out no state disk keys")
		}
	}
	name, _ := atls.AttestedPeerName(ctx)
	if req.GetDiskUuid() != "" && name == "" {
		// A disk is bound to the node that first gets its key: a node without a certified name has none to
		// bind it to.
		return nil, status.Error(codes.PermissionDenied, "the node's attestation key certificate names no node; no state disk key is handed out for it")
	}
	// A node's first join carries the WireGuard key it generated; a node that rejoins (its state disk holds
	// its key, which it published before) carries none.
	var meshKey wgmesh.Key
	if raw := req.GetWireguardPublicKey(); len(raw) > 0 {
		if s.mesh == nil {
			return nil, status.Error(codes.FailedPrecondition, "this join service admits no nodes to a WireGuard mesh")
		}
		if len(raw) != len(meshKey) || [32]byte(raw) == meshKey {
			return nil, status.Errorf(codes.InvalidArgument, "the join request's WireGuard public key is not valid (%d bytes, want 32 not all zero)", len(raw))
		}
		if name == "" {
			return nil, status.Error(codes.PermissionDenied, "the node's attestation key certificate names no node")
		}
		meshKey = wgmesh.Key(raw)
	}
	// The kubelet's identity is the attested node's, whatever the request says.
	csr, err := CheckKubeletCSR(req.GetKubeletCsr(), name)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var files []*joinpb.PKIFile
	if req.GetControlPlane() {
		cp, err := s.roles.IsControlPlane(ctx, name)
		if err != nil {
			s.log.Error("join failed: looking up the node's role", "caller", caller, "error", err)
			return nil, status.Error(codes.Unavailable, "looking up the node's role failed")
		}
		if name == "" || !cp {
			s.log.Warn("control-plane join refused: not a control-plane node", "caller", caller)
			return nil, status.Errorf(codes.PermissionDenied, "node %q is not a control-plane node of this cluster; it may join as a worker only", name)
		}
		if files, err = readPKI(s.pkiDir); err != nil {
			s.log.Error("join failed: reading the control plane's PKI", "error", err)
			return nil, status.Error(codes.Internal, "reading the control plane's PKI failed")
		}
	}
	cur, err := s.config.Current()
	if err != nil {
		s.log.Error("join refused: no valid join configuration", "caller", caller, "error", err)
		return nil, status.Error(codes.Unavailable, "the join service has no valid configuration")
	}
	// The mirrors' credentials count only with their MAC, and only for the mirrors of the authenticated
	// configuration; before anything is handed out or changed for the node.
	creds, err := readCredentials(s.credsDir, s.config.macKey, cur.RegistryMirrors)
	if err != nil {
		s.log.Error("join refused: the registry mirrors' credentials are not usable; restore the Secret "+CredentialsSecretName+" as the control plane wrote it", "caller", caller, "error", err)
		return nil, status.Error(codes.Unavailable, "the join service has no valid registry credentials")
	}
	ca, err := loadClusterCA(s.pkiDir)
	if err != nil {
		s.log.Error("join failed: reading the cluster CA", "error", err)
		return nil, status.Error(codes.Internal, "reading the cluster CA failed")
	}
	// A quarantined node that rejoins has rebooted and passed a fresh attestation against the current policy
	// (the handshake): that, and only that, lifts its quarantine, before it asks for its keys.
	if s.release != nil && name != "" {
		released, err := s.release(ctx, name)
		if err != nil {
			s.log.Error("join failed: releasing the node from its quarantine", "caller", caller, "node", name, "error", err)
			return nil, status.Error(codes.Unavailable, "releasing the node from its quarantine failed")
		}
		if released {
			s.log.Warn("quarantined node released: it rejoined with fresh evidence that matches the cluster's policy", "caller", caller, "node", name)
		}
	}
	var diskKey []byte
	if uuid := req.GetDiskUuid(); uuid != "" {
		if diskKey, err = s.disks.DiskKey(ctx, uuid, name); err != nil {
			if errors.Is(err, ErrDiskOfAnotherNode) {
				s.log.Warn("join refused: the node presented the state disk of another node; the host may have given it a copy of that node's disk", "caller", caller, "node", name, "disk", uuid, "error", err)
				return nil, status.Errorf(codes.PermissionDenied, "state disk %s belongs to another node than %q; boot this node with its own or a blank disk", uuid, name)
			}
			s.log.Error("join failed: getting the disk key", "caller", caller, "disk", uuid, "error", err)
			return nil, status.Error(codes.Unavailable, "getting the state disk key failed")
		}
	}
	kubeletCert, err := ca.signKubelet(csr, time.Now())
	if err != nil {
		s.log.Error("join failed: signing the kubelet certificate", "caller", caller, "error", err)
		return nil, status.Error(codes.Internal, "signing the kubelet certificate failed")
	}
	var peers []*joinpb.MeshPeer
	var pskRoot []byte
	if s.mesh != nil {
		// Without the root the node could configure no peer: refuse the join rather than admit a node
		// whose tunnels would lack their preshared keys.
		root, err := s.mesh.PresharedRoot(ctx)
		if err == nil && root == (wgmesh.Key{}) {
			err = errors.New("the root key is empty")
		}
		if err != nil {
			s.log.Error("join failed: getting the WireGuard preshared root key", "caller", caller, "error", err)
			return nil, status.Error(codes.Unavailable, "getting the WireGuard preshared root key failed")
		}
		pskRoot = root[:]
		// A peer of this control plane before the node gets its token: its first request to the API server
		// already goes through the tunnel.
		if meshKey != (wgmesh.Key{}) {
			if err := s.mesh.Admit(ctx, name, meshKey); err != nil {
				s.log.Error("join failed: admitting the node to the WireGuard mesh", "caller", caller, "error", err)
				return nil, status.Error(codes.Unavailable, "admitting the node to the WireGuard mesh failed")
			}
		}
		list, err := s.mesh.List(ctx)
		if err != nil {
			s.log.Error("join failed: listing the mesh", "caller", caller, "error", err)
			return nil, status.Error(codes.Unavailable, "listing the cluster's WireGuard peers failed")
		}
		for _, p := range list {
			if p.Node != name {
				peers = append(peers, &joinpb.MeshPeer{Node: p.Node, PublicKey: p.PublicKey[:]})
			}
		}
	}
	token, err := s.tokens.CreateToken(ctx, joinpb.TokenTTL)
	if err != nil {
		s.log.Error("join failed: creating a bootstrap token", "caller", caller, "error", err)
		return nil, status.Error(codes.Internal, "creating a bootstrap token failed")
	}
	attrs := []any{"caller", caller, "controlPlane", req.GetControlPlane(), "disk", req.GetDiskUuid(), "tokenTTL", joinpb.TokenTTL.String(), "kubeletCertificate", csr.Subject.CommonName}
	if meshKey != (wgmesh.Key{}) {
		attrs = append(attrs, "wireguardKey", meshKey.String())
	}
	s.log.Info("node admitted", attrs...)
	return &joinpb.JoinResponse{ApiEndpoint: s.endpoint, Token: token, CaCertHash: CAHash(ca.cert), ClusterId: cur.ClusterID, ControlPlaneFiles: files, DiskKey: diskKey, MeshPeers: peers, MeshPskRoot: pskRoot, KubeletCertificate: kubeletCert, CaCertificate: ca.cert.Raw, RegistryMirrors: joinpb.MirrorsToProto(cur.RegistryMirrors),
		RegistryCredentials: joinpb.CredentialsToProto(creds), DnsServers: cur.DNSServers}, nil
}

// readPKI reads the control plane's shared PKI files.
func readPKI(dir string) ([]*joinpb.PKIFile, error) {
	files := make([]*joinpb.PKIFile, 0, len(joinpb.ControlPlaneFiles))
	for _, name := range joinpb.ControlPlaneFiles {
		content, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		files = append(files, &joinpb.PKIFile{Name: name, Content: content})
	}
	return files, nil
}

// CACertHash returns kubeadm's discovery hash of the CA certificate at path: "sha256:" and the hex SHA-256
// of its public key.
func CACertHash(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", errors.New("cluster CA certificate is not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("parsing the cluster CA certificate: %w", err)
	}
	return CAHash(cert), nil
}

// CAHash is kubeadm's discovery hash of a CA certificate: "sha256:" and the hex SHA-256 of its public key.
func CAHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}
