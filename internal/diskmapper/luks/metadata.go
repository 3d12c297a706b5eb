package luks

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// ErrBadParameters is wrapped by every refusal of a header whose parameters are not the ones Format writes, or
// whose parameter MAC does not verify.
var ErrBadParameters = errors.New("the LUKS2 header's parameters are not the ones this product writes")

// The parameters Format writes, as the LUKS2 JSON metadata spells them. The header is refused unless it holds
// exactly these.
const (
	metaEncryption      = "aes-xts-plain64"
	metaIntegrity       = "hmac(sha256)"
	metaKeyslotKeySize  = volumeKeySize // a keyslot stores the whole volume key: AES-256-XTS and HMAC-SHA256
	metaAreaKeySize     = 64            // a keyslot area is encrypted with AES-256-XTS
	metaAFStripes       = 4000
	metaHash            = "sha256"
	metaKDF             = "pbkdf2"
	metaSaltSize        = 32
	metaDigestSize      = 32
	metaMaxKeyslots     = 2 // during SetKey: the old and the new key
	metaParamsTokenType = "constellation-params"
	metaParamsTokenID   = 0
	volumeKeySize       = 64 + 32 // AES-256-XTS (two 256-bit keys) and the HMAC-SHA256 key
	sectorSize          = 4096
	pbkdfIterations     = 1000
)

// profile is the parameters a header must have. Production disks have exactly one, integrityProfile; the tests
// that run libcryptsetup on plain files (no device-mapper to format dm-integrity) use plainProfile.
type profile struct {
	integrity      string // "" for none
	keyslotKeySize int
}

var (
	integrityProfile = profile{integrity: metaIntegrity, keyslotKeySize: metaKeyslotKeySize}
	plainProfile     = profile{keyslotKeySize: metaAreaKeySize}
)

// Metadata is what the node checks and authenticates of a LUKS2 header's JSON metadata.
type Metadata struct {
	// Keyslots are the ids of the keyslots in use.
	Keyslots []int
	// DataOffset is where the encrypted data starts on the disk, in bytes.
	DataOffset uint64
	// JSONSize and KeyslotsSize are the sizes of the JSON area and the keyslots area.
	JSONSize, KeyslotsSize uint64
	// Digest is the volume key's digest (PBKDF2-SHA256): salt, iterations and value. It binds the volume key.
	DigestSalt, DigestValue []byte
	DigestIterations        uint64
	// MAC is the parameter MAC of the header's token, nil if it has none (a disk never given its key).
	MAC []byte

	profile profile
}

// The JSON metadata, field by field. Every object is decoded with unknown fields refused, so a field this
// product does not write (flags, requirements, a second integrity option) is refused, not ignored.
type (
	metaRoot struct {
		Keyslots map[string]metaKeyslot `json:"keyslots"`
		Tokens   map[string]metaToken   `json:"tokens"`
		Segments map[string]metaSegment `json:"segments"`
		Digests  map[string]metaDigest  `json:"digests"`
		Config   *metaConfig            `json:"config"`
	}
	metaKeyslot struct {
		Type    string    `json:"type"`
		KeySize *int      `json:"key_size"`
		AF      *metaAF   `json:"af"`
		Area    *metaArea `json:"area"`
		KDF     *jsonKDF  `json:"kdf"`
	}
	metaAF struct {
		Type    string `json:"type"`
		Stripes *int   `json:"stripes"`
		Hash    string `json:"hash"`
	}
	metaArea struct {
		Type       string `json:"type"`
		Offset     string `json:"offset"`
		Size       string `json:"size"`
		Encryption string `json:"encryption"`
		KeySize    *int   `json:"key_size"`
	}
	jsonKDF struct {
		Type       string `json:"type"`
		Hash       string `json:"hash"`
		Iterations *int   `json:"iterations"`
		Salt       string `json:"salt"`
	}
	metaToken struct {
		Type     string   `json:"type"`
		Keyslots []string `json:"keyslots"`
		MAC      string   `json:"mac"`
	}
	metaSegment struct {
		Type       string         `json:"type"`
		Offset     string         `json:"offset"`
		Size       string         `json:"size"`
		IVTweak    string         `json:"iv_tweak"`
		Encryption string         `json:"encryption"`
		SectorSize *int           `json:"sector_size"`
		Integrity  *jsonIntegrity `json:"integrity"`
	}
	jsonIntegrity struct {
		Type              string `json:"type"`
		JournalEncryption string `json:"journal_encryption"`
		JournalIntegrity  string `json:"journal_integrity"`
	}
	metaDigest struct {
		Type       string   `json:"type"`
		Keyslots   []string `json:"keyslots"`
		Segments   []string `json:"segments"`
		Hash       string   `json:"hash"`
		Iterations *int     `json:"iterations"`
		Salt       string   `json:"salt"`
		Digest     string   `json:"digest"`
	}
	metaConfig struct {
		JSONSize     string `json:"json_size"`
		KeyslotsSize string `json:"keyslots_size"`
	}
)

func badParam(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadParameters, fmt.Sprintf(format, args...))
}

// checkJSONSyntax refuses what encoding/json would accept but another parser may read differently: duplicate
// object keys (libcryptsetup's JSON parser may keep another one than Go's), keys Go would match to a field
// case-insensitively, nesting deeper than the format's, and anything after the object.
func checkJSONSyntax(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := walkJSON(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return badParam("the JSON metadata has data after its object")
	}
	return nil
}

// maxJSONDepth is deeper than anything the format nests (segments -> "0" -> integrity -> type).
const maxJSONDepth = 6

func walkJSON(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return badParam("the JSON metadata nests deeper than the format does")
	}
	tok, err := dec.Token()
	if err != nil {
		return badParam("the JSON metadata does not parse: %v", err)
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch delim {
	case '{':
		keys := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return badParam("the JSON metadata does not parse: %v", err)
			}
			key, _ := k.(string)
			// Go matches field names case-insensitively (with Unicode folding), libcryptsetup exactly; keys
			// of anything but lower-case letters, digits and underscores (all the format uses) could be read
			// differently, and are refused.
			if !plainKey(key) {
				return badParam("the JSON metadata has the key %q; keys are lower-case letters, digits and underscores", key)
			}
			if keys[key] {
				return badParam("the JSON metadata has the key %q twice in one object", key)
			}
			keys[key] = true
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	default:
		return badParam("the JSON metadata does not parse: unexpected %v", delim)
	}
	if _, err := dec.Token(); err != nil {
		return badParam("the JSON metadata does not parse: %v", err)
	}
	return nil
}

func plainKey(k string) bool {
	if k == "" || len(k) > 32 {
		return false
	}
	for _, c := range []byte(k) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// decodeStrict decodes one JSON value into v, refusing unknown fields at every level.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badParam("the JSON metadata is not what this product writes: %v", err)
	}
	return nil
}

// decimal parses one of the format's decimal strings (offsets and sizes are JSON strings), canonical form only.
func decimal(s, what string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || strconv.FormatUint(v, 10) != s {
		return 0, badParam("%s %q is not a decimal number", what, s)
	}
	return v, nil
}

func b64(s, what string, size int) ([]byte, error) {
	v, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(v) != size {
		return nil, badParam("%s is not %d bytes of base64", what, size)
	}
	return v, nil
}

func intIs(p *int, want int, what string) error {
	switch {
	case p == nil:
		return badParam("%s is missing", what)
	case *p != want:
		return badParam("%s is %d, want %d", what, *p, want)
	}
	return nil
}

func strIs(got, want, what string) error {
	if got != want {
		return badParam("%s is %q, want %q", what, got, want)
	}
	return nil
}

// slotID parses a keyslot, segment, digest or token id: a decimal number without leading zeros.
func slotID(s string, max int) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || strconv.Itoa(v) != s || v < 0 || v >= max {
		return 0, badParam("id %q is not a number below %d", s, max)
	}
	return v, nil
}

// ParseMetadata parses the JSON metadata of a LUKS2 header (the JSON area up to its terminating NUL) and
// refuses anything but what Format and SetKey write: one crypt segment with aes-xts-plain64, dm-integrity
// with hmac(sha256) and no journal encryption or integrity, 4096-byte sectors, starting right after the
// keyslots area; one or two keyslots, each a PBKDF2-SHA256 (1000 iterations) LUKS2 keyslot of the 96-byte
// volume key in an AES-256-XTS encrypted area inside the keyslots area; one PBKDF2-SHA256 digest of the
// volume key for all keyslots and the segment; no token but the parameter token of SetKey; no flags, no
// requirements. hdrSize is the size of one header copy (from the binary header) that the JSON area must fit.
func ParseMetadata(b []byte, hdrSize uint64) (Metadata, error) {
	return parseMetadata(b, hdrSize, integrityProfile)
}

func parseMetadata(b []byte, hdrSize uint64, p profile) (Metadata, error) {
	m := Metadata{profile: p}
	if err := checkJSONSyntax(b); err != nil {
		return m, err
	}
	var root metaRoot
	if err := decodeStrict(b, &root); err != nil {
		return m, err
	}
	if root.Keyslots == nil || root.Tokens == nil || root.Segments == nil || root.Digests == nil || root.Config == nil {
		return m, badParam("the JSON metadata lacks one of keyslots, tokens, segments, digests, config")
	}

	// config: the metadata and keyslots areas.
	var err error
	if m.JSONSize, err = decimal(root.Config.JSONSize, "config.json_size"); err != nil {
		return m, err
	}
	if m.KeyslotsSize, err = decimal(root.Config.KeyslotsSize, "config.keyslots_size"); err != nil {
		return m, err
	}
	if m.JSONSize != hdrSize-binaryHeaderSize {
		return m, badParam("config.json_size is %d, want %d (the header copy's size less the binary header)", m.JSONSize, hdrSize-binaryHeaderSize)
	}
	if m.KeyslotsSize == 0 || m.KeyslotsSize%sectorSize != 0 || m.KeyslotsSize > 128<<20 {
		return m, badParam("config.keyslots_size %d is not a multiple of %d up to 128 MiB", m.KeyslotsSize, sectorSize)
	}
	areaStart, areaEnd := 2*hdrSize, 2*hdrSize+m.KeyslotsSize

	// segments: exactly one, the encrypted and authenticated data.
	if len(root.Segments) != 1 {
		return m, badParam("%d segments, want 1", len(root.Segments))
	}
	seg, ok := root.Segments["0"]
	if !ok {
		return m, badParam("the segment is not segment 0")
	}
	for _, c := range []error{
		strIs(seg.Type, "crypt", "segment type"),
		strIs(seg.Size, "dynamic", "segment size"),
		strIs(seg.IVTweak, "0", "segment iv_tweak"),
		strIs(seg.Encryption, metaEncryption, "segment encryption"),
		intIs(seg.SectorSize, sectorSize, "segment sector_size"),
	} {
		if c != nil {
			return m, c
		}
	}
	switch {
	case seg.Integrity == nil && p.integrity != "":
		return m, badParam("the segment has no integrity protection, want %s", p.integrity)
	case seg.Integrity != nil && p.integrity == "":
		return m, badParam("the segment has integrity protection, this test disk has none")
	case seg.Integrity != nil:
		for _, c := range []error{
			strIs(seg.Integrity.Type, p.integrity, "segment integrity"),
			strIs(seg.Integrity.JournalEncryption, "none", "segment integrity journal_encryption"),
			strIs(seg.Integrity.JournalIntegrity, "none", "segment integrity journal_integrity"),
		} {
			if c != nil {
				return m, c
			}
		}
	}
	if m.DataOffset, err = decimal(seg.Offset, "segment offset"); err != nil {
		return m, err
	}
	if m.DataOffset != areaEnd {
		return m, badParam("the segment starts at %d, want %d (right after the keyslots area)", m.DataOffset, areaEnd)
	}

	// keyslots: the first-boot key's and/or the derived key's.
	if len(root.Keyslots) == 0 || len(root.Keyslots) > metaMaxKeyslots {
		return m, badParam("%d keyslots, want 1 or %d", len(root.Keyslots), metaMaxKeyslots)
	}
	type span struct{ off, end uint64 }
	var areas []span
	for id, ks := range root.Keyslots {
		n, err := slotID(id, 32)
		if err != nil {
			return m, err
		}
		m.Keyslots = append(m.Keyslots, n)
		what := "keyslot " + id
		if ks.AF == nil || ks.Area == nil || ks.KDF == nil {
			return m, badParam("%s lacks af, area or kdf", what)
		}
		for _, c := range []error{
			strIs(ks.Type, "luks2", what+" type"),
			intIs(ks.KeySize, p.keyslotKeySize, what+" key_size"),
			strIs(ks.AF.Type, "luks1", what+" af type"),
			intIs(ks.AF.Stripes, metaAFStripes, what+" af stripes"),
			strIs(ks.AF.Hash, metaHash, what+" af hash"),
			strIs(ks.Area.Type, "raw", what+" area type"),
			strIs(ks.Area.Encryption, metaEncryption, what+" area encryption"),
			intIs(ks.Area.KeySize, metaAreaKeySize, what+" area key_size"),
			strIs(ks.KDF.Type, metaKDF, what+" kdf type"),
			strIs(ks.KDF.Hash, metaHash, what+" kdf hash"),
			intIs(ks.KDF.Iterations, pbkdfIterations, what+" kdf iterations"),
		} {
			if c != nil {
				return m, c
			}
		}
		if _, err := b64(ks.KDF.Salt, what+" kdf salt", metaSaltSize); err != nil {
			return m, err
		}
		off, err := decimal(ks.Area.Offset, what+" area offset")
		if err != nil {
			return m, err
		}
		size, err := decimal(ks.Area.Size, what+" area size")
		if err != nil {
			return m, err
		}
		// The area holds the AF-split key (4000 stripes of 96 bytes), rounded up to 4096-byte blocks.
		want := uint64(metaAFStripes*p.keyslotKeySize+sectorSize-1) / sectorSize * sectorSize
		if size != want || off%sectorSize != 0 || off < areaStart || off > areaEnd || size > areaEnd-off {
			return m, badParam("%s area [%d, +%d) is not a %d-byte area inside the keyslots area [%d, %d)", what, off, size, want, areaStart, areaEnd)
		}
		areas = append(areas, span{off, off + size})
	}
	slices.Sort(m.Keyslots)
	slices.SortFunc(areas, func(a, b span) int { return int(int64(a.off) - int64(b.off)) })
	for i := 1; i < len(areas); i++ {
		if areas[i].off < areas[i-1].end {
			return m, badParam("two keyslot areas overlap")
		}
	}

	// digests: one, of the volume key, for every keyslot and the segment.
	if len(root.Digests) != 1 {
		return m, badParam("%d digests, want 1", len(root.Digests))
	}
	dg, ok := root.Digests["0"]
	if !ok {
		return m, badParam("the digest is not digest 0")
	}
	for _, c := range []error{
		strIs(dg.Type, metaKDF, "digest type"),
		strIs(dg.Hash, metaHash, "digest hash"),
	} {
		if c != nil {
			return m, c
		}
	}
	if dg.Iterations == nil || *dg.Iterations < pbkdfIterations || *dg.Iterations > 1<<30 {
		return m, badParam("digest iterations missing or out of range [%d, 2^30]", pbkdfIterations)
	}
	m.DigestIterations = uint64(*dg.Iterations)
	if !slices.Equal(dg.Segments, []string{"0"}) {
		return m, badParam("the digest is for segments %q, want [\"0\"]", dg.Segments)
	}
	var digested []int
	for _, s := range dg.Keyslots {
		n, err := slotID(s, 32)
		if err != nil {
			return m, err
		}
		digested = append(digested, n)
	}
	slices.Sort(digested)
	if !slices.Equal(digested, m.Keyslots) {
		return m, badParam("the digest is for keyslots %v, the header has keyslots %v", digested, m.Keyslots)
	}
	if m.DigestSalt, err = b64(dg.Salt, "digest salt", metaSaltSize); err != nil {
		return m, err
	}
	if m.DigestValue, err = b64(dg.Digest, "digest value", metaDigestSize); err != nil {
		return m, err
	}

	// tokens: none, or the parameter token.
	switch len(root.Tokens) {
	case 0:
	case 1:
		tok, ok := root.Tokens[strconv.Itoa(metaParamsTokenID)]
		if !ok || tok.Type != metaParamsTokenType || tok.Keyslots == nil || len(tok.Keyslots) != 0 {
			return m, badParam("the header has a token that is not this product's parameter token")
		}
		if m.MAC, err = b64(tok.MAC, "the parameter MAC", sha256.Size); err != nil {
			return m, err
		}
	default:
		return m, badParam("%d tokens, want at most the parameter token", len(root.Tokens))
	}
	return m, nil
}

// macInfo is the HKDF info of the parameter MAC key: derived from the disk key, used for nothing else.
const macInfo = "constellation luks2 header parameters v1"

// canonical is the byte string the parameter MAC covers: the disk's UUID and every parameter of the header
// that decides how the data is protected or which volume key it is (the digest binds the volume key). The
// keyslots are not covered: they change when the key is replaced, every one must have the parameters
// ParseMetadata requires, and only the holder of a key can make a keyslot it opens.
func (m Metadata) canonical(uuid string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nuuid=%s\n", macInfo, uuid)
	fmt.Fprintf(&b, "segment=crypt offset=%d size=dynamic iv_tweak=0 encryption=%s sector_size=%d integrity=%s journal_encryption=none journal_integrity=none\n",
		m.DataOffset, metaEncryption, sectorSize, m.profile.integrity)
	fmt.Fprintf(&b, "config json_size=%d keyslots_size=%d flags= requirements=\n", m.JSONSize, m.KeyslotsSize)
	fmt.Fprintf(&b, "keyslots type=luks2 key_size=%d af=luks1/%d/%s area=raw/%s/%d kdf=%s/%s/%d\n",
		m.profile.keyslotKeySize, metaAFStripes, metaHash, metaEncryption, metaAreaKeySize, metaKDF, metaHash, pbkdfIterations)
	fmt.Fprintf(&b, "digest=%s hash=%s iterations=%d salt=%x digest=%x\n", metaKDF, metaHash, m.DigestIterations, m.DigestSalt, m.DigestValue)
	return []byte(b.String())
}

// ParamsMAC returns the MAC of the header's parameters under a key derived from the disk key: HMAC-SHA256 with
// the key HKDF-SHA256(disk key, info macInfo) over the canonical form of the parameters.
func (m Metadata) ParamsMAC(uuid string, diskKey []byte) ([]byte, error) {
	if err := checkKey("disk key", diskKey); err != nil {
		return nil, err
	}
	k, err := hkdf.Key(sha256.New, diskKey, nil, macInfo, sha256.Size)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	mac := hmac.New(sha256.New, k)
	mac.Write(m.canonical(uuid))
	return mac.Sum(nil), nil
}

// VerifyMAC checks the header's parameter MAC under the disk key; a header without one is refused.
func (m Metadata) VerifyMAC(uuid string, diskKey []byte) error {
	if m.MAC == nil {
		return badParam("disk %s has no parameter MAC (a disk is given one with its key; a disk initialised by a version of this product without parameter MACs has none and must be replaced with a blank disk)", uuid)
	}
	want, err := m.ParamsMAC(uuid, diskKey)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, m.MAC) {
		return badParam("the parameter MAC of disk %s does not verify under the disk key: its header was changed after the key was set", uuid)
	}
	return nil
}

// paramsToken returns the JSON of the parameter token that carries mac.
func paramsToken(mac []byte) string {
	return fmt.Sprintf(`{"type":%q,"keyslots":[],"mac":%q}`, metaParamsTokenType, base64.StdEncoding.EncodeToString(mac))
}

func checkKey(what string, key []byte) error {
	if len(key) != KeySize {
		return fmt.Errorf("the %s has %d bytes, want %d (a disk key from the key service)", what, len(key), KeySize)
	}
	return nil
}
