// Package clusterreport is the cluster report: one self-contained file that proves, to a third party with no
// access to the cluster and no network, which node image every node of a cluster ran and that it belongs to
// the cluster.
//
// A report holds the signed measurements of the node image (the measurements file and its sigstore bundle),
// the policy the evidence was checked against (variant, measurements, attestation-key roots and, for SEV-SNP and
// TDX, the hardware policy with the collateral an offline verifier needs), the cluster ID, and for every node
// its name, role, endpoint and the raw evidence it returned. Nothing in it is secret.
//
// # Nonces
//
// The verifier that collects the report chooses one random 32-byte seed. Each node's nonce is derived from it:
//
//	context  = SHA-256("constellation cluster report v1\x00" || lp(created) || lp(clusterID) ||
//	                   lp(image digest) || lp(variant) || u32(number of nodes) ||
//	                   for each node, in the report's order (sorted by name): lp(name) || lp(role) || lp(endpoint))
//	nonce_i  = HMAC-SHA256(seed, "constellation cluster report nonce v1\x00" || context || lp(name_i))
//
// where lp(x) is x prefixed with its length as a 4-byte big-endian integer. A node's evidence is thus bound to
// the seed (evidence from another report does not verify), to its own name (evidence cannot move between
// nodes), and to the whole node list with the cluster, the image and the report's creation time: removing a
// node from the report, its entry and its name alike, changes the nonce of every other node, so the evidence
// of all the others fails. Whoever runs the cluster can still leave a node out of a new report (for instance
// by hiding it from Kubernetes and the provider); the verifier therefore prints the node count and names, for
// the reader to compare with the nodes they expect. The seed is public: it proves freshness only to whoever
// chose it ([VerifyOptions.Seed] checks a seed chosen by the reader).
//
// # Verification
//
// [Verify] trusts nothing in the report but the evidence's signatures under the roots: it verifies the
// measurements bundle against the caller's trusted root (signature, log inclusion, checkpoint) for the report's
// image digest and variant, rebuilds the policy from the signed measurements and the cluster ID (and refuses a
// report whose stated policy differs), and validates every node's evidence against that policy with the nonce
// it derives itself. [Parse] reads a report strictly (package strictjson, size bounds, canonical node order).
package clusterreport

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

const (
	// Version is the report format this code writes and reads.
	Version = 1
	// SeedSize is the size of the seed the nonces derive from.
	SeedSize = 32
	// MaxNodes bounds the nodes of a report.
	MaxNodes = 1000
	// MaxSize bounds a report file.
	MaxSize = 64 << 20
	// MaxMeasurementsSize bounds the signed measurements file in a report.
	MaxMeasurementsSize = 1 << 20
	// maxNameSize is the longest node name (a DNS name).
	maxNameSize = 253

	contextLabel = "constellation cluster report v1\x00"
	nonceLabel   = "constellation cluster report nonce v1\x00"
)

// Roles of a node.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Report is a cluster report.
type Report struct {
	Version int `json:"version"`
	// Created is when the report was collected, RFC 3339 in UTC, as the collector's clock says.
	Created string `json:"created"`
	// Seed is the verifier's random seed the nodes' nonces derive from.
	Seed []byte `json:"seed"`
	// ClusterID is the ID every node of the cluster extended into PCR 15, 64 hex digits.
	ClusterID string `json:"clusterID"`
	Image     Image  `json:"image"`
	Policy    Policy `json:"policy"`
	// Nodes are every node of the cluster, sorted by name.
	Nodes []Node `json:"nodes"`
}

// Image is the node image and its signed measurements.
type Image struct {
	// Digest is the node image, "sha256:<hex>".
	Digest string `json:"digest"`
	// Variant is the attestation variant the measurements are for.
	Variant string `json:"variant"`
	// Measurements are the exact bytes of the signed measurements file.
	Measurements []byte `json:"measurements"`
	// Bundle is the measurements' sigstore bundle (signature, log entry, inclusion proof, checkpoint).
	Bundle []byte `json:"bundle"`
}

// Policy is the policy the collector applied. A verifier rebuilds it from the signed measurements; the
// measurements stated here must be the same.
type Policy struct {
	Variant string `json:"variant"`
	// Measurements are the PCR values the evidence was checked against: the signed measurements and, for the
	// variants with a vTPM, PCR 15 holding the cluster ID.
	Measurements measurements.M `json:"measurements,omitempty"`
	// AKRoots are the DER certificates of the attestation-key CA (mini-vtpm).
	AKRoots [][]byte `json:"akRoots,omitempty"`
	// Hardware is the variant's hardware policy in the wire form of package validators: for SEV-SNP and TDX,
	// the policy with the CRLs, VCEKs and collateral an offline verifier needs.
	Hardware json.RawMessage `json:"hardware"`
}

// Node is one node of the cluster and the evidence it returned for its nonce.
type Node struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	Endpoint string `json:"endpoint"`
	// Variant is the variant of the evidence.
	Variant string `json:"variant"`
	// Evidence is the evidence document the node returned, byte for byte.
	Evidence []byte `json:"evidence"`
}

// Marshal encodes the report, indented.
func (r *Report) Marshal() ([]byte, error) {
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the cluster report: %w", err)
	}
	return append(raw, '\n'), nil
}

// Parse reads a report strictly: at most [MaxSize] bytes, one JSON object without unknown, repeated or
// differently spelled fields, of the current version, and every field well formed (see [Report.Check]).
func Parse(raw []byte) (*Report, error) {
	var r Report
	if err := strictjson.Decode(raw, &r, MaxSize); err != nil {
		return nil, fmt.Errorf("not a cluster report: %w", err)
	}
	if err := r.Check(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Check checks the form of every field: the version, the creation time, the seed's size, the cluster ID, the
// image digest and a known variant, the sizes of measurements, bundle and evidence, at least one node, nodes
// with valid, unique names sorted by name, a known role, a host:port endpoint and the image's variant. It
// checks no signature; see [Verify].
func (r *Report) Check() error {
	if r.Version != Version {
		return fmt.Errorf("cluster report version %d, this verifier reads version %d", r.Version, Version)
	}
	if _, err := parseCreated(r.Created); err != nil {
		return err
	}
	if len(r.Seed) != SeedSize {
		return fmt.Errorf("the seed has %d bytes, want %d", len(r.Seed), SeedSize)
	}
	if id, err := hex.DecodeString(r.ClusterID); err != nil || len(id) != 32 || hex.EncodeToString(id) != r.ClusterID {
		return fmt.Errorf("clusterID %q is not 64 lowercase hex digits", r.ClusterID)
	}
	if err := checkImageDigest(r.Image.Digest); err != nil {
		return err
	}
	if _, err := attestation.VariantByName(r.Image.Variant); err != nil {
		return fmt.Errorf("image variant: %w", err)
	}
	if n := len(r.Image.Measurements); n == 0 || n > MaxMeasurementsSize {
		return fmt.Errorf("the measurements file has %d bytes, want 1 to %d", n, MaxMeasurementsSize)
	}
	if n := len(r.Image.Bundle); n == 0 || n > signed.MaxBundleSize {
		return fmt.Errorf("the measurements bundle has %d bytes, want 1 to %d", n, signed.MaxBundleSize)
	}
	if r.Policy.Variant != r.Image.Variant {
		return fmt.Errorf("the policy is for variant %q, the signed measurements for %q", r.Policy.Variant, r.Image.Variant)
	}
	if len(r.Policy.Hardware) == 0 {
		return errors.New("the policy has no hardware part")
	}
	if len(r.Nodes) == 0 {
		return errors.New("the report lists no node")
	}
	if len(r.Nodes) > MaxNodes {
		return fmt.Errorf("the report lists %d nodes, more than %d", len(r.Nodes), MaxNodes)
	}
	for i, n := range r.Nodes {
		if err := checkName(n.Name); err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		if i > 0 && r.Nodes[i-1].Name >= n.Name {
			return fmt.Errorf("node %q: the nodes must be listed once each, sorted by name", n.Name)
		}
		if n.Role != RoleControlPlane && n.Role != RoleWorker {
			return fmt.Errorf("node %s: role %q, want %s or %s", n.Name, n.Role, RoleControlPlane, RoleWorker)
		}
		if err := checkEndpoint(n.Endpoint); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		if n.Variant != r.Image.Variant {
			return fmt.Errorf("node %s: evidence of variant %q, the signed measurements are for %q", n.Name, n.Variant, r.Image.Variant)
		}
		if l := len(n.Evidence); l == 0 || l > attestation.MaxDocumentSize {
			return fmt.Errorf("node %s: evidence of %d bytes, want 1 to %d", n.Name, l, attestation.MaxDocumentSize)
		}
	}
	return nil
}

func parseCreated(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Location() != time.UTC || t.Format(time.RFC3339Nano) != s {
		return time.Time{}, fmt.Errorf("created %q is not an RFC 3339 time in UTC", s)
	}
	return t, nil
}

func checkImageDigest(d string) error {
	h, ok := strings.CutPrefix(d, "sha256:")
	if raw, err := hex.DecodeString(h); !ok || err != nil || len(raw) != sha256.Size || hex.EncodeToString(raw) != h {
		return fmt.Errorf("image digest %q is not sha256:<64 lowercase hex digits>", d)
	}
	return nil
}

// checkName accepts a node name as Kubernetes does: a DNS subdomain, lowercase letters, digits, '-' and '.'.
func checkName(name string) error {
	if name == "" || len(name) > maxNameSize {
		return fmt.Errorf("node name %q: want 1 to %d characters", name, maxNameSize)
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' && c != '.' || i == 0 || i == len(name)-1) {
			return fmt.Errorf("node name %q is not a DNS name (lowercase letters, digits, '-' and '.')", name)
		}
	}
	return nil
}

func checkEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil || host == "" {
		return fmt.Errorf("endpoint %q is not HOST:PORT", ep)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 || strconv.FormatUint(p, 10) != port {
		return fmt.Errorf("endpoint %q: port %q is not a number from 1 to 65535", ep, port)
	}
	return nil
}

// NodeList is the part of a report that every nonce binds: creation time, cluster, image, variant and the
// nodes, sorted by name, without their evidence.
type NodeList struct {
	Created   string
	ClusterID string
	Image     string
	Variant   string
	Nodes     []NodeEntry
}

// NodeEntry is one node of a [NodeList].
type NodeEntry struct{ Name, Role, Endpoint string }

// NodeList returns the node list of the report.
func (r *Report) NodeList() NodeList {
	l := NodeList{Created: r.Created, ClusterID: r.ClusterID, Image: r.Image.Digest, Variant: r.Image.Variant}
	for _, n := range r.Nodes {
		l.Nodes = append(l.Nodes, NodeEntry{Name: n.Name, Role: n.Role, Endpoint: n.Endpoint})
	}
	return l
}

// Digest is the SHA-256 of the node list's unambiguous encoding (see the package documentation).
func (l NodeList) Digest() [32]byte {
	h := sha256.New()
	h.Write([]byte(contextLabel))
	for _, s := range []string{l.Created, l.ClusterID, l.Image, l.Variant} {
		writeLP(h, s)
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(l.Nodes)))
	h.Write(n[:])
	for _, e := range l.Nodes {
		writeLP(h, e.Name)
		writeLP(h, e.Role)
		writeLP(h, e.Endpoint)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Nonce returns the nonce of the node named name in a report with this node list and seed.
func (l NodeList) Nonce(seed []byte, name string) []byte {
	d := l.Digest()
	m := hmac.New(sha256.New, seed)
	m.Write([]byte(nonceLabel))
	m.Write(d[:])
	writeLP(m, name)
	return m.Sum(nil)
}

func writeLP(w io.Writer, s string) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(s)))
	w.Write(n[:])
	w.Write([]byte(s))
}

// ParseAKRoots decodes the report's attestation-key roots.
func (p Policy) ParseAKRoots() ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i, der := range p.AKRoots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("attestation-key root %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// sameRoots reports whether a and b hold the same certificates in the same order.
func sameRoots(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}

// HardwarePolicy parses the report's hardware policy (package validators' wire form).
func (p Policy) HardwarePolicy() (*validators.Policy, error) {
	hw, err := validators.ParsePolicy(p.Hardware)
	if err != nil {
		return nil, fmt.Errorf("the report's hardware policy: %w", err)
	}
	if hw.Variant != p.Variant {
		return nil, fmt.Errorf("the report's hardware policy is for variant %q, the policy for %q", hw.Variant, p.Variant)
	}
	return hw, nil
}

func hexID(s string) ([]byte, error) {
	id, err := hex.DecodeString(s)
	if err != nil || len(id) != 32 {
		return nil, fmt.Errorf("cluster ID %q is not 64 hex digits", s)
	}
	return id, nil
}

// New starts the report of a cluster: created (stored in UTC), the seed, the cluster ID, the image with its
// signed measurements, the policy the evidence is checked against, and the nodes, which it sorts by name. The
// caller then asks each node for evidence for [NodeList.Nonce] and stores it in the node's Evidence.
func New(created time.Time, seed []byte, clusterID string, img Image, p *validators.Policy, nodes []NodeEntry) (*Report, error) {
	hw, err := validators.MarshalPolicy(p)
	if err != nil {
		return nil, err
	}
	r := &Report{
		Version: Version, Created: created.UTC().Format(time.RFC3339Nano), Seed: slices.Clone(seed), ClusterID: clusterID,
		Image:  img,
		Policy: Policy{Variant: p.Variant, Measurements: maps.Clone(p.Measurements), Hardware: hw},
	}
	for _, c := range p.AKRoots {
		r.Policy.AKRoots = append(r.Policy.AKRoots, c.Raw)
	}
	for _, n := range nodes {
		r.Nodes = append(r.Nodes, Node{Name: n.Name, Role: n.Role, Endpoint: n.Endpoint, Variant: p.Variant})
	}
	slices.SortFunc(r.Nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return r, nil
}
