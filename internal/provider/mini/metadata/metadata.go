// Package metadata is the instance metadata service of the local providers (mini, and qemu, whose nodes use
// it through package guest), as a cloud's metadata endpoint: nodes and
// the CLI ask it which instances exist (name, role, address), a node asks who it is (identified by the source
// address of its request, like a cloud's IMDS), fetches its boot event log, fetches the attestation-key CA
// certificate, enrolls its TPM's attestation key (credential activation, internal/attestation/akca), and reads
// the SHA-256 of the cluster's init secret, with which it authenticates whoever initialises or recovers it,
// and the peer policy hint a joining node measures before it trusts peers of another image by it (during an
// upgrade; see policyupdate.PeerHint).
// The cluster's upgrade controller creates and deletes nodes through it (the fleet API, fleet.go), with the
// controller credential, of which the provider, again, knows only the SHA-256.
//
// The service runs outside the nodes, on the provider's side of the node network. It hands out nothing secret:
// an AK certificate is only issued to the TPM that holds the matching endorsement key, and of the init secret
// the provider knows only its hash (the CLI keeps the secret).
package metadata

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// Address ranges of a cluster's network, as the provider routes them: services, and pods (one /24 per node,
// announced as Instance.PodCIDR).
var (
	ServiceCIDR = netip.MustParsePrefix("10.97.0.0/16")
	PodSubnet   = netip.MustParsePrefix("10.218.0.0/16")
)

// ProviderName is the mini provider's name.
const ProviderName = "mini"

// Roles of instances.
const (
	RoleControlPlane = provider.RoleControlPlane
	RoleWorker       = provider.RoleWorker
)

// Instance is one node as the provider knows it.
type Instance = provider.Instance

// maxRequestBody bounds request bodies.
const maxRequestBody = 64 << 10

// Server serves the metadata API.
type Server struct {
	ca  *akca.CA
	log *slog.Logger

	mu        sync.RWMutex
	instances map[string]record // by IP
	// initSecretHash is the SHA-256 of the cluster's init secret, as the CLI handed it to the provider when it
	// created the nodes; nil if it handed none.
	initSecretHash []byte
	// fleet creates and deletes nodes for the holder of the controller credential, whose SHA-256 is
	// fleetCredentialHash (fleet.go); nil: nobody may.
	fleet               provider.Fleet
	fleetCredentialHash []byte
	// peerPolicy is the peer policy hint (policyupdate.PeerHint, canonical form) every instance reads when it
	// joins; nil: none, a node trusts peers of its own image only.
	peerPolicy []byte
}

// record is what the provider knows about an instance.
type record struct {
	Instance
	eventLog []byte   // of its current boot
	ekCerts  [][]byte // DER EK certificates of its TPM
}

// NewServer returns a metadata server that enrolls attestation keys with ca.
func NewServer(ca *akca.CA, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{ca: ca, log: log, instances: map[string]record{}}
}

// SetInstance registers or updates an instance, the event log of its current boot (nil for a machine whose own
// firmware measures its boot and which reads the log from its kernel) and the EK certificates of its TPM. Only that TPM can have an attestation key certified in the instance's name.
func (s *Server) SetInstance(inst Instance, eventLog []byte, ekCerts [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instances[inst.IP] = record{Instance: inst, eventLog: bytes.Clone(eventLog), ekCerts: ekCerts}
}

// SetInitSecretHash sets the SHA-256 of the cluster's init secret that every instance reads at boot (see
// [Client.InitSecretHash]). It must be 32 bytes.
func (s *Server) SetInitSecretHash(hash []byte) error {
	if len(hash) != sha256.Size {
		return fmt.Errorf("the init-secret hash has %d bytes, want a SHA-256 (%d bytes)", len(hash), sha256.Size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initSecretHash = bytes.Clone(hash)
	return nil
}

// SetPeerPolicy sets the peer policy hint every instance reads when it joins (see [Client.PeerPolicy]): the
// JSON form of a policyupdate.PeerHint, checked here; nil or empty removes it.
func (s *Server) SetPeerPolicy(raw []byte) error {
	var canonical []byte
	if len(bytes.TrimSpace(raw)) > 0 {
		h, err := policyupdate.ParsePeerHint(raw)
		if err != nil {
			return err
		}
		canonical = h.Marshal()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peerPolicy = canonical
	if canonical == nil {
		s.log.Info("peer policy removed: joining nodes trust peers of their own image only")
	} else {
		s.log.Info("peer policy set: joining nodes also trust peers of its measurement sets", "peerPolicy", string(canonical))
	}
	return nil
}

// RemoveInstance forgets an instance.
func (s *Server) RemoveInstance(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.instances, ip)
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/instances", s.listInstances)
	mux.HandleFunc("GET /v1/self", s.self)
	mux.HandleFunc("GET /v1/self/eventlog", s.eventLog)
	mux.HandleFunc("GET /v1/self/init-secret-hash", s.initSecret)
	mux.HandleFunc("GET /v1/peer-policy", s.peerPolicyHint)
	mux.HandleFunc("GET /v1/ak-ca", s.akCA)
	mux.HandleFunc("POST /v1/ak/challenge", s.challenge)
	mux.HandleFunc("POST /v1/ak/complete", s.complete)
	mux.HandleFunc("POST /v1/fleet/nodes", s.createNode)
	mux.HandleFunc("DELETE /v1/fleet/nodes/{name}", s.deleteNode)
	return mux
}

func (s *Server) listInstances(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	list := make([]Instance, 0, len(s.instances))
	for _, inst := range s.instances {
		list = append(list, inst.Instance)
	}
	s.mu.RUnlock()
	slices.SortFunc(list, func(a, b Instance) int { return strings.Compare(a.Name, b.Name) })
	writeJSON(w, list)
}

// caller returns the instance that sent r, by its source address.
func (s *Server) caller(r *http.Request) (record, bool) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return record{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	rec, ok := s.instances[host]
	return rec, ok
}

func (s *Server) self(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.caller(r)
	if !ok {
		http.Error(w, "the request does not come from an instance of this cluster", http.StatusNotFound)
		return
	}
	writeJSON(w, rec.Instance)
}

func (s *Server) eventLog(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.caller(r)
	if !ok {
		http.Error(w, "the request does not come from an instance of this cluster", http.StatusNotFound)
		return
	}
	if rec.eventLog == nil {
		// A machine with firmware of its own (the QEMU provider's) reads its event log from its kernel.
		http.Error(w, "the provider keeps no event log of this instance: read the firmware's log from the node's own kernel", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(rec.eventLog)
}

// initSecretResponse is the answer of GET /v1/self/init-secret-hash: the hex SHA-256 of the cluster's init
// secret, empty when the provider was given none.
type initSecretResponse struct {
	SHA256 string `json:"sha256"`
}

func (s *Server) initSecret(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.caller(r); !ok {
		http.Error(w, "the request does not come from an instance of this cluster", http.StatusNotFound)
		return
	}
	s.mu.RLock()
	hash := hex.EncodeToString(s.initSecretHash)
	s.mu.RUnlock()
	writeJSON(w, initSecretResponse{SHA256: hash})
}

// peerPolicyHint answers GET /v1/peer-policy: the peer policy hint, empty when there is none.
func (s *Server) peerPolicyHint(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.caller(r); !ok {
		http.Error(w, "the request does not come from an instance of this cluster", http.StatusNotFound)
		return
	}
	s.mu.RLock()
	raw := s.peerPolicy
	s.mu.RUnlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(raw)
}

func (s *Server) akCA(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Certificate().Raw})
}

func (s *Server) challenge(w http.ResponseWriter, r *http.Request) {
	var req akca.EnrollRequest
	if err := readJSON(r, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The certificate will name the instance: only the instance itself, with its own TPM, may enroll in its
	// name. (Without this, any node could have its key certified as a control-plane node.)
	rec, ok := s.caller(r)
	if !ok {
		http.Error(w, "the request does not come from an instance of this cluster", http.StatusNotFound)
		return
	}
	if req.Name != rec.Name || !slices.ContainsFunc(rec.ekCerts, func(c []byte) bool { return bytes.Equal(c, req.EKCert) }) {
		s.log.Warn("attestation key enrollment refused", "remote", r.RemoteAddr, "instance", rec.Name, "name", req.Name, "reason", "name or TPM is not the instance's")
		http.Error(w, fmt.Sprintf("instance %s may enroll only in its own name with its own TPM's EK certificate", rec.Name), http.StatusForbidden)
		return
	}
	ch, err := s.ca.Challenge(r.Context(), req)
	if err != nil {
		s.log.Warn("attestation key enrollment refused", "remote", r.RemoteAddr, "name", req.Name, "reason", err.Error())
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	writeJSON(w, ch)
}

type completeRequest struct {
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request) {
	var req completeRequest
	if err := readJSON(r, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cert, err := s.ca.Complete(r.Context(), req.ID, req.Secret)
	if err != nil {
		s.log.Warn("attestation key enrollment failed", "remote", r.RemoteAddr, "reason", err.Error())
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	s.log.Info("attestation key certified", "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/pkix-cert")
	w.Write(cert)
}

func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed request: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Client talks to a metadata server.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the metadata server at base, e.g. "http://10.217.0.1:8080".
func NewClient(base string) *Client {
	return &Client{base: base, http: &http.Client{Timeout: 30 * time.Second}}
}

// URL is the metadata service's base URL.
func (c *Client) URL() string { return c.base }

// The client is the mini provider's side of the node's provider seam.
var _ provider.Node = (*Client)(nil)

// Name is the provider's name.
func (c *Client) Name() string { return ProviderName }

// Endpoint is the metadata service's base URL, where the services in the cluster reach the provider.
func (c *Client) Endpoint() string { return c.base }

// Variant is the attestation variant of the mini provider's nodes: a TPM whose attestation key the provider
// certifies.
func (c *Client) Variant() attestation.Variant { return attestation.MiniVTPM }

// Networks are the cluster's pod and service networks.
func (c *Client) Networks() (pods, services netip.Prefix) { return PodSubnet, ServiceCIDR }

// IsControlPlane tells whether the instance named name is a control-plane node.
func (c *Client) IsControlPlane(ctx context.Context, name string) (bool, error) {
	list, err := c.Instances(ctx)
	if err != nil {
		return false, err
	}
	for _, inst := range list {
		if inst.Name == name {
			return inst.Role == RoleControlPlane, nil
		}
	}
	return false, nil
}

func (c *Client) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("metadata service: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("metadata service: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("metadata service %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = raw
		return nil
	default:
		return json.Unmarshal(raw, out)
	}
}

// Self returns the calling instance.
func (c *Client) Self(ctx context.Context) (Instance, error) {
	var inst Instance
	return inst, c.do(ctx, http.MethodGet, "/v1/self", nil, &inst)
}

// Instances lists the cluster's instances.
func (c *Client) Instances(ctx context.Context) ([]Instance, error) {
	var list []Instance
	return list, c.do(ctx, http.MethodGet, "/v1/instances", nil, &list)
}

// EventLog returns the TCG event log of the calling instance's boot.
func (c *Client) EventLog(ctx context.Context) ([]byte, error) {
	var raw []byte
	return raw, c.do(ctx, http.MethodGet, "/v1/self/eventlog", nil, &raw)
}

// InitSecretHash returns the SHA-256 of the cluster's init secret, as the provider serves it to the calling
// instance; nil (and no error) when the provider has none, so that the caller can refuse to be initialised.
func (c *Client) InitSecretHash(ctx context.Context) ([]byte, error) {
	var raw []byte
	if err := c.do(ctx, http.MethodGet, "/v1/self/init-secret-hash", nil, &raw); err != nil {
		return nil, err
	}
	return parseInitSecretHash(raw)
}

// PeerPolicy returns the peer policy hint (the JSON form of a policyupdate.PeerHint) as the provider serves it;
// nil (and no error) when there is none. The provider is the host: the caller measures what it acts on.
func (c *Client) PeerPolicy(ctx context.Context) ([]byte, error) {
	var raw []byte
	if err := c.do(ctx, http.MethodGet, "/v1/peer-policy", nil, &raw); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	return raw, nil
}

// parseInitSecretHash parses the metadata service's answer strictly: nil for none, else exactly a SHA-256.
func parseInitSecretHash(raw []byte) ([]byte, error) {
	var resp initSecretResponse
	if err := strictjson.Decode(raw, &resp, 4096); err != nil {
		return nil, fmt.Errorf("the metadata service's init-secret hash: %w", err)
	}
	if resp.SHA256 == "" {
		return nil, nil
	}
	hash, err := hex.DecodeString(resp.SHA256)
	if err != nil || len(hash) != sha256.Size {
		return nil, fmt.Errorf("the metadata service's init-secret hash is not a SHA-256 (64 hex digits, got %d characters)", len(resp.SHA256))
	}
	return hash, nil
}

// AKCA returns the PEM certificate of the attestation-key CA.
func (c *Client) AKCA(ctx context.Context) ([]byte, error) {
	var raw []byte
	return raw, c.do(ctx, http.MethodGet, "/v1/ak-ca", nil, &raw)
}

// AKRoots returns the attestation-key CA as the roots a validator of this provider's nodes trusts.
func (c *Client) AKRoots(ctx context.Context) ([]*x509.Certificate, error) {
	raw, err := c.AKCA(ctx)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the metadata service returned no AK CA certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the metadata service's AK CA certificate: %w", err)
	}
	return []*x509.Certificate{cert}, nil
}

// Challenge implements akca.Enroller over HTTP.
func (c *Client) Challenge(ctx context.Context, req akca.EnrollRequest) (*akca.Challenge, error) {
	var ch akca.Challenge
	if err := c.do(ctx, http.MethodPost, "/v1/ak/challenge", req, &ch); err != nil {
		return nil, err
	}
	return &ch, nil
}

// Complete implements akca.Enroller over HTTP.
func (c *Client) Complete(ctx context.Context, id string, secret []byte) ([]byte, error) {
	var cert []byte
	if err := c.do(ctx, http.MethodPost, "/v1/ak/complete", completeRequest{ID: id, Secret: secret}, &cert); err != nil {
		return nil, err
	}
	if len(cert) == 0 {
		return nil, errors.New("metadata service returned an empty certificate")
	}
	return cert, nil
}

var _ akca.Enroller = (*Client)(nil)
