// Package policyupdate is the measurement policy update: the one or two measurement sets (node images) that the
// key services and the join service of a cluster accept, versioned by an epoch and authenticated by a MAC under
// a key derived from the master secret (kms.Deriver.MeasurementPolicyKey), so that only who holds the master
// secret (the operator's CLI) can author one.
//
// During an upgrade a cluster accepts exactly two sets, the old image's and the new one's; before and after,
// one. Each set names the node image it was signed for (its digest, "sha256:<hex>", [ImageSet]), under the MAC:
// a verifier that knows which set a node's evidence matched knows which image the node runs ([AnyImage]), and the
// cluster records that, not what a node says of itself. Updates of wire version 1, written before sets named
// their images, are still read (their sets name no image); the CLI authors version 2. The epoch defends against replay: whoever enforces a policy keeps the highest epoch it accepted where a
// cluster administrator cannot write, and refuses a lower epoch, or the same epoch with other content
// ([Supersedes]). An update saved from the window of an upgrade therefore cannot reopen it once a later update
// narrowed the sets.
//
// The wire form is JSON, parsed strictly ([Parse]) and bounded ([MaxSize]); the MAC covers a canonical
// encoding of the parsed content (version, cluster ID, epoch and every set), never the bytes as sent.
//
// A joining node learns the sets in force from nobody it can trust yet: its provider hints them ([PeerHint],
// without MAC), the node measures the hint into PCR 14 before it trusts a peer by it, and the join service
// admits it only if every set it trusted is in force ([PeerHintsOf], [CheckPeerHints]).
package policyupdate

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// Version is the version of the wire form and of the MAC's encoding that [Author] writes: 2, whose sets name
// their node images. [Parse] reads version 1 too (sets without images), so that an update a key service kept
// before stays readable.
const Version = 2

// versionUnlabelled is the wire version whose sets name no image.
const versionUnlabelled = 1

// MaxSets is the most sets an update holds: the old and the new image during an upgrade.
const MaxSets = 2

// MaxSize bounds the wire form: two sets of at most 24 PCRs take about 5 KiB.
const MaxSize = 32 << 10

// Update is one measurement policy update.
type Update struct {
	// Epoch orders the updates of a cluster; it starts at 1 (0 is the measurements of the cluster's init,
	// before any update) and only grows.
	Epoch uint64
	// ClusterID is the cluster the update is for (32 bytes).
	ClusterID []byte
	// Sets are the measurement sets accepted: one, or two during an upgrade. None holds the cluster-ID PCR,
	// which the enforcer sets itself (fresh for a joining node, the cluster ID for a member).
	Sets []measurements.M
	// Images are the digests ("sha256:<hex>") of the node images the sets are of, one per set in order; nil for
	// an update of wire version 1, whose sets name no image.
	Images []string
	// MAC is HMAC-SHA256 of the content under the master secret's measurement-policy key.
	MAC []byte
}

// ImageSet is a measurement set with the digest of the node image it was signed for.
type ImageSet struct {
	// Image is the node image's digest, "sha256:<64 lower-case hex digits>".
	Image        string
	Measurements measurements.M
}

// imageDigest is the form of a node image's digest.
var imageDigest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// CheckImageDigest checks that s is a node image's digest, "sha256:<64 lower-case hex digits>".
func CheckImageDigest(s string) error {
	if !imageDigest.MatchString(s) {
		return fmt.Errorf("node image digest %.80q: want sha256:<64 lower-case hex digits>", s)
	}
	return nil
}

// ImageOf returns the image of set i ("" if the update names none, or there is no set i).
func (u *Update) ImageOf(i int) string {
	if u == nil || i < 0 || i >= len(u.Images) {
		return ""
	}
	return u.Images[i]
}

// ImageSets returns the sets with their images ("" for an update that names none).
func (u *Update) ImageSets() []ImageSet {
	sets := make([]ImageSet, len(u.Sets))
	for i, set := range u.Sets {
		sets[i] = ImageSet{Image: u.ImageOf(i), Measurements: set}
	}
	return sets
}

// version is the wire version of u: 1 if its sets name no image.
func (u *Update) version() int {
	if u.Images == nil {
		return versionUnlabelled
	}
	return Version
}

// Errors of the epoch order ([Supersedes]).
var (
	// ErrStale says that an update has a lower epoch than the one in force: it is an old update, replayed.
	ErrStale = errors.New("the update is older than the measurement policy in force (a lower epoch): an old update, replayed or delayed")
	// ErrConflict says that an update has the epoch of the one in force but other content.
	ErrConflict = errors.New("the update has the epoch of the measurement policy in force but other measurement sets")
	// ErrNotAuthentic says that an update's MAC does not verify.
	ErrNotAuthentic = errors.New("the update's MAC does not verify under the cluster's measurement-policy key: it was not authored with the master secret")
)

// Author makes the update of epoch for clusterID that accepts sets, each with the node image it is of, with
// its MAC under key (kms.Deriver.MeasurementPolicyKey).
func Author(key, clusterID []byte, epoch uint64, sets ...ImageSet) (*Update, error) {
	if len(key) != 32 {
		return nil, errors.New("a measurement policy update needs the 32-byte key of its MAC")
	}
	u := &Update{Epoch: epoch, ClusterID: slices.Clone(clusterID), Images: []string{}}
	for _, set := range sets {
		u.Sets = append(u.Sets, set.Measurements)
		u.Images = append(u.Images, set.Image)
	}
	if err := u.validate(); err != nil {
		return nil, err
	}
	u.MAC = u.mac(key)
	return u, nil
}

// validate checks the content, whatever its MAC: an epoch, a cluster ID, one or two distinct sets that each pin
// the node image and its boot parameters (measurements.M.Validate) and leave the cluster-ID PCR alone.
func (u *Update) validate() error {
	if u.Epoch == 0 {
		return errors.New("measurement policy update: epoch 0 is the cluster's initial policy; an update starts at 1")
	}
	if len(u.ClusterID) != 32 {
		return fmt.Errorf("measurement policy update: the cluster ID has %d bytes, want 32", len(u.ClusterID))
	}
	if len(u.Sets) == 0 || len(u.Sets) > MaxSets {
		return fmt.Errorf("measurement policy update: %d measurement sets; an update accepts one image, or two (the old and the new one) during an upgrade", len(u.Sets))
	}
	for i, set := range u.Sets {
		if err := set.Validate(); err != nil {
			return fmt.Errorf("measurement policy update: set %d: %w", i+1, err)
		}
		if _, ok := set[measurements.PCRClusterID]; ok {
			return fmt.Errorf("measurement policy update: set %d holds PCR %d, the cluster ID's; the enforcer sets it itself", i+1, measurements.PCRClusterID)
		}
	}
	if len(u.Sets) == 2 && bytes.Equal(canonical(u.Sets[0]), canonical(u.Sets[1])) {
		return errors.New("measurement policy update: the two measurement sets are the same")
	}
	if u.Images == nil {
		return nil
	}
	if len(u.Images) != len(u.Sets) {
		return fmt.Errorf("measurement policy update: %d node images for %d measurement sets; every set names the image it is of", len(u.Images), len(u.Sets))
	}
	for i, img := range u.Images {
		if err := CheckImageDigest(img); err != nil {
			return fmt.Errorf("measurement policy update: set %d: %w", i+1, err)
		}
	}
	if len(u.Images) == 2 && u.Images[0] == u.Images[1] {
		return fmt.Errorf("measurement policy update: both measurement sets name node image %s; two sets are two images", u.Images[0])
	}
	return nil
}

// canonical is the encoding of a set the MAC covers: measurements.M.MarshalJSON, which sorts the PCRs.
func canonical(m measurements.M) []byte {
	raw, err := m.MarshalJSON()
	if err != nil {
		// A digest and a bool always marshal.
		panic(err)
	}
	return raw
}

// mac computes the MAC of the content under key: of version 2, every set with its image; of version 1 (sets
// without images), the encoding of that version.
func (u *Update) mac(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "constellation measurement policy update v%d\x00", u.version())
	m.Write(u.ClusterID)
	binary.Write(m, binary.BigEndian, u.Epoch)
	m.Write([]byte{byte(len(u.Sets))})
	for i, set := range u.Sets {
		raw := canonical(set)
		binary.Write(m, binary.BigEndian, uint32(len(raw)))
		m.Write(raw)
		if u.Images != nil {
			binary.Write(m, binary.BigEndian, uint32(len(u.Images[i])))
			m.Write([]byte(u.Images[i]))
		}
	}
	return m.Sum(nil)
}

// Verify checks that u was authored for clusterID with the master secret whose measurement-policy key is key.
// Nothing of an update counts before it verifies.
func (u *Update) Verify(key, clusterID []byte) error {
	if len(key) != 32 {
		return errors.New("verifying a measurement policy update needs the 32-byte key of its MAC")
	}
	if err := u.validate(); err != nil {
		return err
	}
	if !hmac.Equal(u.MAC, u.mac(key)) {
		return ErrNotAuthentic
	}
	if !bytes.Equal(u.ClusterID, clusterID) {
		return fmt.Errorf("measurement policy update: it is for cluster %x…, not this cluster (%x…)", u.ClusterID[:8], clusterID[:min(8, len(clusterID))])
	}
	return nil
}

// Same reports whether u and o have the same content (epoch, cluster ID, sets in order with their images).
func (u *Update) Same(o *Update) bool {
	if u == nil || o == nil {
		return u == o
	}
	if u.Epoch != o.Epoch || !bytes.Equal(u.ClusterID, o.ClusterID) || len(u.Sets) != len(o.Sets) || u.version() != o.version() || !slices.Equal(u.Images, o.Images) {
		return false
	}
	for i := range u.Sets {
		if !bytes.Equal(canonical(u.Sets[i]), canonical(o.Sets[i])) {
			return false
		}
	}
	return true
}

// Supersedes decides whether an enforcer whose policy in force is current (nil: none since init, epoch 0)
// takes next, which must have verified: yes for a higher epoch; no, without an error, for the update in force
// itself (sent again); [ErrStale] for a lower epoch and [ErrConflict] for the same epoch with other content.
func Supersedes(current, next *Update) (bool, error) {
	switch {
	case current == nil || next.Epoch > current.Epoch:
		return true, nil
	case next.Epoch == current.Epoch && next.Same(current):
		return false, nil
	case next.Epoch == current.Epoch:
		return false, fmt.Errorf("epoch %d: %w", next.Epoch, ErrConflict)
	default:
		return false, fmt.Errorf("epoch %d, in force %d: %w", next.Epoch, current.Epoch, ErrStale)
	}
}

// wire is the JSON form.
type wire struct {
	Version   int               `json:"version"`
	ClusterID string            `json:"clusterID"`
	Epoch     uint64            `json:"epoch"`
	Sets      []json.RawMessage `json:"sets"`
	// Images are the sets' node images (version 2; absent in version 1).
	Images *[]string `json:"images,omitempty"`
	MAC    string    `json:"mac"`
}

// Marshal returns the wire form.
func (u *Update) Marshal() ([]byte, error) {
	w := wire{Version: u.version(), ClusterID: hex.EncodeToString(u.ClusterID), Epoch: u.Epoch, MAC: hex.EncodeToString(u.MAC)}
	if u.Images != nil {
		w.Images = &u.Images
	}
	for _, set := range u.Sets {
		w.Sets = append(w.Sets, canonical(set))
	}
	return json.Marshal(w)
}

// Parse reads the wire form strictly (one JSON object, no unknown or repeated field, at most [MaxSize] bytes)
// and checks the content; it does not verify the MAC ([Update.Verify], [Open]).
func Parse(raw []byte) (*Update, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("measurement policy update: %d bytes, more than %d", len(raw), MaxSize)
	}
	var w wire
	if err := strictjson.Decode(raw, &w, MaxSize); err != nil {
		return nil, fmt.Errorf("parsing the measurement policy update: %w", err)
	}
	switch {
	case w.Version == Version && w.Images == nil:
		return nil, fmt.Errorf("measurement policy update: version %d names the node image of every set, this one names none", Version)
	case w.Version == versionUnlabelled && w.Images != nil:
		return nil, fmt.Errorf("measurement policy update: version %d names no node images, this one does", versionUnlabelled)
	case w.Version != Version && w.Version != versionUnlabelled:
		return nil, fmt.Errorf("measurement policy update: version %d; this program reads versions %d and %d", w.Version, versionUnlabelled, Version)
	}
	u := &Update{Epoch: w.Epoch}
	if w.Images != nil {
		if len(*w.Images) > MaxSets {
			return nil, fmt.Errorf("measurement policy update: %d node images; an update accepts one image, or two during an upgrade", len(*w.Images))
		}
		u.Images = append([]string{}, *w.Images...)
	}
	var err error
	if u.ClusterID, err = decodeHex(w.ClusterID, 32); err != nil {
		return nil, fmt.Errorf("measurement policy update: cluster ID: %w", err)
	}
	if u.MAC, err = decodeHex(w.MAC, sha256.Size); err != nil {
		return nil, fmt.Errorf("measurement policy update: MAC: %w", err)
	}
	if len(w.Sets) > MaxSets {
		return nil, fmt.Errorf("measurement policy update: %d measurement sets; an update accepts one image, or two (the old and the new one) during an upgrade", len(w.Sets))
	}
	for i, rawSet := range w.Sets {
		var set measurements.M
		if err := set.UnmarshalJSON(rawSet); err != nil {
			return nil, fmt.Errorf("measurement policy update: set %d: %w", i+1, err)
		}
		u.Sets = append(u.Sets, set)
	}
	if err := u.validate(); err != nil {
		return nil, err
	}
	return u, nil
}

// decodeHex decodes exactly n bytes of lower-case hex.
func decodeHex(s string, n int) ([]byte, error) {
	if len(s) != 2*n || strings.ToLower(s) != s {
		return nil, fmt.Errorf("want %d lower-case hex digits", 2*n)
	}
	return hex.DecodeString(s)
}

// Open parses raw and verifies it for clusterID under key: the update an enforcer may act on.
func Open(raw, key, clusterID []byte) (*Update, error) {
	u, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	if err := u.Verify(key, clusterID); err != nil {
		return nil, err
	}
	return u, nil
}

// String describes the update for logs and the CLI: its epoch and, per set, the node image's measurement.
func (u *Update) String() string {
	if u == nil {
		return "no update (the measurements of the cluster's init)"
	}
	parts := make([]string, len(u.Sets))
	for i, set := range u.ImageSets() {
		parts[i] = set.String()
	}
	return fmt.Sprintf("epoch %d: %s", u.Epoch, strings.Join(parts, " and "))
}

// String describes the set: its image, shortened, and its measurement ([Describe]).
func (s ImageSet) String() string {
	if s.Image == "" {
		return Describe(s.Measurements)
	}
	return ShortImage(s.Image) + " (" + Describe(s.Measurements) + ")"
}

// ShortImage shortens a node image's digest for display: "sha256:" and 12 hex digits.
func ShortImage(digest string) string {
	if len(digest) > len("sha256:")+12 {
		return digest[:len("sha256:")+12]
	}
	return digest
}

// Describe names a set by its node image's measurement (PCR 4), shortened.
func Describe(set measurements.M) string {
	img, ok := set[measurements.PCRNodeImage]
	if !ok {
		return fmt.Sprintf("%d PCRs", len(set))
	}
	return fmt.Sprintf("image PCR %d %s…", measurements.PCRNodeImage, img.Expected.String()[:12])
}

// ImageValidator is a validator of several measurement sets that tells, besides the user data, the node image of
// the set the evidence matched.
type ImageValidator interface {
	attestation.Validator
	// ValidateImage is Validate, and returns the image of the first set that accepted the evidence ("" if that
	// set names none).
	ValidateImage(ctx context.Context, evidence, nonce []byte) (userData []byte, image string, err error)
}

// AnySet returns a validator that accepts what one of vs accepts, one validator per accepted measurement set,
// all of one variant. When none accepts, its error joins theirs, each naming its set's position.
func AnySet(vs ...attestation.Validator) (attestation.Validator, error) {
	if len(vs) == 1 {
		if err := checkVariants(vs); err != nil {
			return nil, err
		}
		return vs[0], nil
	}
	return AnyImage(vs, nil)
}

// AnyImage is [AnySet] for sets that name their node images: images[i] is the image of the set of vs[i]; a set
// without an entry in images, or with "", names none. Which set accepted tells which image the node runs
// ([ImageValidator]).
func AnyImage(vs []attestation.Validator, images []string) (ImageValidator, error) {
	if err := checkVariants(vs); err != nil {
		return nil, err
	}
	if len(images) > len(vs) {
		return nil, fmt.Errorf("%d node images for %d measurement sets", len(images), len(vs))
	}
	return anySet{vs: vs, images: images}, nil
}

func checkVariants(vs []attestation.Validator) error {
	if len(vs) == 0 {
		return errors.New("no measurement set to validate against")
	}
	for _, v := range vs[1:] {
		if v.Variant().Name != vs[0].Variant().Name {
			return fmt.Errorf("the measurement sets' validators are of two variants, %s and %s", vs[0].Variant(), v.Variant())
		}
	}
	return nil
}

type anySet struct {
	vs     []attestation.Validator
	images []string
}

func (a anySet) Variant() attestation.Variant { return a.vs[0].Variant() }

func (a anySet) Validate(ctx context.Context, evidence, nonce []byte) ([]byte, error) {
	userData, _, err := a.ValidateImage(ctx, evidence, nonce)
	return userData, err
}

func (a anySet) ValidateImage(ctx context.Context, evidence, nonce []byte) ([]byte, string, error) {
	var errs []error
	for i, v := range a.vs {
		userData, err := v.Validate(ctx, evidence, nonce)
		if err == nil {
			var image string
			if i < len(a.images) {
				image = a.images[i]
			}
			return userData, image, nil
		}
		if len(a.vs) > 1 {
			err = fmt.Errorf("measurement set %d: %w", i+1, err)
		}
		errs = append(errs, err)
	}
	return nil, "", errors.Join(errs...)
}
