// Package signed signs the expected measurements of a node image and verifies them offline.
//
// The signed payload is an in-toto statement whose subject is the measurements file (its SHA-256) and whose
// predicate names the node image digest and the attestation variant the measurements belong to, and the
// Kubernetes version and product version of the image (statements signed before these were part of the
// predicate lack them: [Result.Predicate] then leaves them empty, and whoever decides by them must refuse). It travels as
// a sigstore bundle (a DSSE envelope signed with an ECDSA P-256 key, plus a Rekor v2 transparency log entry
// with its inclusion proof and the log's signed checkpoint), written next to the measurements as
// measurements.json.sigstore.json.
//
// [Verify] never touches the network: it checks the signature against the keys of a [Root], the inclusion
// proof and the checkpoint against the log key and origin of the same [Root], that the bundle covers exactly
// the measurements file, and that the statement names the image and variant the caller expects. There is no
// way to skip the log: a bundle without a log entry the root can verify is refused. [VerifyAny] verifies
// against several roots (the release root and a development root), each key together with its own root's log.
//
// The release root is embedded at build time from release-root.json in this directory ([ReleaseRoot]); a
// release manager replaces the file with the root of the release key pair and commits it. Release keys rest
// encrypted under a passphrase ([EncryptPrivateKeyPEM], sigstore's scrypt + secretbox format).
//
// [ParseCheckpoint] verifies a log's checkpoint (c2sp.org/tlog-checkpoint) against the trusted log key and
// origin, and [Consistent] proves from the log's tiles (c2sp.org/tlog-tiles) that a newer checkpoint's tree
// extends an older one's: a log that rewrote, dropped or reordered entries, forked or shrank fails.
package signed

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/rekor-tiles/v2/pkg/note"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

const (
	// BundleSuffix is appended to the measurements file's name to name its bundle.
	BundleSuffix = ".sigstore.json"
	// PredicateType names the statement's predicate: measurements of one node image for one variant.
	PredicateType = "https://github.com/constellation-dev/constellation/measurements/v1"
	// MaxBundleSize bounds the bundle a verifier reads; a genuine bundle is a few kilobytes.
	MaxBundleSize = 1 << 20

	statementType   = "https://in-toto.io/Statement/v1"
	inTotoMediaType = "application/vnd.in-toto+json"
)

// Predicate is what the signer states about the measurements file.
type Predicate struct {
	// ImageDigest is the node image the measurements are expected from, "sha256:<hex>".
	ImageDigest string `json:"imageDigest"`
	// Variant is the attestation variant the measurements are a policy for.
	Variant string `json:"variant"`
	// KubernetesVersion is the Kubernetes release the image runs, e.g. "v1.37.2". Statements signed before
	// the predicate carried it have none: a caller that decides by the version (a Kubernetes upgrade) must
	// refuse such an image rather than take the version from anywhere else.
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	// ImageVersion is the version of this product the image was built from, e.g. "v0.4.0"; empty in
	// statements signed before the predicate carried it.
	ImageVersion string `json:"imageVersion,omitempty"`
}

// MaxVersionLength bounds a version string of the predicate.
const MaxVersionLength = 128

// kubernetesVersion is a Kubernetes release as kubeadm prints it: v<major>.<minor>.<patch>, optionally with a
// pre-release and build metadata (v1.37.0-rc.1, v1.37.2+custom).
var kubernetesVersion = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// imageVersion is a product version as the build stamps it (git describe: v0.4.0, v0.4.0-12-gabcdef0-dirty).
var imageVersion = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+_-]*$`)

// CheckKubernetesVersion reports whether v is a Kubernetes release version (v1.37.2).
func CheckKubernetesVersion(v string) error {
	if len(v) > MaxVersionLength || !kubernetesVersion.MatchString(v) {
		return fmt.Errorf("%q is not a Kubernetes version (v<major>.<minor>.<patch>)", v)
	}
	return nil
}

type subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

type statement struct {
	Type          string    `json:"_type"`
	Subject       []subject `json:"subject"`
	PredicateType string    `json:"predicateType"`
	Predicate     Predicate `json:"predicate"`
}

// Statement returns the in-toto statement that binds the measurements file (named name) to an image digest
// and a variant.
func Statement(name string, measurementsJSON []byte, p Predicate) ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(measurementsJSON)
	return json.Marshal(statement{
		Type:          statementType,
		Subject:       []subject{{Name: name, Digest: map[string]string{"sha256": hex.EncodeToString(sum[:])}}},
		PredicateType: PredicateType,
		Predicate:     p,
	})
}

func (p Predicate) check() error {
	hexDigest, ok := strings.CutPrefix(p.ImageDigest, "sha256:")
	if raw, err := hex.DecodeString(hexDigest); !ok || err != nil || len(raw) != sha256.Size {
		return fmt.Errorf("image digest %q is not sha256:<64 hex digits>", p.ImageDigest)
	}
	if p.Variant == "" {
		return errors.New("the statement names no attestation variant")
	}
	if p.KubernetesVersion != "" {
		if err := CheckKubernetesVersion(p.KubernetesVersion); err != nil {
			return fmt.Errorf("the statement's Kubernetes version: %w", err)
		}
	}
	if p.ImageVersion != "" && (len(p.ImageVersion) > MaxVersionLength || !imageVersion.MatchString(p.ImageVersion)) {
		return fmt.Errorf("the statement's image version %q is not a version (letters, digits, '.', '+', '_', '-')", p.ImageVersion)
	}
	return nil
}

// matches reports how the signed predicate p differs from what the caller wants: the image digest and the
// variant always count; the versions count where want names them (empty: the caller reads them from the
// result).
func (p Predicate) matches(want Predicate) error {
	if p.ImageDigest != want.ImageDigest || p.Variant != want.Variant {
		return fmt.Errorf("the signed measurements are for image %s (%s), not for image %s (%s)",
			p.ImageDigest, p.Variant, want.ImageDigest, want.Variant)
	}
	if want.KubernetesVersion != "" && p.KubernetesVersion != want.KubernetesVersion {
		return fmt.Errorf("the signed measurements of image %s say it runs Kubernetes %s, not %s",
			p.ImageDigest, orNone(p.KubernetesVersion), want.KubernetesVersion)
	}
	if want.ImageVersion != "" && p.ImageVersion != want.ImageVersion {
		return fmt.Errorf("the signed measurements of image %s say it is version %s, not %s",
			p.ImageDigest, orNone(p.ImageVersion), want.ImageVersion)
	}
	return nil
}

func orNone(v string) string {
	if v == "" {
		return "(none signed)"
	}
	return v
}

// Key is a trusted signing key.
type Key struct {
	// Name is shown to the user, e.g. "development".
	Name string
	// Development marks a key that signs local builds: images it signed are accepted only on request.
	Development bool
	PublicKey   *ecdsa.PublicKey
}

// Hint is the key's fingerprint as carried in a bundle: the hex SHA-256 of its PKIX encoding.
func (k Key) Hint() (string, error) { return keyHint(k.PublicKey) }

func keyHint(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encoding the public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// Log is a trusted transparency log: the key that signs its checkpoints and its origin (the checkpoint's
// first line, a host name).
type Log struct {
	Origin    string
	PublicKey *ecdsa.PublicKey
}

// Root is what a verifier trusts: signing keys and the transparency log.
type Root struct {
	Keys []Key
	Log  Log
}

// Signer signs statements with a persistent ECDSA P-256 key and logs them.
type Signer struct {
	Key *ecdsa.PrivateKey
	// LogURL is the Rekor v2 log's base URL, e.g. http://127.0.0.1:3000.
	LogURL string
}

// Sign signs the statement and logs the signature. A log answers a signature it holds already with a
// conflict; ECDSA signatures are randomised, so signing again succeeds.
func (s Signer) Sign(ctx context.Context, stmt []byte) ([]byte, error) {
	kp, err := newKeypair(s.Key)
	if err != nil {
		return nil, err
	}
	b, err := sign.Bundle(&sign.DSSEData{Data: stmt, PayloadType: inTotoMediaType}, kp, sign.BundleOptions{
		Context:          ctx,
		TransparencyLogs: []sign.Transparency{sign.NewRekor(&sign.RekorOptions{BaseURL: s.LogURL, Version: 2})},
	})
	if err != nil {
		return nil, fmt.Errorf("signing and logging the measurements at %s: %w", s.LogURL, err)
	}
	raw, err := protojson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encoding the bundle: %w", err)
	}
	return raw, nil
}

// keypair is a persistent ECDSA P-256 key as sigstore-go's signer wants it.
type keypair struct {
	priv *ecdsa.PrivateKey
	hint string
}

func newKeypair(priv *ecdsa.PrivateKey) (*keypair, error) {
	if priv == nil || priv.Curve != elliptic.P256() {
		return nil, errors.New("the signing key must be an ECDSA P-256 key")
	}
	hint, err := keyHint(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	return &keypair{priv: priv, hint: hint}, nil
}

func (k *keypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (k *keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}
func (k *keypair) GetHint() []byte                { return []byte(k.hint) }
func (k *keypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (k *keypair) GetPublicKey() crypto.PublicKey { return k.priv.Public() }
func (k *keypair) GetPublicKeyPem() (string, error) {
	der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}
func (k *keypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	digest := sha256.Sum256(data)
	sig, err := k.priv.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, nil, err
	}
	return sig, digest[:], nil
}

// ParseBundle decodes a sigstore bundle as this product writes it: protobuf JSON of a v0.3 bundle with a
// DSSE envelope, a public-key hint and exactly one transparency log entry. Anything else is refused before
// any cryptography runs.
func ParseBundle(raw []byte) (*bundle.Bundle, error) {
	if len(raw) > MaxBundleSize {
		return nil, fmt.Errorf("the bundle is %d bytes, more than the %d a measurements bundle can be", len(raw), MaxBundleSize)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("decoding the sigstore bundle: %w", err)
	}
	if b.GetDsseEnvelope() == nil {
		return nil, errors.New("the bundle holds no DSSE envelope; measurements are signed as an in-toto statement")
	}
	vm := b.GetVerificationMaterial()
	if vm.GetPublicKey() == nil {
		return nil, errors.New("the bundle names no signing key; measurements are signed with a key, not a certificate")
	}
	if n := len(vm.GetTlogEntries()); n != 1 {
		return nil, fmt.Errorf("the bundle holds %d transparency log entries, want exactly one", n)
	}
	return &b, nil
}

// Result says what [Verify] checked.
type Result struct {
	Key                Key
	Predicate          Predicate
	MeasurementsSHA256 string
	LogOrigin          string
	LogIndex           int64
	CheckpointSize     uint64
}

// Verify checks a bundle offline: the signature by a key of r, the log entry's inclusion proof and the
// checkpoint signed by r's log, that the bundle covers measurementsJSON, and that the statement names want's
// image digest and variant, and want's Kubernetes and image versions where want names them (the result carries
// the signed ones). A key of r marked Development is accepted only with allowDevelopment. It returns
// what it checked.
func Verify(r Root, bundleJSON, measurementsJSON []byte, want Predicate, allowDevelopment bool) (*Result, error) {
	if err := want.check(); err != nil {
		return nil, err
	}
	b, err := ParseBundle(bundleJSON)
	if err != nil {
		return nil, err
	}
	tm, keysByHint, err := r.material()
	if err != nil {
		return nil, err
	}
	hint := b.GetVerificationMaterial().GetPublicKey().GetHint()
	key, ok := keysByHint[hint]
	if !ok {
		return nil, fmt.Errorf("the measurements are signed by key %s, which is not trusted (trusted: %v)", hint, r.Names())
	}
	if key.Development && !allowDevelopment {
		return nil, fmt.Errorf("the measurements are signed with the %s key, which signs local development builds only; "+
			"accept them only for an image you built yourself, by passing --allow-dev-signed", key.Name)
	}
	v, err := verify.NewVerifier(tm, verify.WithTransparencyLog(1), verify.WithNoObserverTimestamps())
	if err != nil {
		return nil, fmt.Errorf("setting up the verifier: %w", err)
	}
	if _, err := v.Verify(b, verify.NewPolicy(verify.WithArtifact(bytes.NewReader(measurementsJSON)), verify.WithKey())); err != nil {
		return nil, fmt.Errorf("the measurements bundle does not verify: %w", err)
	}
	// The envelope is authentic now; read what it states.
	env := b.GetDsseEnvelope()
	if env.GetPayloadType() != inTotoMediaType {
		return nil, fmt.Errorf("the signed payload is %q, not an in-toto statement", env.GetPayloadType())
	}
	var st statement
	if err := strictjson.Decode(env.GetPayload(), &st, MaxBundleSize); err != nil {
		return nil, fmt.Errorf("the signed statement: %w", err)
	}
	sum := sha256.Sum256(measurementsJSON)
	if st.Type != statementType || st.PredicateType != PredicateType {
		return nil, fmt.Errorf("the signed statement is a %q of %q, not measurements", st.Type, st.PredicateType)
	}
	if len(st.Subject) != 1 || len(st.Subject[0].Digest) != 1 || st.Subject[0].Digest["sha256"] != hex.EncodeToString(sum[:]) {
		return nil, errors.New("the signed statement does not name exactly this measurements file")
	}
	if err := st.Predicate.check(); err != nil {
		return nil, fmt.Errorf("the signed statement: %w", err)
	}
	if err := st.Predicate.matches(want); err != nil {
		return nil, err
	}
	entry := b.GetVerificationMaterial().GetTlogEntries()[0]
	return &Result{
		Key: key, Predicate: st.Predicate, MeasurementsSHA256: hex.EncodeToString(sum[:]),
		LogOrigin: r.Log.Origin, LogIndex: entry.GetLogIndex(),
		CheckpointSize: uint64(entry.GetInclusionProof().GetTreeSize()),
	}, nil
}

// VerifyAny verifies a bundle as [Verify] does, against the one of roots that holds the bundle's signing key
// (e.g. the embedded release root and a local development root): a key is trusted only together with the log
// of its own root.
func VerifyAny(roots []Root, bundleJSON, measurementsJSON []byte, want Predicate, allowDevelopment bool) (*Result, error) {
	b, err := ParseBundle(bundleJSON)
	if err != nil {
		return nil, err
	}
	hint := b.GetVerificationMaterial().GetPublicKey().GetHint()
	var names []string
	var lastErr error
	for _, r := range roots {
		names = append(names, r.Names()...)
		_, keys, err := r.material()
		if err != nil {
			return nil, err
		}
		if _, ok := keys[hint]; !ok {
			continue
		}
		res, err := Verify(r, bundleJSON, measurementsJSON, want, allowDevelopment)
		if err == nil {
			return res, nil
		}
		lastErr = err
	}
	if lastErr != nil {
		return nil, lastErr
	}
	slices.Sort(names)
	return nil, fmt.Errorf("the measurements are signed by key %s, which is not trusted (trusted: %v)", hint, names)
}

// material turns the root into sigstore-go's trusted material: the log under its log ID, the keys behind
// their hints.
func (r Root) material() (root.TrustedMaterial, map[string]Key, error) {
	if r.Log.PublicKey == nil || r.Log.Origin == "" {
		return nil, nil, errors.New("the trusted root names no transparency log")
	}
	if u, err := url.Parse("https://" + r.Log.Origin); err != nil || u.Hostname() != r.Log.Origin {
		return nil, nil, fmt.Errorf("the log origin %q is not a host name", r.Log.Origin)
	}
	_, logID, err := note.KeyHash(r.Log.Origin, r.Log.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("the log key: %w", err)
	}
	logs := map[string]*root.TransparencyLog{hex.EncodeToString(logID): {
		BaseURL: "https://" + r.Log.Origin, ID: logID, HashFunc: crypto.SHA256,
		PublicKey: r.Log.PublicKey, SignatureHashFunc: crypto.SHA256,
	}}
	keys := make(map[string]Key, len(r.Keys))
	verifiers := make(map[string]*root.ExpiringKey, len(r.Keys))
	for _, k := range r.Keys {
		hint, err := k.Hint()
		if err != nil {
			return nil, nil, err
		}
		sv, err := signature.LoadECDSAVerifier(k.PublicKey, crypto.SHA256)
		if err != nil {
			return nil, nil, fmt.Errorf("key %s: %w", k.Name, err)
		}
		keys[hint] = k
		verifiers[hint] = root.NewExpiringKey(sv, timeZero, timeZero)
	}
	return root.TrustedMaterialCollection{
		&logMaterial{logs: logs},
		root.NewTrustedPublicKeyMaterialFromMapping(verifiers),
	}, keys, nil
}

type logMaterial struct {
	root.BaseTrustedMaterial
	logs map[string]*root.TransparencyLog
}

func (l *logMaterial) RekorLogs() map[string]*root.TransparencyLog { return l.logs }

// Names returns the names of the root's keys, for messages.
func (r Root) Names() []string {
	var names []string
	for _, k := range r.Keys {
		names = append(names, k.Name)
	}
	slices.Sort(names)
	return names
}

// timeZero leaves a key's validity open: Rekor v2 entries carry no time a key's validity could be checked
// against, so keys are retired by removing them from the root.
var timeZero time.Time
