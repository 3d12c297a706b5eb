package keyservice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice/keyservicepb"
	"github.com/constellation-dev/constellation/internal/kms"
)

// PolicyFile is where a key service keeps the measurement policy update in force: on its node's encrypted
// state disk, which no administrator of the cluster can write through the Kubernetes API. The epoch kept there
// is what refuses an old update sent again, after a restart too.
const PolicyFile = "/var/lib/constellation/key-service/measurement-policy.json"

// PolicyPort is the key service's port on which only the key service attests itself (server-side aTLS): the
// operator's CLI, which is no node, and the upgrade controller read the measurement policy and send updates
// there. An update counts by its MAC and epoch, not by who sends it.
const PolicyPort = 9003

// Policy is the measurement policy a key service enforces on its callers, and hands the join service: the
// measurements of the cluster's init (epoch 0), until an update of the operator's CLI
// ([policyupdate.Update]) replaces them with one or two measurement sets. It accepts an update only if its
// MAC verifies under the master secret's measurement-policy key, it is for this cluster, and its epoch is
// higher than the one in force (the update in force is accepted again, unchanged); it keeps the update in its
// file before it enforces it, and reads it back at start, so that no update older than one it enforced is
// ever enforced again.
type Policy struct {
	keyservicepb.UnimplementedMeasurementPolicyServer
	key       []byte
	clusterID []byte
	base      measurements.M
	file      string
	build     func(sets []measurements.M) (attestation.Validator, error)
	log       *slog.Logger
	// fixed says that the cluster's variant has no vTPM ([NewFixedPolicy]): there are no measurement sets to
	// update, and every update is refused.
	fixed bool

	mu        sync.Mutex
	current   *policyupdate.Update // nil: epoch 0, base in force
	raw       []byte               // current's wire form
	validator attestation.Validator
	// seen are the callers' evidence the validator accepted, by its hash, with the nonce it was bound to and
	// the policy it was accepted under (gen, counted up by every update put in force): a connection made
	// under an older policy is checked again under the one in force before it gets anything
	// ([Policy.Recheck]).
	gen  uint64
	seen map[[32]byte]seenEvidence
	fifo [][32]byte // seen's keys, oldest first
}

// seenEvidence is a caller's evidence accepted at its handshake.
type seenEvidence struct {
	nonce []byte
	gen   uint64
}

// maxSeen bounds the record of accepted evidence. The callers are the control-plane nodes' join services and
// bootstrappers, which keep their connections: far fewer.
const maxSeen = 4096

// NewPolicy returns the policy of the cluster of d and clusterID, with base the measurements of its init, kept
// in file ("": in memory only, for tests). It reads the update file holds: one that does not verify is an
// error, as the key service would otherwise go back to an older policy. build makes the validator of the
// callers from the sets in force (nil: none is made).
func NewPolicy(d *kms.Deriver, clusterID []byte, base measurements.M, file string, build func(sets []measurements.M) (attestation.Validator, error), log *slog.Logger) (*Policy, error) {
	key, err := d.MeasurementPolicyKey()
	if err != nil {
		return nil, err
	}
	if err := base.Validate(); err != nil {
		return nil, fmt.Errorf("the cluster's measurements: %w", err)
	}
	p := &Policy{key: key, clusterID: clusterID, base: base, file: file, build: build, log: log}
	if file != "" {
		raw, err := os.ReadFile(file)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("reading the measurement policy in force: %w", err)
		default:
			u, err := policyupdate.Open(raw, key, clusterID)
			if err != nil {
				return nil, fmt.Errorf("the measurement policy in force (%s) is unusable, and the key service does not go back to an older one; restore the file from the node's state disk or send the update again with 'constellation': %w", file, err)
			}
			p.current, p.raw = u, raw
		}
	}
	if p.validator, err = p.validatorFor(p.sets()); err != nil {
		return nil, err
	}
	return p, nil
}

// ErrNoMeasurementPolicy says that a measurement policy update was sent to the key service of a cluster whose
// variant has no vTPM ([NewFixedPolicy]).
var ErrNoMeasurementPolicy = errors.New("this cluster's nodes have no vTPM, so there are no measurement sets to update; a measurement policy update is refused")

// NewFixedPolicy returns the policy of the cluster of d and clusterID whose variant has no vTPM (qemu-sev-snp):
// callers must pass v (the members of the cluster under its attestation policy, see [MemberValidator]), which
// no update changes: [Policy.Apply] refuses every update with [ErrNoMeasurementPolicy], as the join service
// refuses to apply one, and the policy port answers none.
func NewFixedPolicy(d *kms.Deriver, clusterID []byte, v attestation.Validator, log *slog.Logger) (*Policy, error) {
	if v == nil {
		return nil, errors.New("a key service without a vTPM policy needs the validator of the cluster's members")
	}
	key, err := d.MeasurementPolicyKey()
	if err != nil {
		return nil, err
	}
	return &Policy{
		key: key, clusterID: clusterID, log: log, fixed: true, validator: v,
		build: func([]measurements.M) (attestation.Validator, error) { return nil, ErrNoMeasurementPolicy },
	}, nil
}

func (p *Policy) validatorFor(sets []measurements.M) (attestation.Validator, error) {
	if p.build == nil {
		return nil, nil
	}
	return p.build(sets)
}

// sets returns the sets in force (none for a fixed policy); p.mu held or p not shared yet.
func (p *Policy) sets() []measurements.M {
	if p.fixed {
		return nil
	}
	if p.current == nil {
		return []measurements.M{p.base}
	}
	return p.current.Sets
}

// Sets returns the measurement sets in force: the init's, or the update's.
func (p *Policy) Sets() []measurements.M {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sets()
}

// Current returns the update in force and its wire form (nil, nil: none since the cluster's init).
func (p *Policy) Current() (*policyupdate.Update, []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current, p.raw
}

// Apply puts the update raw in force if it verifies and supersedes the one in force ([policyupdate.Supersedes]),
// after it kept it in the policy file, and returns the update in force afterwards and whether it changed.
func (p *Policy) Apply(raw []byte) (*policyupdate.Update, bool, error) {
	if p.fixed {
		return nil, false, ErrNoMeasurementPolicy
	}
	u, err := policyupdate.Open(raw, p.key, p.clusterID)
	if err != nil {
		return nil, false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	take, err := policyupdate.Supersedes(p.current, u)
	if err != nil || !take {
		return p.current, false, err
	}
	v, err := p.validatorFor(u.Sets)
	if err != nil {
		return nil, false, fmt.Errorf("measurement policy update for epoch %d: %w", u.Epoch, err)
	}
	canonical, err := u.Marshal()
	if err != nil {
		return nil, false, err
	}
	if p.file != "" {
		if err := os.MkdirAll(filepath.Dir(p.file), 0o700); err != nil {
			return nil, false, fmt.Errorf("keeping the measurement policy: %w", err)
		}
		if err := atomicfile.Write(p.file, canonical, 0o600); err != nil {
			return nil, false, fmt.Errorf("keeping the measurement policy: %w", err)
		}
	}
	p.current, p.raw, p.validator = u, canonical, v
	p.gen++
	return u, true, nil
}

// Validator returns the validator of the callers: members of the cluster with one of the sets in force, at
// the time of each call. It is nil if the policy has no build function.
func (p *Policy) Validator() attestation.Validator {
	if p.build == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return policyValidator{p: p, variant: p.validator.Variant()}
}

type policyValidator struct {
	p       *Policy
	variant attestation.Variant
}

func (v policyValidator) Variant() attestation.Variant { return v.variant }

func (v policyValidator) Validate(ctx context.Context, evidence, nonce []byte) ([]byte, error) {
	v.p.mu.Lock()
	current, gen := v.p.validator, v.p.gen
	v.p.mu.Unlock()
	userData, err := current.Validate(ctx, evidence, nonce)
	if err != nil {
		return nil, err
	}
	v.p.remember(sha256.Sum256(evidence), seenEvidence{nonce: slices.Clone(nonce), gen: gen})
	return userData, nil
}

func (p *Policy) remember(h [32]byte, e seenEvidence) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[[32]byte]seenEvidence{}
	}
	if _, ok := p.seen[h]; !ok {
		p.fifo = append(p.fifo, h)
	}
	p.seen[h] = e
	for len(p.fifo) > maxSeen {
		delete(p.seen, p.fifo[0])
		p.fifo = p.fifo[1:]
	}
}

// Recheck checks the attested caller of a call under the measurement sets in force: a connection whose
// handshake was validated under an older policy (a node of the old image during an upgrade, which keeps its
// connection after the upgrade ended) must still match one of them, or it gets nothing. The caller's evidence
// is validated again with the nonce of its handshake.
func (p *Policy) Recheck(ctx context.Context) error {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return errors.New("the call has no peer")
	}
	info, ok := pr.AuthInfo.(atls.AuthInfo)
	if !ok || !info.PeerAttested || len(info.State.PeerCertificates) == 0 {
		return errors.New("the caller is not attested")
	}
	for _, ext := range info.State.PeerCertificates[0].Extensions {
		var evidence []byte
		if !attestation.IsVariantOID(ext.Id) {
			continue
		}
		if rest, err := asn1.Unmarshal(ext.Value, &evidence); err != nil || len(rest) != 0 {
			continue
		}
		h := sha256.Sum256(evidence)
		p.mu.Lock()
		e, found := p.seen[h]
		current, gen := p.validator, p.gen
		p.mu.Unlock()
		if !found {
			continue
		}
		if e.gen == gen {
			return nil
		}
		if _, err := current.Validate(ctx, evidence, e.nonce); err != nil {
			return fmt.Errorf("the caller was attested under an earlier measurement policy and does not match the one in force: %w", err)
		}
		p.remember(h, seenEvidence{nonce: e.nonce, gen: gen})
		return nil
	}
	return errors.New("the caller's evidence is not among those this key service accepted; connect again")
}

// MemberValidators returns a builder for [NewPolicy]: the members of the cluster clusterID on a vTPM of
// variant that akRoots certified, with one of the sets.
func MemberValidators(variant attestation.Variant, akRoots []*x509.Certificate, clusterID []byte, log *slog.Logger) func(sets []measurements.M) (attestation.Validator, error) {
	return func(sets []measurements.M) (attestation.Validator, error) {
		vs := make([]attestation.Validator, 0, len(sets))
		for _, set := range sets {
			v, err := vtpm.NewValidatorFor(variant, akRoots, measurements.MemberPolicy(set, clusterID), log)
			if err != nil {
				return nil, err
			}
			vs = append(vs, v)
		}
		return policyupdate.AnySet(vs...)
	}
}

// MemberValidator returns the validator of the members of the cluster clusterID under the cluster's
// attestation policy att, for a variant without a vTPM that binds the cluster in its hardware report
// (qemu-sev-snp, validators.BindsCluster): a node of another launch measurement, a fresh node and a member of
// another cluster are refused. opts are the validator's trust anchors (the zero value: the embedded roots).
func MemberValidator(att *validators.Policy, clusterID []byte, opts validators.Options) (attestation.Validator, error) {
	if att == nil {
		return nil, errors.New("no attestation policy for the key service's callers")
	}
	if len(clusterID) == 0 {
		return nil, errors.New("the key service's callers must be members of a cluster, but no cluster ID is set")
	}
	variant, err := attestation.VariantByName(att.Variant)
	if err != nil {
		return nil, err
	}
	if !validators.BindsCluster(variant) {
		return nil, fmt.Errorf("%s evidence does not bind the cluster its node belongs to; the key service's callers cannot prove membership by it", variant)
	}
	p := *att
	p.Fresh, p.ClusterID = false, bytes.Clone(clusterID)
	return validators.New(&p, opts)
}

// GetMeasurementPolicy returns the update in force and the init's measurements; anyone may ask, nothing of it
// is secret. A fixed policy ([NewFixedPolicy]) answers neither.
func (p *Policy) GetMeasurementPolicy(context.Context, *keyservicepb.GetMeasurementPolicyRequest) (*keyservicepb.GetMeasurementPolicyResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fixed {
		return &keyservicepb.GetMeasurementPolicyResponse{}, nil
	}
	base, err := p.base.MarshalJSON()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &keyservicepb.GetMeasurementPolicyResponse{Update: p.raw, Measurements: base}, nil
}

// UpdateMeasurementPolicy applies an update ([Policy.Apply]) from anyone: its MAC and epoch decide.
func (p *Policy) UpdateMeasurementPolicy(ctx context.Context, req *keyservicepb.UpdateMeasurementPolicyRequest) (*keyservicepb.UpdateMeasurementPolicyResponse, error) {
	from := "unknown"
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		from = pr.Addr.String()
	}
	if name, ok := atls.AttestedPeerName(ctx); ok && name != "" {
		from = name
	}
	u, changed, err := p.Apply(req.GetUpdate())
	if err != nil {
		p.logger().Warn("measurement policy update refused", "from", from, "reason", err.Error())
		switch {
		case errors.Is(err, policyupdate.ErrNotAuthentic):
			return nil, status.Error(codes.PermissionDenied, err.Error())
		case errors.Is(err, policyupdate.ErrStale), errors.Is(err, policyupdate.ErrConflict), errors.Is(err, ErrNoMeasurementPolicy):
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		default:
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if changed {
		p.logger().Info("measurement policy update in force", "from", from, "epoch", u.Epoch, "sets", len(u.Sets), "policy", u.String())
	}
	_, raw := p.Current()
	return &keyservicepb.UpdateMeasurementPolicyResponse{Update: raw}, nil
}

func (p *Policy) logger() *slog.Logger {
	if p.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.log
}

// NewPolicyServer returns the gRPC server of the policy port ([PolicyPort]): the measurement policy service
// only, over aTLS on which issuer attests the key service and callers are not attested.
func NewPolicyServer(p *Policy, issuer attestation.Issuer) (*grpc.Server, error) {
	if issuer == nil {
		return nil, errors.New("the key service's policy port needs an issuer")
	}
	creds, err := atls.NewCredentials(issuer, nil)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	keyservicepb.RegisterMeasurementPolicyServer(srv, p)
	return srv, nil
}
