// Package keyservice serves keys derived from the cluster's master secret to attested callers over gRPC
// with mutual aTLS: the key service proves what it runs, and every caller must prove it is a node of this
// cluster before it gets a key. Every request is written to the audit log with the caller and the key
// identifier, never the key.
//
// In a cluster the key service runs in its own pod on every control-plane node ([Manifests], [Run]); no node
// is special. The node's bootstrapper, which received the master secret over aTLS (from the CLI at init or
// recovery, or from the key service of another control-plane node when it joined), hands it over on a
// node-local socket ([SecretHolder], [FetchSecret]) together with the cluster's measurements and cluster ID,
// which decide who may call the key service. A key service hands the master secret itself
// ([Server.GetMasterSecret]) only to a control-plane node of the cluster: attested as a member (the cluster's
// measurements, its cluster ID in PCR 15) and named a control-plane node by the provider in its attestation
// key certificate. Callers reach whichever key service answers ([Pool]) and accept only one that proves the
// same of itself ([ControlPlaneOnly]).
//
// A state disk's key is handed out for one node only: the key service binds each disk UUID to the attested
// name of the first node that gets its key ([DiskBinder]), in a record all key services share (immutable
// objects in the Kubernetes API that only the key services may create, [APIDiskBindings]), and refuses the
// key to any other node. The join service, which has validated the joining node's evidence, names the node
// (the subject of its attestation key certificate, which the provider certified); a control-plane node's own
// disk is bound to it at the handover of the master secret.
//
// Which node images are members is the measurement policy in force ([Policy]): the cluster's init
// measurements, until the operator's CLI sends a measurement policy update (package policyupdate: one or two
// measurement sets, an epoch, a MAC under a key derived from the master secret). Anyone may send an update,
// on the key service's policy port ([PolicyPort], where only the key service attests itself); the MAC and
// the epoch decide. The key service keeps the update in force on its node's encrypted state disk
// ([PolicyFile]) and refuses any update whose epoch is not higher (the same update again aside), after a
// restart too; it hands the update on with the master secret to a control-plane node that joins later, and
// checks a caller's connection made under an earlier policy again under the one in force.
//
// The measurement policy is read on the policy port only, never over mutual aTLS: the join service asks for
// the sets in force at every join and every continuous-attestation check ([NewPolicyPool]), and must learn
// them also once they no longer accept its own node's image (the operator's CLI removed the image the cluster
// runs from), when the key service refuses that node at a mutual handshake. The caller trusts the key service
// by its attestation, as on the key service's port.
//
// A qemu-sev-snp cluster has no vTPM and no measurement sets: the bootstrapper hands over the cluster's
// attestation policy instead (Secret.Attestation, package validators' wire form), and the callers must present
// a report of one of its launch measurements whose REPORT_DATA binds this cluster's ID, where the vTPM variants
// prove it in PCR 15 ([MemberValidator]); the name is the one HOST_DATA binds. Nothing updates that policy: a
// measurement policy update is refused ([NewFixedPolicy]), as the join service refuses one for a variant
// without a vTPM, and the policy port answers none.
package keyservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/keyservice/keyservicepb"
	"github.com/constellation-dev/constellation/internal/kms"
)

// remotePurposes are the purposes a remote caller may ask for. The cluster-ID secret and CA seeds never
// leave the control plane this way. The join configuration's MAC key goes to the join service (a
// control-plane node, as every caller of a restricted key service).
var remotePurposes = map[kms.Purpose]bool{
	kms.PurposeDiskKey:    true,
	kms.PurposeVolumeKey:  true,
	kms.PurposeDataKey:    true,
	kms.PurposeJoinConfig: true,
}

// Port is the key service's port on the control-plane node that serves it.
const Port = 9002

// Server implements the KeyService gRPC API.
type Server struct {
	keyservicepb.UnimplementedKeyServiceServer
	deriver *kms.Deriver
	audit   *slog.Logger
	// allowed, if set, decides by the caller's attested name (its attestation key certificate's subject)
	// whether it may get keys at all.
	allowed func(ctx context.Context, name string) (bool, error)
	// disks binds each state disk to the node that first got its key.
	disks DiskBinder
	// secret is what [Server.GetMasterSecret] hands over; nil: it hands over nothing.
	secret *Secret
	// quarantined, if set, tells whether a node is quarantined (it failed its continuous attestation, see
	// package reattestation): such a node gets no key, neither as the caller nor as the node a key is asked for.
	quarantined func(ctx context.Context, node string) (bool, error)
	// policy is the measurement policy the server enforces and serves; nil: none is served.
	policy *Policy
}

// EnforcePolicy makes the server check its callers' connections made under an earlier measurement policy again
// under p's in force, and hand p's update in force on with the master secret. p itself is served on the
// policy port ([NewPolicyServer]), not beside the key service.
func (s *Server) EnforcePolicy(p *Policy) { s.policy = p }

// RefuseQuarantined makes the key service refuse every key to a node that quarantined reports as
// quarantined, whether the node calls or a key is asked for on its behalf; if quarantined fails, it refuses
// the key too.
func (s *Server) RefuseQuarantined(quarantined func(ctx context.Context, node string) (bool, error)) {
	s.quarantined = quarantined
}

// RestrictTo lets only callers get keys whose attested name allowed accepts, for example only
// control-plane nodes, which hand disk keys on to nodes they have attested themselves.
func (s *Server) RestrictTo(allowed func(ctx context.Context, name string) (bool, error)) {
	s.allowed = allowed
}

// BindDisks keeps the binding of state disks to nodes in b instead of the record in memory that [New] starts
// with.
func (s *Server) BindDisks(b DiskBinder) { s.disks = b }

// ShareSecret lets the server hand sec (the master secret it derives from, with the cluster ID and
// measurements) to the control-plane nodes its restriction ([Server.RestrictTo]) allows; without a
// restriction it hands it to nobody.
func (s *Server) ShareSecret(sec *Secret) { s.secret = sec }

// New returns a key service deriving keys with d and writing audit lines to audit. It binds disks to nodes in
// memory until [Server.BindDisks] gives it a persistent record.
func New(d *kms.Deriver, audit *slog.Logger) *Server {
	return &Server{deriver: d, audit: audit, disks: NewDiskBindings()}
}

// NewGRPCServer returns a gRPC server with the key service registered, over mutual aTLS: issuer attests the
// key service, validators decide which callers are nodes of this cluster. Both are required.
func NewGRPCServer(s *Server, issuer attestation.Issuer, validators []attestation.Validator) (*grpc.Server, error) {
	if issuer == nil || len(validators) == 0 {
		return nil, fmt.Errorf("the key service needs an issuer and at least one validator (mutual aTLS)")
	}
	creds, err := atls.NewCredentials(issuer, validators)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	keyservicepb.RegisterKeyServiceServer(srv, s)
	return srv, nil
}

// DataKeyID is the key service's ID of the data key of purpose for identifier: "<purpose>/<identifier>", as
// ParseDataKeyID reads it.
func DataKeyID(purpose kms.Purpose, identifier string) string {
	return string(purpose) + "/" + identifier
}

// ParseDataKeyID splits "<purpose>/<identifier>" (see DataKeyID) and checks that a remote caller may ask for it.
func ParseDataKeyID(id string) (kms.Purpose, string, error) {
	purpose, rest, ok := strings.Cut(id, "/")
	if !ok {
		return "", "", fmt.Errorf("data key ID must be <purpose>/<identifier>, for example disk-key/<disk UUID>")
	}
	if !remotePurposes[kms.Purpose(purpose)] {
		return "", "", fmt.Errorf("keys of purpose %q cannot be requested (allowed: disk-key, volume-key, data-key, join-config)", purpose)
	}
	return kms.Purpose(purpose), rest, nil
}

// DataKey derives the key for a data key ID. It is the key service's derivation path.
func (s *Server) DataKey(id string, length uint32) ([]byte, error) {
	purpose, keyID, err := ParseDataKeyID(id)
	if err != nil {
		return nil, err
	}
	if length > kms.MaxKeyLength {
		return nil, fmt.Errorf("key length %d out of range %d to %d bytes", length, kms.MinKeyLength, kms.MaxKeyLength)
	}
	return s.deriver.Derive(purpose, keyID, int(length))
}

// GetDataKey returns a derived key to an attested caller.
func (s *Server) GetDataKey(ctx context.Context, req *keyservicepb.GetDataKeyRequest) (*keyservicepb.GetDataKeyResponse, error) {
	caller, attested := atls.AttestedPeer(ctx)
	if !attested {
		// Fail closed: the server was started without client attestation.
		s.audit.Error("data key refused: caller not attested", "keyID", safeID(req.GetDataKeyId()))
		return nil, status.Error(codes.Unauthenticated, "the key service only answers attested callers")
	}
	if s.allowed != nil {
		if err := s.authorize(ctx, "data key", caller, "keyID", safeID(req.GetDataKeyId())); err != nil {
			return nil, err
		}
	}
	if err := s.recheck(ctx, "data key", caller, "keyID", safeID(req.GetDataKeyId())); err != nil {
		return nil, err
	}
	if err := s.refuseQuarantined(ctx, "data key", caller, req.GetNode(), "keyID", safeID(req.GetDataKeyId())); err != nil {
		return nil, err
	}
	purpose, keyID, err := ParseDataKeyID(req.GetDataKeyId())
	if err != nil {
		s.audit.Warn("data key refused", "caller", caller, "keyID", safeID(req.GetDataKeyId()), "reason", err.Error())
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	node := req.GetNode()
	key, err := s.DataKey(req.GetDataKeyId(), req.GetLength())
	if err != nil {
		s.audit.Warn("data key refused", "caller", caller, "keyID", safeID(req.GetDataKeyId()), "length", req.GetLength(), "reason", err.Error())
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if purpose == kms.PurposeDiskKey {
		// A disk's key goes to the node the disk is bound to, and to no other: a host that hands a copy of
		// one node's disk to another node gets nothing for it.
		// The binding is made only for a request that is otherwise valid (checked by the derivation above).
		if err := s.disks.Bind(ctx, keyID, node); err != nil {
			clear(key)
			if errors.Is(err, ErrDiskBound) {
				owner, _, _ := s.disks.Owner(ctx, keyID)
				s.audit.Warn("disk key refused: the disk belongs to another node; a node was given a copy of another node's state disk", "caller", caller, "disk", keyID, "node", safeID(node), "boundTo", owner)
				return nil, status.Errorf(codes.PermissionDenied, "disk %s is bound to another node than %q", keyID, node)
			}
			s.audit.Warn("disk key refused", "caller", caller, "keyID", safeID(req.GetDataKeyId()), "node", safeID(node), "reason", err.Error())
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	attrs := []any{"caller", caller, "keyID", req.GetDataKeyId(), "length", req.GetLength()}
	if node != "" {
		attrs = append(attrs, "node", safeID(node))
	}
	s.audit.Info("data key issued", attrs...)
	return &keyservicepb.GetDataKeyResponse{DataKey: key}, nil
}

// refuseQuarantined refuses what was asked for (attrs name it for the audit line) if the attested caller or
// the node it is asked for is quarantined, or if that cannot be checked.
func (s *Server) refuseQuarantined(ctx context.Context, what, caller, forNode string, attrs ...any) error {
	if s.quarantined == nil {
		return nil
	}
	name, _ := atls.AttestedPeerName(ctx)
	for _, node := range []string{name, forNode} {
		if node == "" {
			continue
		}
		q, err := s.quarantined(ctx, node)
		if err != nil {
			s.audit.Error(what+" refused: checking the node's quarantine failed", append([]any{"caller", caller, "node", safeID(node), "error", err}, attrs...)...)
			return status.Error(codes.Unavailable, "checking whether the node is quarantined failed")
		}
		if q {
			s.audit.Warn(what+" refused: the node is quarantined (it failed its continuous attestation)", append([]any{"caller", caller, "node", safeID(node)}, attrs...)...)
			return status.Errorf(codes.PermissionDenied, "node %q is quarantined: it gets no keys until it rejoins with a fresh attestation", node)
		}
	}
	return nil
}

// recheck refuses what was asked for (attrs name it for the audit line) if the caller, attested under an
// earlier measurement policy, does not match the one in force ([Policy.Recheck]).
func (s *Server) recheck(ctx context.Context, what, caller string, attrs ...any) error {
	if s.policy == nil || s.policy.build == nil {
		return nil
	}
	if err := s.policy.Recheck(ctx); err != nil {
		s.audit.Warn(what+" refused: the caller does not match the measurement policy in force", append([]any{"caller", caller, "reason", err.Error()}, attrs...)...)
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

// authorize checks with the restriction that the attested caller may get what of the key service; attrs
// name what it asked for in the audit line of a refusal.
func (s *Server) authorize(ctx context.Context, what, caller string, attrs ...any) error {
	name, _ := atls.AttestedPeerName(ctx)
	ok, err := s.allowed(ctx, name)
	if err != nil {
		s.audit.Error(what+" refused: checking the caller failed", append([]any{"caller", caller, "error", err}, attrs...)...)
		return status.Error(codes.Unavailable, "checking the caller failed")
	}
	if name == "" || !ok {
		s.audit.Warn(what+" refused: caller not allowed", append([]any{"caller", caller}, attrs...)...)
		return status.Errorf(codes.PermissionDenied, "node %q may not get keys from the key service", name)
	}
	return nil
}

// GetMasterSecret hands the master secret, the cluster ID and the measurements to an attested caller that
// the restriction allows (a control-plane node): the handshake has proved it a member of this cluster (the
// cluster's measurements and cluster ID), and the restriction that the provider names it a control-plane node
// in its attestation key certificate. Without a restriction (or without a secret to share) it refuses
// everyone.
func (s *Server) GetMasterSecret(ctx context.Context, _ *keyservicepb.GetMasterSecretRequest) (*keyservicepb.GetMasterSecretResponse, error) {
	caller, attested := atls.AttestedPeer(ctx)
	if !attested {
		s.audit.Error("master secret refused: caller not attested")
		return nil, status.Error(codes.Unauthenticated, "the key service only answers attested callers")
	}
	if s.allowed == nil || s.secret == nil {
		s.audit.Error("master secret refused: this key service hands it to nobody", "caller", caller)
		return nil, status.Error(codes.FailedPrecondition, "this key service hands the master secret to nobody")
	}
	if err := s.authorize(ctx, "master secret", caller); err != nil {
		return nil, err
	}
	if err := s.recheck(ctx, "master secret", caller); err != nil {
		return nil, err
	}
	if err := s.refuseQuarantined(ctx, "master secret", caller, ""); err != nil {
		return nil, err
	}
	var pcrs []byte
	if len(s.secret.Measurements) > 0 {
		var err error
		if pcrs, err = json.Marshal(s.secret.Measurements); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	var update []byte
	if s.policy != nil {
		_, update = s.policy.Current()
	}
	s.audit.Info("master secret handed to a control-plane node", "caller", caller)
	return &keyservicepb.GetMasterSecretResponse{
		Key: s.secret.MasterSecret.Key, Salt: s.secret.MasterSecret.Salt, ClusterId: s.secret.ClusterID, Measurements: pcrs,
		PolicyUpdate: update, Attestation: s.secret.Attestation,
	}, nil
}

// safeID bounds an untrusted identifier for logging.
func safeID(id string) string {
	const limit = 160
	if len(id) > limit {
		id = id[:limit] + "…"
	}
	return fmt.Sprintf("%q", id)
}

// Client calls a key service.
type Client struct {
	conn   *grpc.ClientConn
	api    keyservicepb.KeyServiceClient
	policy keyservicepb.MeasurementPolicyClient
}

// NewClient connects to the key service at addr over mutual aTLS: validators decide which key services to
// trust, issuer attests this caller.
func NewClient(addr string, issuer attestation.Issuer, validators []attestation.Validator) (*Client, error) {
	if issuer == nil || len(validators) == 0 {
		return nil, fmt.Errorf("a key service client needs an issuer and at least one validator (mutual aTLS)")
	}
	creds, err := atls.NewCredentials(issuer, validators)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connecting to key service %s: %w", addr, err)
	}
	return newClient(conn), nil
}

func newClient(conn *grpc.ClientConn) *Client {
	return &Client{conn: conn, api: keyservicepb.NewKeyServiceClient(conn), policy: keyservicepb.NewMeasurementPolicyClient(conn)}
}

// NewPolicyClient connects to the policy port of a key service ([PolicyPort]) at addr over aTLS on which
// only the key service attests itself: validators decide which key services to trust. Only the measurement
// policy calls work on it.
func NewPolicyClient(addr string, validators []attestation.Validator) (*Client, error) {
	if len(validators) == 0 {
		return nil, errors.New("a key service's policy client needs at least one validator")
	}
	creds, err := atls.NewCredentials(nil, validators)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connecting to key service %s: %w", addr, err)
	}
	return newClient(conn), nil
}

// GetMeasurementPolicy returns the key service's measurement policy update in force (nil: none since init;
// parsed, its MAC not verified: the caller trusts the attested key service, or verifies it with the key) and
// the measurements of the cluster's init. It works on a client of the policy port ([NewPolicyClient]) only.
func (c *Client) GetMeasurementPolicy(ctx context.Context) (*policyupdate.Update, measurements.M, error) {
	resp, err := c.policy.GetMeasurementPolicy(ctx, &keyservicepb.GetMeasurementPolicyRequest{})
	if err != nil {
		return nil, nil, fmt.Errorf("getting the measurement policy: %w", err)
	}
	var base measurements.M
	if len(resp.GetMeasurements()) > 0 {
		// A key service of a cluster without a vTPM has no measurements.
		if base, err = measurements.Parse(resp.GetMeasurements()); err != nil {
			return nil, nil, fmt.Errorf("the key service's measurements: %w", err)
		}
	}
	if len(resp.GetUpdate()) == 0 {
		return nil, base, nil
	}
	u, err := policyupdate.Parse(resp.GetUpdate())
	if err != nil {
		return nil, nil, fmt.Errorf("the key service's measurement policy update: %w", err)
	}
	return u, base, nil
}

// UpdateMeasurementPolicy sends the update raw (package policyupdate's wire form) and returns the update in
// force afterwards. A refused update fails with the key service's reason: codes.PermissionDenied (its MAC),
// codes.FailedPrecondition (an epoch not above the one in force), codes.InvalidArgument (its content).
func (c *Client) UpdateMeasurementPolicy(ctx context.Context, raw []byte) (*policyupdate.Update, error) {
	resp, err := c.policy.UpdateMeasurementPolicy(ctx, &keyservicepb.UpdateMeasurementPolicyRequest{Update: raw})
	if err != nil {
		return nil, fmt.Errorf("sending the measurement policy update: %w", err)
	}
	u, err := policyupdate.Parse(resp.GetUpdate())
	if err != nil {
		return nil, fmt.Errorf("the key service's measurement policy update in force: %w", err)
	}
	return u, nil
}

// GetDataKey asks for the key with the given ID ("<purpose>/<identifier>") and length.
func (c *Client) GetDataKey(ctx context.Context, id string, length uint32) ([]byte, error) {
	return c.getDataKey(ctx, &keyservicepb.GetDataKeyRequest{DataKeyId: id, Length: length})
}

// GetDiskKey asks for the key of a state disk on behalf of node, the attested name of the node that
// presented the disk. The key service refuses it (codes.PermissionDenied) if the disk is bound to another
// node.
func (c *Client) GetDiskKey(ctx context.Context, uuid, node string, length uint32) ([]byte, error) {
	return c.getDataKey(ctx, &keyservicepb.GetDataKeyRequest{DataKeyId: DataKeyID(kms.PurposeDiskKey, uuid), Length: length, Node: node})
}

func (c *Client) getDataKey(ctx context.Context, req *keyservicepb.GetDataKeyRequest) ([]byte, error) {
	id, length := req.GetDataKeyId(), req.GetLength()
	resp, err := c.api.GetDataKey(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("getting data key %s: %w", id, err)
	}
	if len(resp.GetDataKey()) != int(length) {
		return nil, fmt.Errorf("getting data key %s: key service returned %d bytes, want %d", id, len(resp.GetDataKey()), length)
	}
	return resp.GetDataKey(), nil
}

// GetMasterSecret asks the key service for the cluster's master secret, with the cluster ID and the
// measurements, as a control-plane node does after it joined. The answer is checked as the bootstrapper's
// handover is ([Secret]); Node and DiskUUID are left empty.
func (c *Client) GetMasterSecret(ctx context.Context) (*Secret, error) {
	resp, err := c.api.GetMasterSecret(ctx, &keyservicepb.GetMasterSecretRequest{})
	if err != nil {
		return nil, fmt.Errorf("getting the master secret: %w", err)
	}
	var pcrs measurements.M
	if len(resp.GetMeasurements()) > 0 {
		if pcrs, err = measurements.Parse(resp.GetMeasurements()); err != nil {
			return nil, fmt.Errorf("the key service's measurements: %w", err)
		}
	}
	s := &Secret{MasterSecret: &kms.MasterSecret{Key: resp.GetKey(), Salt: resp.GetSalt()}, ClusterID: resp.GetClusterId(), Measurements: pcrs, PolicyUpdate: resp.GetPolicyUpdate(), Attestation: resp.GetAttestation()}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("the key service's master secret: %w", err)
	}
	d, err := kms.NewDeriver(s.MasterSecret)
	if err != nil {
		return nil, err
	}
	if id, err := d.ClusterID(); err != nil || !bytes.Equal(id, s.ClusterID) {
		return nil, errors.New("the key service's master secret does not derive its cluster ID")
	}
	return s, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
