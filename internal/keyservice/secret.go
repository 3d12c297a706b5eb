package keyservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// SecretSocket is where the bootstrapper of a control-plane node hands the key service on that node the
// cluster's master secret. Like the attestation agent's socket it is owner-only and never exposed over the
// network: the master secret leaves the bootstrapper's memory only for the key service's, on the same node.
const SecretSocket = "/run/constellation/keys.sock"

// Secret is what the key service needs from the bootstrapper: the master secret it derives keys from, and
// what its callers must prove (the cluster's measurements, or its attestation policy, and cluster ID). Both
// come from the attested init or recovery, not from anything an administrator of the cluster can change.
type Secret struct {
	MasterSecret *kms.MasterSecret
	ClusterID    []byte
	// Measurements are the cluster's PCR measurements, on the variants with a vTPM; empty otherwise.
	Measurements measurements.M
	// Attestation is the cluster's attestation policy in package validators' wire form
	// (validators.MarshalPolicy), on a variant without a vTPM that binds the cluster in its hardware report
	// (validators.BindsCluster: qemu-sev-snp); empty on the variants with a vTPM. Exactly one of Measurements
	// and Attestation is set.
	Attestation []byte
	// Node and DiskUUID are the name and the state disk of the node whose bootstrapper hands the secret over
	// (DiskUUID empty if it has none). That node derived its disk key itself; the key service binds the disk
	// to it before it hands out any key, so that no other node can claim the disk.
	Node     string
	DiskUUID string
	// PolicyUpdate is the measurement policy update in force in the cluster (package policyupdate's wire form,
	// authenticated by its MAC; empty: none since init), which a key service on a control-plane node that
	// joined later gets with the master secret. It decides instead of Measurements.
	PolicyUpdate []byte
}

// String never prints the master secret.
func (s *Secret) String() string { return "keyservice.Secret(redacted)" }

// secretJSON is the wire form of [Secret].
type secretJSON struct {
	Version      int            `json:"version"`
	Key          []byte         `json:"key"`
	Salt         []byte         `json:"salt"`
	ClusterID    []byte         `json:"clusterID"`
	Measurements measurements.M `json:"measurements,omitempty"`
	Node         string         `json:"node,omitempty"`
	DiskUUID     string         `json:"diskUUID,omitempty"`
	PolicyUpdate []byte         `json:"policyUpdate,omitempty"`
	Attestation  []byte         `json:"attestation,omitempty"`
}

const secretVersion = 1

// maxSecret bounds the handover message: a key, a salt, a cluster ID, at most 24 measurements or an
// attestation policy, and a measurement policy update (base64).
const maxSecret = 16<<10 + 2*policyupdate.MaxSize + 2*validators.MaxPolicyFileSize

func (s *Secret) validate() error {
	if s.MasterSecret == nil {
		return errors.New("no master secret")
	}
	if err := s.MasterSecret.Validate(); err != nil {
		return err
	}
	if len(s.ClusterID) != 32 {
		return fmt.Errorf("cluster ID has %d bytes, want 32", len(s.ClusterID))
	}
	if s.DiskUUID != "" && (!diskUUID.MatchString(s.DiskUUID) || !nodeName.MatchString(s.Node)) {
		return fmt.Errorf("the node's own state disk %.60q of node %.60q: want a lower-case RFC 4122 UUID and a DNS name", s.DiskUUID, s.Node)
	}
	switch {
	case len(s.Measurements) == 0 && len(s.Attestation) == 0:
		return errors.New("neither measurements nor an attestation policy: the key service would have no policy for its callers")
	case len(s.Measurements) > 0 && len(s.Attestation) > 0:
		return errors.New("both measurements and an attestation policy: a cluster's variant has a vTPM (measurements) or binds the cluster in its hardware report (attestation policy), not both")
	case len(s.Attestation) > 0:
		if _, err := s.AttestationPolicy(); err != nil {
			return err
		}
		if len(s.PolicyUpdate) > 0 {
			return errors.New("a measurement policy update for a cluster whose variant has no vTPM: its measurement sets do not apply")
		}
		return nil
	}
	if err := s.Measurements.Validate(); err != nil {
		return err
	}
	if len(s.PolicyUpdate) == 0 {
		return nil
	}
	d, err := kms.NewDeriver(s.MasterSecret)
	if err != nil {
		return err
	}
	key, err := d.MeasurementPolicyKey()
	if err != nil {
		return err
	}
	if _, err := policyupdate.Open(s.PolicyUpdate, key, s.ClusterID); err != nil {
		return fmt.Errorf("the measurement policy update in force: %w", err)
	}
	return nil
}

// AttestationPolicy parses the attestation policy of a cluster whose variant has no vTPM (Attestation) and
// checks that its variant binds the cluster in its hardware report, so that a member validator
// (validators.Policy.ClusterID) can be made of it. It is an error if the secret holds no such policy.
func (s *Secret) AttestationPolicy() (*validators.Policy, error) {
	if len(s.Attestation) == 0 {
		return nil, errors.New("the secret holds no attestation policy (a cluster of a variant with a vTPM has measurements instead)")
	}
	p, err := validators.ParsePolicy(s.Attestation)
	if err != nil {
		return nil, fmt.Errorf("the cluster's attestation policy: %w", err)
	}
	variant, err := attestation.VariantByName(p.Variant)
	if err != nil {
		return nil, fmt.Errorf("the cluster's attestation policy: %w", err)
	}
	if variant.VTPM || !validators.BindsCluster(variant) {
		return nil, fmt.Errorf("the cluster's attestation policy is of %s, whose nodes cannot prove to the key service that they belong to the cluster by their hardware report; only qemu-sev-snp clusters hand an attestation policy over", variant)
	}
	return p, nil
}

// SecretHolder serves the key service's [Secret] on [SecretSocket] once the bootstrapper has it: before, a
// request is answered with 503 and the key service waits.
type SecretHolder struct {
	log    *slog.Logger
	mu     sync.Mutex
	secret []byte // the wire form, nil until Set
}

// NewSecretHolder returns a holder without a secret, logging each handover to log.
func NewSecretHolder(log *slog.Logger) *SecretHolder {
	return &SecretHolder{log: log}
}

// Set makes s available to the key service.
func (h *SecretHolder) Set(s *Secret) error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("the key service's secret: %w", err)
	}
	raw, err := json.Marshal(secretJSON{
		Version: secretVersion, Key: s.MasterSecret.Key, Salt: s.MasterSecret.Salt,
		ClusterID: s.ClusterID, Measurements: s.Measurements, Node: s.Node, DiskUUID: s.DiskUUID, PolicyUpdate: s.PolicyUpdate,
		Attestation: s.Attestation,
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.secret = raw
	return nil
}

// ServeHTTP answers GET /v1/secret.
func (h *SecretHolder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/v1/secret" {
		http.Error(w, "only GET /v1/secret is served here", http.StatusNotFound)
		return
	}
	h.mu.Lock()
	raw := h.secret
	h.mu.Unlock()
	if raw == nil {
		http.Error(w, "this node holds no master secret yet: it is handed over after init or 'constellation recover'", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(raw)
	h.log.Info("master secret handed to the key service on this node")
}

// FetchSecret asks the bootstrapper on socket for the key service's secret. It returns [ErrNoSecretYet] while
// the node has none.
func FetchSecret(ctx context.Context, socket string) (*Secret, error) {
	client := agent.SocketClient(socket, 10*time.Second)
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://bootstrapper/v1/secret", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the bootstrapper for the master secret at %s: %w", socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxSecret+1))
	if err != nil {
		return nil, fmt.Errorf("reading the master secret from %s: %w", socket, err)
	}
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable:
		return nil, ErrNoSecretYet
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("the bootstrapper at %s refused the master secret: %s: %s", socket, resp.Status, bytes.TrimSpace(raw))
	}
	return ParseSecret(raw)
}

// ErrNoSecretYet says that the node's bootstrapper holds no master secret yet.
var ErrNoSecretYet = errors.New("this node holds no master secret yet")

// ParseSecret parses the handover message strictly.
func ParseSecret(raw []byte) (*Secret, error) {
	if len(raw) > maxSecret {
		return nil, fmt.Errorf("the key service's secret is larger than %d bytes", maxSecret)
	}
	var in secretJSON
	if err := strictjson.Decode(raw, &in, maxSecret); err != nil {
		return nil, fmt.Errorf("parsing the key service's secret: %w", err)
	}
	if in.Version != secretVersion {
		return nil, fmt.Errorf("the key service's secret has version %d; this key service reads version %d", in.Version, secretVersion)
	}
	s := &Secret{MasterSecret: &kms.MasterSecret{Key: in.Key, Salt: in.Salt}, ClusterID: in.ClusterID, Measurements: in.Measurements, Node: in.Node, DiskUUID: in.DiskUUID, PolicyUpdate: in.PolicyUpdate, Attestation: in.Attestation}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("the key service's secret: %w", err)
	}
	return s, nil
}
