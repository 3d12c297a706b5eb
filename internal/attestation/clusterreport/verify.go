package clusterreport

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
)

// VerifyOptions are what a verifier trusts besides its trusted root.
type VerifyOptions struct {
	// AllowDevelopment accepts measurements signed with a key the trusted root marks as a development key.
	AllowDevelopment bool
	// AKRoots, if set, are the attestation-key roots the verifier pins (mini-vtpm); the report's must be
	// exactly these. Without them the report's own roots are used, and [Result.AKRootsFromReport] says so.
	AKRoots []*x509.Certificate
	// TrustReportAKRoots accepts, when no AKRoots are pinned, the attestation-key roots the report names. Such
	// a root proves nothing about who wrote the report: anyone can certify software TPMs with a CA of their own
	// and extend them to the signed measurements. Without it, a report whose variant certifies attestation keys
	// verifies only against pinned roots.
	TrustReportAKRoots bool
	// Seed, if set, is the seed the reader chose for the report; the report's must be it.
	Seed []byte
	// Validators are the options of the evidence validators (clock, log).
	Validators validators.Options
}

// ErrUnpinnedAKRoots is returned by [Verify] for a report whose nodes' attestation keys are certified by a CA
// that only the report itself names.
var ErrUnpinnedAKRoots = errors.New("the nodes' attestation keys are certified by a CA that only the report names, " +
	"which proves nothing about who wrote the report (anyone can certify software TPMs with a CA of their own): " +
	"pin the CA you trust (the cluster's attestation-key CA certificate)")

// Result says what [Verify] checked.
type Result struct {
	// Signature is what the verification of the measurements bundle checked.
	Signature *signed.Result
	// Policy is the policy rebuilt from the signed measurements, the cluster ID and the report's roots and
	// hardware policy; every node's evidence was validated against it.
	Policy *validators.Policy
	// AKRootsFromReport is true when the attestation-key roots came from the report itself (none pinned).
	AKRootsFromReport bool
	// Nodes are the outcome per node, in the report's order.
	Nodes []NodeResult
}

// NodeResult is the outcome of one node.
type NodeResult struct {
	Name, Role, Endpoint, Variant string
	// Nonce is the nonce derived for the node.
	Nonce []byte
	// Subject is the name the node's attestation key is certified for, if its evidence carries a certificate.
	Subject string
	// Err is why the node's evidence did not verify; nil when it did.
	Err error
}

// ErrNodes is returned, wrapped, when the evidence of at least one node does not verify.
var ErrNodes = errors.New("node evidence does not verify")

// Verify checks a parsed report offline against the trusted root in trustedRootJSON (the file form of a
// signed.Root): the measurements bundle (signature, log inclusion and checkpoint) covers the report's
// measurements file for its image digest and variant; the policy, rebuilt from the signed measurements and the
// cluster ID, is the one the report states; and every node's evidence validates against it for the nonce
// derived from the seed, the node list and the node's name, binds no user data, and, where the evidence
// carries an attestation-key certificate, is certified for that node's name. It returns what it checked; the
// error names every node that failed ([ErrNodes]) or why nothing could be checked.
func Verify(ctx context.Context, r *Report, trustedRootJSON []byte, opts VerifyOptions) (*Result, error) {
	if err := r.Check(); err != nil {
		return nil, err
	}
	if opts.Seed != nil && !hmac.Equal(opts.Seed, r.Seed) {
		return nil, fmt.Errorf("the report's seed %x is not the seed %x it was to be collected with", r.Seed, opts.Seed)
	}
	sig, err := verifySignedMeasurements(trustedRootJSON, r.Image, opts.AllowDevelopment)
	if err != nil {
		return nil, err
	}
	res := &Result{Signature: sig}
	if res.Policy, res.AKRootsFromReport, err = r.rebuildPolicy(opts.AKRoots); err != nil {
		return res, err
	}
	if res.AKRootsFromReport && !opts.TrustReportAKRoots {
		return res, ErrUnpinnedAKRoots
	}
	v, err := validators.New(res.Policy, opts.Validators)
	if err != nil {
		return res, fmt.Errorf("the policy of the signed measurements cannot be enforced: %w", err)
	}
	list := r.NodeList()
	var failed []string
	for _, n := range r.Nodes {
		nr := NodeResult{Name: n.Name, Role: n.Role, Endpoint: n.Endpoint, Variant: n.Variant, Nonce: list.Nonce(r.Seed, n.Name)}
		nr.Subject, nr.Err = verifyNode(ctx, v, n, nr.Nonce)
		if nr.Err != nil {
			failed = append(failed, n.Name)
		}
		res.Nodes = append(res.Nodes, nr)
	}
	if len(failed) > 0 {
		return res, fmt.Errorf("%w: %d of %d nodes failed: %s", ErrNodes, len(failed), len(r.Nodes), strings.Join(failed, ", "))
	}
	return res, nil
}

// verifySignedMeasurements is the one place that verifies the report's measurements bundle: against the
// trusted root, for the report's measurements file, image digest and variant.
func verifySignedMeasurements(trustedRootJSON []byte, img Image, allowDevelopment bool) (*signed.Result, error) {
	root, err := signed.ParseRoot(trustedRootJSON)
	if err != nil {
		return nil, fmt.Errorf("the trusted root: %w", err)
	}
	res, err := signed.Verify(root, img.Bundle, img.Measurements, signed.Predicate{ImageDigest: img.Digest, Variant: img.Variant}, allowDevelopment)
	if err != nil {
		return nil, fmt.Errorf("the report's signed measurements: %w", err)
	}
	return res, nil
}

// rebuildPolicy builds the policy a report's evidence must meet from what the signature covers (the
// measurements), the cluster ID (which the evidence proves), and the report's attestation-key roots (or the
// pinned ones) and hardware policy; it refuses a report whose stated measurements differ.
func (r *Report) rebuildPolicy(pinned []*x509.Certificate) (*validators.Policy, bool, error) {
	variant, err := attestation.VariantByName(r.Image.Variant)
	if err != nil {
		return nil, false, err
	}
	p, err := r.Policy.HardwarePolicy()
	if err != nil {
		return nil, false, err
	}
	if variant.VTPM {
		signedM, err := measurements.Parse(r.Image.Measurements)
		if err != nil {
			return nil, false, fmt.Errorf("the signed measurements file: %w", err)
		}
		id, _ := hexID(r.ClusterID)
		p.Measurements = measurements.MemberPolicy(signedM, id)
	}
	if diff := diffMeasurements(p.Measurements, r.Policy.Measurements); len(diff) > 0 {
		return nil, false, fmt.Errorf("the report's policy is not the signed measurements with the cluster ID: PCRs %v differ", diff)
	}
	roots, err := r.Policy.ParseAKRoots()
	if err != nil {
		return nil, false, err
	}
	fromReport := pinned == nil
	if !fromReport {
		if !sameRoots(pinned, roots) {
			return nil, false, errors.New("the report's attestation-key roots are not the pinned ones")
		}
		roots = pinned
	}
	if len(roots) > 0 {
		p.AKRoots = roots
	}
	return p, fromReport && len(roots) > 0, nil
}

// verifyNode validates one node's evidence for its nonce and returns the name its attestation key is
// certified for, if any.
//
// The evidence must be exactly the bytes its issuer wrote: the document's own encoding. JSON and base64 leave
// room for other spellings of the same document (a base64 string's unused trailing bits), which a validator
// reads as the same evidence; a report holds the evidence byte for byte, so any other spelling was altered.
func verifyNode(ctx context.Context, v attestation.Validator, n Node, nonce []byte) (string, error) {
	doc, err := attestation.ParseDocument(n.Evidence)
	if err != nil {
		return "", err
	}
	if canonical, err := doc.Marshal(); err != nil || !bytes.Equal(canonical, n.Evidence) {
		return "", errors.New("the evidence is not in the encoding its issuer writes; it was altered after it was issued")
	}
	userData, err := v.Validate(ctx, n.Evidence, nonce)
	if err != nil {
		return "", err
	}
	if len(userData) != 0 {
		return "", fmt.Errorf("the evidence binds %d bytes of user data; a verification service's evidence binds none (is it from an attested TLS handshake?)", len(userData))
	}
	if doc.TPM == nil || len(doc.TPM.AKCert) == 0 {
		return "", nil
	}
	subject := doc.AttestationKeySubject()
	if subject != n.Name {
		return subject, fmt.Errorf("the attestation key is certified for node %q, not for %q", subject, n.Name)
	}
	return subject, nil
}

// diffMeasurements returns the PCRs whose entries differ between a and b.
func diffMeasurements(a, b measurements.M) []uint32 {
	var out []uint32
	for idx, m := range a {
		if o, ok := b[idx]; !ok || o != m {
			out = append(out, idx)
		}
	}
	for idx := range b {
		if _, ok := a[idx]; !ok {
			out = append(out, idx)
		}
	}
	slices.Sort(out)
	return out
}
