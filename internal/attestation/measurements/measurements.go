// Package measurements holds the measurement policy: for each PCR the value a node running the expected image
// presents, and whether a mismatch only warns.
//
// The policy denies by default. An empty policy accepts nothing; a PCR in the policy that the evidence does not
// cover is a mismatch, never a skip. A policy that would accept any node image, or the genuine image booted
// with parameters of the host's choosing, is invalid ([M.Validate]): the PCRs that measure the image and its
// boot parameters (the ImagePCRs of the node's measured-boot [Scheme]: PCRs 4 and 8 on the mini provider,
// [MiniScheme]; PCRs 4, 11, 12 and 13 on UEFI machines, [UEFIScheme]) must be in it and enforced, so a policy
// in which every PCR is warn-only, or one of these PCRs is missing or warn-only, is refused wherever a policy
// enters the product (configuration, init, recovery, the join service's configuration, the key service's
// secret, validators). A failed check reports every mismatching PCR at once, with expected and actual values,
// so an operator can see what differs.
//
// Membership of a cluster is a rule over PCR 15, the same for every provider: [ClusterIDEvent] is what a node
// extends after init or join, [MemberPolicy] what a member of a cluster presents, [FreshPolicy] what a node
// that belongs to no cluster yet presents. PCR 14 ([PCRPeerPolicy]) shows which peers a joining node trusted;
// no policy of a node image holds it (it differs between nodes of one image).
package measurements

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

// NumPCRs is the number of PCRs of a TPM 2.0 PC client.
const NumPCRs = 24

// DigestSize is the size of a SHA-256 PCR value, the only bank policies refer to.
const DigestSize = 32

// Well-known PCRs of this product's measurement scheme.
const (
	// PCRNodeImage measures the boot image: the node image's digest on the mini provider's firmware, the
	// boot application (the node image's unified kernel image) on UEFI firmware.
	PCRNodeImage = 4
	// PCRBootParams measures the parameters the image boots with: the bootstrapper's command line on the
	// mini provider, the kernel command line on UEFI firmware.
	PCRBootParams = 8
	// PCRClusterID holds the cluster ID, extended by a node after init or join, so that an initialised node
	// cannot pose as a fresh one and a verifier can tell which cluster a node belongs to.
	PCRClusterID = 15
	// PCRPeerPolicy holds the peer policy a joining node was given (the measurement sets of the peers it trusts
	// besides its own image's, see package policyupdate's PeerHint), extended by the node before it trusts any
	// peer; zero if it was given none. No measured-boot scheme of this product uses it: the mini firmware
	// measures PCRs 0, 4 and 8, OVMF PCRs 0 to 7, systemd-stub PCRs 11 to 13, and no shim (which would extend
	// its MOK lists into PCR 14) is in the boot chain. Unlike PCRs 16 and 23 it cannot be reset by software.
	PCRPeerPolicy = 14
)

// Digest is a SHA-256 PCR value, written as hex.
type Digest [DigestSize]byte

// String returns the value as hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalJSON writes the digest as a hex string.
func (d Digest) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a hex string of exactly 32 bytes.
func (d *Digest) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("expected value must be a hex string: %w", err)
	}
	raw, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("expected value %q is not hex: %w", s, err)
	}
	if len(raw) != DigestSize {
		return fmt.Errorf("expected value has %d bytes, want %d (a SHA-256 PCR value, 64 hex digits)", len(raw), DigestSize)
	}
	copy(d[:], raw)
	return nil
}

// Measurement is the policy for one PCR.
type Measurement struct {
	Expected Digest `json:"expected"`
	// WarnOnly makes a mismatch a warning instead of a failure.
	WarnOnly bool `json:"warnOnly"`
}

// M maps PCR indices to their policy.
type M map[uint32]Measurement

// ImagePCRs are the PCRs that measure the node image and what it boots with in the mini provider's scheme
// ([MiniScheme]): the image itself ([PCRNodeImage]) and its boot parameters ([PCRBootParams]). A valid policy
// of that scheme enforces every one of them: without the first any image would be accepted, without the
// second the genuine image booted with a command line of the host's choosing (another metadata service,
// features switched off by flags).
var ImagePCRs = []uint32{PCRNodeImage, PCRBootParams}

// PCRs of the UEFI measured-boot scheme (systemd-stub in a unified kernel image on UEFI firmware; see package
// bootimage) besides [PCRNodeImage], which there measures the boot application.
const (
	// PCRKernelBoot measures the sections of the unified kernel image as systemd-stub saw them: kernel,
	// initramfs, command line, OS release.
	PCRKernelBoot = 11
	// PCRKernelConfig measures a kernel command line the host's boot option passes, and credentials found on
	// the ESP; nothing for a genuine boot.
	PCRKernelConfig = 12
	// PCRSysExts measures system extensions found on the ESP; nothing for a genuine boot.
	PCRSysExts = 13
)

// Scheme is a measured-boot scheme: the PCRs through which a node's boot pins the node image and the
// parameters it boots with. Every policy of a scheme must enforce all of them.
type Scheme struct {
	Name string
	// ImagePCRs measure the node image and its boot parameters.
	ImagePCRs []uint32
}

// The measured-boot schemes of this product.
var (
	// MiniScheme is the mini provider's firmware: PCR 4 the node image's digest, PCR 8 the first process's
	// command line.
	MiniScheme = Scheme{Name: "mini", ImagePCRs: ImagePCRs}
	// UEFIScheme is a UEFI machine booting the node image's unified kernel image: PCR 4 the boot application
	// (the UKI, and the kernel systemd-stub loads from it), PCR 11 the UKI's sections, PCRs 12 and 13 what the
	// host could add through the boot option and the ESP (a genuine boot leaves them at zero). There is no
	// PCR 8: the command line is a section of the UKI.
	UEFIScheme = Scheme{Name: "uefi", ImagePCRs: []uint32{PCRNodeImage, PCRKernelBoot, PCRKernelConfig, PCRSysExts}}
)

// schemes are the measured-boot schemes a policy that names no variant may be for.
var schemes = []Scheme{MiniScheme, UEFIScheme}

// schemeOf is the scheme a policy that satisfies none is reported against: the mini scheme if it has PCR 8,
// else the UEFI scheme if it has a PCR only that scheme pins, else the mini scheme.
func (m M) schemeOf() Scheme {
	if _, ok := m[PCRBootParams]; ok {
		return MiniScheme
	}
	for _, idx := range []uint32{PCRKernelBoot, PCRKernelConfig, PCRSysExts} {
		if _, ok := m[idx]; ok {
			return UEFIScheme
		}
	}
	return MiniScheme
}

// ErrEmptyPolicy is returned when a policy has no entries; an empty policy accepts nothing.
var ErrEmptyPolicy = errors.New("the measurement policy is empty, so nothing can be verified; add the expected PCR values")

// ErrAcceptsAnyImage is returned by [M.Validate] for a policy that does not pin the node image and its boot
// parameters: every PCR warn-only, or a PCR of [ImagePCRs] missing or warn-only.
var ErrAcceptsAnyImage = errors.New("the measurement policy accepts any node image or boot parameters")

// Parse reads a policy in JSON or YAML: {"<pcr>": {"expected": "<hex>", "warnOnly": false}, ...}.
// Unknown fields, duplicate or malformed PCR indices and malformed values are errors.
func Parse(raw []byte) (M, error) {
	var m M
	if err := yaml.UnmarshalStrict(raw, &m); err != nil {
		return nil, fmt.Errorf("parsing measurements: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// maxJSONSize bounds the JSON of a measurement policy, far above the size of 24 entries.
const maxJSONSize = 1 << 20

// UnmarshalJSON reads a policy strictly (package strictjson): decimal PCR indices in range, none twice, each
// entry with an expected value and no unknown, repeated or differently spelled fields. It is used for the
// policy inside the cluster configuration, too.
func (m *M) UnmarshalJSON(raw []byte) error {
	var byKey map[string]json.RawMessage
	if err := strictjson.Decode(raw, &byKey, maxJSONSize); err != nil {
		return err
	}
	out := make(M, len(byKey))
	for key, val := range byKey {
		idx, err := strconv.ParseUint(key, 10, 32)
		if err != nil || strconv.FormatUint(idx, 10) != key {
			return fmt.Errorf("PCR index %q is not a decimal number", key)
		}
		if idx >= NumPCRs {
			return fmt.Errorf("PCR index %d out of range 0-%d", idx, NumPCRs-1)
		}
		var meas struct {
			Expected *Digest `json:"expected"`
			WarnOnly bool    `json:"warnOnly"`
		}
		if err := strictjson.Decode(val, &meas, maxJSONSize); err != nil {
			return fmt.Errorf("PCR %d: %w", idx, err)
		}
		if meas.Expected == nil {
			return fmt.Errorf("PCR %d has no expected value", idx)
		}
		out[uint32(idx)] = Measurement{Expected: *meas.Expected, WarnOnly: meas.WarnOnly}
	}
	*m = out
	return nil
}

// Validate is the validity check of a policy at the entry points that do not know the variant of the nodes
// it is for: the policy must pass [M.ValidateScheme] for at least one measured-boot scheme of this product.
// The entry points that know the variant (every validator, the configuration) check the variant's own scheme
// (vtpm.ImageScheme), so a policy of one scheme is never enforced on the other's nodes.
func (m M) Validate() error {
	err := m.ValidateScheme(m.schemeOf())
	if err == nil {
		return nil
	}
	for _, s := range schemes {
		if m.ValidateScheme(s) == nil {
			return nil
		}
	}
	return err
}

// ValidateScheme is the one validity check of a policy for nodes of a measured-boot scheme: it has entries,
// all in range, and it pins the node image and its boot parameters: at least one PCR is enforced, and every
// PCR of the scheme's ImagePCRs is in the policy and enforced (not warn-only). A policy that fails it would
// accept any image, or the genuine image with any boot parameters ([ErrAcceptsAnyImage]).
func (m M) ValidateScheme(s Scheme) error {
	if len(s.ImagePCRs) == 0 {
		return fmt.Errorf("measured-boot scheme %q names no image PCRs", s.Name)
	}
	if len(m) == 0 {
		return ErrEmptyPolicy
	}
	for idx := range m {
		if idx >= NumPCRs {
			return fmt.Errorf("PCR index %d out of range 0-%d", idx, NumPCRs-1)
		}
	}
	if !slices.ContainsFunc(m.Indices(), func(idx uint32) bool { return !m[idx].WarnOnly }) {
		return fmt.Errorf("%w: every PCR is warn-only, so no mismatch fails; enforce at least %s (set warnOnly: false)", ErrAcceptsAnyImage, namePCRs(s.ImagePCRs))
	}
	var missing, warnOnly []uint32
	for _, idx := range s.ImagePCRs {
		switch meas, ok := m[idx]; {
		case !ok:
			missing = append(missing, idx)
		case meas.WarnOnly:
			warnOnly = append(warnOnly, idx)
		}
	}
	var problems []string
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("%s missing (add the expected value the node image presents)", namePCRs(missing)))
	}
	if len(warnOnly) > 0 {
		problems = append(problems, fmt.Sprintf("%s warn-only (set warnOnly: false)", namePCRs(warnOnly)))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s measure the node image and its boot parameters (%s boot scheme) and must be enforced: %s", ErrAcceptsAnyImage, namePCRs(s.ImagePCRs), s.Name, strings.Join(problems, "; "))
	}
	return nil
}

// namePCRs names a list of PCRs: "PCR 4" or "PCRs 4, 8".
func namePCRs(idx []uint32) string {
	parts := make([]string, len(idx))
	for i, p := range idx {
		parts[i] = strconv.FormatUint(uint64(p), 10)
	}
	if len(parts) == 1 {
		return "PCR " + parts[0]
	}
	return "PCRs " + strings.Join(parts, ", ")
}

// MarshalJSON writes the policy with PCR indices as keys, in ascending order.
func (m M) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, idx := range m.Indices() {
		if i > 0 {
			buf.WriteByte(',')
		}
		val, err := json.Marshal(m[idx])
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&buf, "%q:%s", strconv.FormatUint(uint64(idx), 10), val)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// Indices returns the PCR indices of the policy in ascending order.
func (m M) Indices() []uint32 {
	return slices.Sorted(maps.Keys(m))
}

// Mismatch describes one PCR that does not satisfy the policy.
type Mismatch struct {
	PCR      uint32
	Expected Digest
	// Actual is the quoted value; nil when the evidence does not cover the PCR.
	Actual   []byte
	WarnOnly bool
	// Events describe, from the verified event log, the measurements that produced Actual; what the events'
	// digests do not bind (their type or data) is marked unverified.
	Events []string
}

// Covered reports whether the evidence covered the PCR at all.
func (mm Mismatch) Covered() bool { return mm.Actual != nil }

func (mm Mismatch) String() string {
	if !mm.Covered() {
		return fmt.Sprintf("PCR %d: not covered by the quote, expected %s", mm.PCR, mm.Expected)
	}
	return fmt.Sprintf("PCR %d: %x, expected %s", mm.PCR, mm.Actual, mm.Expected)
}

// Error is a failed measurement check. It lists every mismatching PCR, warn-only ones included.
type Error struct {
	Mismatches []Mismatch
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "measurements do not match the policy (%s)", Summary(Fatal(e.Mismatches)))
	for _, mm := range e.Mismatches {
		b.WriteString("\n  ")
		b.WriteString(mm.String())
		if mm.WarnOnly {
			b.WriteString(" (warn only)")
		}
		for _, ev := range mm.Events {
			b.WriteString("\n      ")
			b.WriteString(ev)
		}
	}
	return b.String()
}

// Check compares verified PCR values (only those covered by a verified quote) with the policy. It returns
// every mismatch, warn-only ones included, in ascending PCR order; the caller decides what is fatal.
// An empty policy returns ErrEmptyPolicy.
func (m M) Check(verified map[uint32][]byte) ([]Mismatch, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	var out []Mismatch
	for _, idx := range m.Indices() {
		want := m[idx]
		got, ok := verified[idx]
		if ok && bytes.Equal(got, want.Expected[:]) {
			continue
		}
		mm := Mismatch{PCR: idx, Expected: want.Expected, WarnOnly: want.WarnOnly}
		if ok {
			mm.Actual = bytes.Clone(got)
		}
		out = append(out, mm)
	}
	return out, nil
}

// Fatal returns the mismatches that are not warn-only.
func Fatal(mms []Mismatch) []Mismatch {
	var out []Mismatch
	for _, mm := range mms {
		if !mm.WarnOnly {
			out = append(out, mm)
		}
	}
	return out
}

// Summary is a one-line list of mismatching PCRs, e.g. "PCRs 4, 9".
func Summary(mms []Mismatch) string {
	parts := make([]string, len(mms))
	for i, mm := range mms {
		parts[i] = strconv.FormatUint(uint64(mm.PCR), 10)
	}
	if len(parts) == 1 {
		return "PCR " + parts[0]
	}
	return "PCRs " + strings.Join(parts, ", ")
}
