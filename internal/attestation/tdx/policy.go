package tdx

import (
	"bytes"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

// ErrPolicy wraps every policy violation. Policy.Check returns it as a *PolicyError.
var ErrPolicy = errors.New("TDX quote violates the policy")

// ErrInvalidPolicy is returned for policies that cannot be used: nothing to accept, malformed values.
var ErrInvalidPolicy = errors.New("invalid TDX policy")

// HexBytes is a byte string written as hex in JSON.
type HexBytes []byte

// String returns the value as lower-case hex.
func (h HexBytes) String() string { return hex.EncodeToString(h) }

// MarshalJSON writes the value as a hex string.
func (h HexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// UnmarshalJSON reads a hex string.
func (h *HexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a hex string: %w", err)
	}
	raw, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("%q is not hex: %w", s, err)
	}
	*h = raw
	return nil
}

// Policy says which TDs and platforms a verifier accepts. It denies by default: without an accepted
// MRTD nothing is accepted, a TD in debug mode is never accepted, a migratable TD only with AllowMigratable,
// and a TD without SEPT_VE_DISABLE only where a paravisor runs the guest (azure-tdx). Optional fields that are
// empty are not checked; a field that is set must match. For a TD without a vTPM, MRTD covers only the
// firmware: the RTMRs, which the firmware extends with the boot loader, kernel, command line and initrd, are
// what pin the node image, so [Policy.ValidateForClusterWithoutVTPM] requires all four.
type Policy struct {
	// MRTD lists the accepted build-time measurements of the TD (its virtual firmware). Required.
	MRTD []HexBytes `json:"mrtd"`
	// RTMR0 to RTMR3 are the expected run-time measurement registers (firmware configuration, boot loader
	// and kernel, kernel command line and initrd, application), 48 bytes each. Optional, each.
	RTMR0 HexBytes `json:"rtmr0,omitempty"`
	RTMR1 HexBytes `json:"rtmr1,omitempty"`
	RTMR2 HexBytes `json:"rtmr2,omitempty"`
	RTMR3 HexBytes `json:"rtmr3,omitempty"`
	// MRSEAM lists the accepted TDX module measurements. Optional: without it, any TDX module signed as
	// Intel's TCB info requires and at an accepted TCB status is accepted.
	MRSEAM []HexBytes `json:"mrseam,omitempty"`
	// XFAM is the expected XFAM (8 bytes, as in the quote). Optional.
	XFAM HexBytes `json:"xfam,omitempty"`
	// TDAttributes are the expected TD attributes (8 bytes, as in the quote). Optional; the debug bits
	// are refused whatever this says, and so are MIGRATABLE (unless AllowMigratable) and a clear
	// SEPT_VE_DISABLE (outside a paravisor).
	TDAttributes HexBytes `json:"tdAttributes,omitempty"`
	// AllowMigratable accepts TDs with the MIGRATABLE attribute, which a migration TD of the host's choice
	// can move to another platform. Off by default.
	AllowMigratable bool `json:"allowMigratable,omitempty"`
	// AcceptedTCBStatuses lists the TCB statuses accepted; empty means UpToDate only. Revoked and
	// NotSupported cannot be accepted.
	AcceptedTCBStatuses []TCBStatus `json:"acceptedTCBStatuses,omitempty"`
	// MinTEETCBSVN is the minimum TEE TCB SVN (16 bytes), compared component by component. Optional.
	MinTEETCBSVN HexBytes `json:"minTEETCBSVN,omitempty"`
	// ReportData is the expected REPORT_DATA (64 bytes) for this verification, computed by the caller from
	// the nonce it chose (see ReportDataForNonce). It is not part of a configuration file; Check requires it.
	ReportData HexBytes `json:"reportData,omitempty"`
}

// MaxPolicySize bounds a serialized policy.
const MaxPolicySize = 1 << 20

// ParsePolicy reads a policy in JSON strictly (no unknown fields, no trailing data) and validates it.
func ParsePolicy(raw []byte) (*Policy, error) {
	if len(raw) > MaxPolicySize {
		return nil, fmt.Errorf("%w: %d bytes exceed the limit of %d", ErrInvalidPolicy, len(raw), MaxPolicySize)
	}
	var p Policy
	if err := strictjson.Decode(raw, &p, MaxPolicySize); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Clone returns a deep copy of p, so that later changes of p do not reach the copy.
func (p *Policy) Clone() *Policy {
	if p == nil {
		return nil
	}
	c := *p
	c.MRTD = cloneAll(p.MRTD)
	c.MRSEAM = cloneAll(p.MRSEAM)
	for _, f := range []*HexBytes{&c.RTMR0, &c.RTMR1, &c.RTMR2, &c.RTMR3, &c.XFAM, &c.TDAttributes, &c.MinTEETCBSVN, &c.ReportData} {
		*f = slices.Clone(*f)
	}
	c.AcceptedTCBStatuses = slices.Clone(p.AcceptedTCBStatuses)
	return &c
}

func cloneAll(list []HexBytes) []HexBytes {
	if list == nil {
		return nil
	}
	out := make([]HexBytes, len(list))
	for i, b := range list {
		out[i] = slices.Clone(b)
	}
	return out
}

// WithReportData returns a copy of p that expects reportData. A nil policy gives a policy with only
// ReportData set, which Check refuses.
func (p *Policy) WithReportData(reportData [ReportDataSize]byte) *Policy {
	var c Policy
	if p != nil {
		c = *p
	}
	c.ReportData = slices.Clone(reportData[:])
	return &c
}

// Validate checks that the policy can be used: at least one accepted MRTD, values of the right sizes,
// only acceptable TCB statuses. It does not require ReportData, which is set per verification. It lists
// every problem.
func (p *Policy) Validate() error {
	if p == nil {
		return fmt.Errorf("%w: no policy", ErrInvalidPolicy)
	}
	return joinProblems(p.problems())
}

// ValidateForCluster checks a policy that a cluster's validators use: valid as for Validate, and without
// ReportData, which a validator computes for every request from the verifier's nonce. It lists every
// problem.
func (p *Policy) ValidateForCluster() error {
	if p == nil {
		return fmt.Errorf("%w: no policy", ErrInvalidPolicy)
	}
	problems := p.problems()
	if len(p.ReportData) != 0 {
		problems = append(problems, "reportData is set, but a validator computes it for every request from the nonce; remove it")
	}
	return joinProblems(problems)
}

// ValidateForClusterWithoutVTPM checks the policy of a variant without a vTPM (qemu-tdx): valid as for
// ValidateForCluster, and with RTMR0 to RTMR3 set. Such a TD has no other measurement of what it booted:
// MRTD is the public firmware, which boots any kernel, so a policy without the RTMRs accepts any image. A set
// tdAttributes must have SEPT_VE_DISABLE, which such a TD needs. It lists every problem.
func (p *Policy) ValidateForClusterWithoutVTPM() error {
	if p == nil {
		return fmt.Errorf("%w: no policy", ErrInvalidPolicy)
	}
	problems := p.problems()
	if len(p.ReportData) != 0 {
		problems = append(problems, "reportData is set, but a validator computes it for every request from the nonce; remove it")
	}
	var missing []string
	for i, r := range p.rtmrs() {
		if len(r) == 0 {
			missing = append(missing, fmt.Sprintf("rtmr%d", i))
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("%s not set; without a vTPM the RTMRs are the only measurement of the boot loader, kernel, command line and initrd (MRTD is the firmware alone, which boots any kernel), so a policy without them accepts any image: set rtmr0 to rtmr3 to the node image's values", strings.Join(missing, ", ")))
	}
	if len(p.TDAttributes) == 8 && p.TDAttributes[tdAttributeSEPTVEDisableByte]&tdAttributeSEPTVEDisable == 0 {
		problems = append(problems, fmt.Sprintf("tdAttributes %s has SEPT_VE_DISABLE clear; a TD without a paravisor must run with it", p.TDAttributes))
	}
	return joinProblems(problems)
}

// InvalidPolicyError lists every problem of a policy. It matches ErrInvalidPolicy with errors.Is.
type InvalidPolicyError struct {
	// Problems describe what is wrong, one each.
	Problems []string
}

func (e *InvalidPolicyError) Error() string {
	return ErrInvalidPolicy.Error() + ": " + strings.Join(e.Problems, "; ")
}

// Unwrap returns ErrInvalidPolicy.
func (e *InvalidPolicyError) Unwrap() error { return ErrInvalidPolicy }

func joinProblems(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return &InvalidPolicyError{Problems: problems}
}

// problems lists what is wrong with the policy, in field order.
func (p *Policy) problems() []string {
	var out []string
	if len(p.MRTD) == 0 {
		out = append(out, "no accepted MRTD configured, so no TD can be accepted; add the MRTD of the node image")
	}
	size := func(b HexBytes, n int, what string, optional bool) {
		if optional && len(b) == 0 {
			return
		}
		if len(b) != n {
			out = append(out, fmt.Sprintf("%s has %d bytes, want %d", what, len(b), n))
		}
	}
	for i, m := range p.MRTD {
		size(m, 48, fmt.Sprintf("mrtd[%d]", i), false)
	}
	for i, r := range p.rtmrs() {
		size(r, 48, fmt.Sprintf("rtmr%d", i), true)
	}
	for i, m := range p.MRSEAM {
		size(m, 48, fmt.Sprintf("mrseam[%d]", i), false)
	}
	size(p.XFAM, 8, "xfam", true)
	size(p.TDAttributes, 8, "tdAttributes", true)
	if len(p.TDAttributes) == 8 && p.TDAttributes[0]&tdAttributesTUD != 0 {
		out = append(out, fmt.Sprintf("tdAttributes %s has debug bits set; a TD in debug mode is never accepted", p.TDAttributes))
	}
	if len(p.TDAttributes) == 8 && p.TDAttributes[tdAttributeMigratableByte]&tdAttributeMigratable != 0 && !p.AllowMigratable {
		out = append(out, fmt.Sprintf("tdAttributes %s has MIGRATABLE set, but allowMigratable is false", p.TDAttributes))
	}
	size(p.MinTEETCBSVN, 16, "minTEETCBSVN", true)
	size(p.ReportData, ReportDataSize, "reportData", true)
	for _, s := range p.AcceptedTCBStatuses {
		switch {
		case s == TCBStatusRevoked || s == TCBStatusNotSupported:
			out = append(out, fmt.Sprintf("TCB status %s cannot be accepted", s))
		case !s.known():
			out = append(out, fmt.Sprintf("%q is not a TCB status (known: %s)", s, joinStatuses(acceptableStatuses)))
		}
	}
	return out
}

// acceptableStatuses are the TCB statuses a policy may accept.
var acceptableStatuses = []TCBStatus{
	TCBStatusUpToDate, TCBStatusSWHardeningNeeded, TCBStatusConfigurationNeeded,
	TCBStatusConfigurationAndSWHardeningNeeded, TCBStatusOutOfDate, TCBStatusOutOfDateConfigurationNeeded,
}

func (p *Policy) rtmrs() [4]HexBytes { return [4]HexBytes{p.RTMR0, p.RTMR1, p.RTMR2, p.RTMR3} }

// acceptedStatuses returns the accepted TCB statuses, UpToDate only by default.
func (p *Policy) acceptedStatuses() []TCBStatus {
	if len(p.AcceptedTCBStatuses) == 0 {
		return []TCBStatus{TCBStatusUpToDate}
	}
	return p.AcceptedTCBStatuses
}

// PolicyError lists every way a verified quote violates a policy.
type PolicyError struct {
	Violations []string
}

func (e *PolicyError) Error() string {
	return "TDX quote: " + strings.Join(e.Violations, "; ")
}

// Unwrap returns ErrPolicy.
func (e *PolicyError) Unwrap() error { return ErrPolicy }

// Check checks a verified quote against the policy. It reports every violation at once. The policy must
// be valid and hold the expected ReportData. The TD must run with SEPT_VE_DISABLE.
func (p *Policy) Check(v *VerifiedQuote) error { return p.check(v, true) }

// checkUnderParavisor is Check for a TD whose guest runs under a paravisor (azure-tdx): the paravisor, as
// the TD's L1, handles EPT violations, and such TDs run with SEPT_VE_DISABLE clear.
func (p *Policy) checkUnderParavisor(v *VerifiedQuote) error { return p.check(v, false) }

func (p *Policy) check(v *VerifiedQuote, requireSEPTVEDisable bool) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if len(p.ReportData) != ReportDataSize {
		return fmt.Errorf("%w: no expected REPORT_DATA: without it the quote is not bound to this verification's nonce", ErrInvalidPolicy)
	}
	if v == nil || v.Quote == nil {
		return errors.New("TDX quote: nothing verified")
	}
	b := &v.Quote.Body
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }

	if b.Debug() {
		add("TD attributes have DEBUG set")
	} else if b.TDAttributes[0]&tdAttributesTUD != 0 {
		add("TD attributes %x have TD-under-debug bits set", b.TDAttributes)
	}
	if b.Migratable() && !p.AllowMigratable {
		add("TD attributes %x have MIGRATABLE set: a migration TD of the host's choice could move this TD; set allowMigratable to accept it", b.TDAttributes)
	}
	if requireSEPTVEDisable && !b.SEPTVEDisable() {
		add("TD attributes %x have SEPT_VE_DISABLE clear: the host could inject #VE on the TD's private memory", b.TDAttributes)
	}
	if subtle.ConstantTimeCompare(b.ReportData[:], p.ReportData) != 1 {
		add("REPORT_DATA does not match the expected value (stale, replayed, or made for another nonce or key)")
	}
	if !slices.ContainsFunc(p.MRTD, func(m HexBytes) bool { return bytes.Equal(m, b.MRTD[:]) }) {
		add("MRTD %x is not among the %d accepted values", b.MRTD, len(p.MRTD))
	}
	for i, want := range p.rtmrs() {
		if len(want) != 0 && !bytes.Equal(want, b.RTMR[i][:]) {
			add("RTMR[%d] is %x, want %x", i, b.RTMR[i], []byte(want))
		}
	}
	if len(p.MRSEAM) != 0 && !slices.ContainsFunc(p.MRSEAM, func(m HexBytes) bool { return bytes.Equal(m, b.MRSEAM[:]) }) {
		add("MRSEAM %x is not among the %d accepted TDX modules", b.MRSEAM, len(p.MRSEAM))
	}
	if len(p.XFAM) != 0 && !bytes.Equal(p.XFAM, b.XFAM[:]) {
		add("XFAM is %x, want %x", b.XFAM, []byte(p.XFAM))
	}
	if len(p.TDAttributes) != 0 && !bytes.Equal(p.TDAttributes, b.TDAttributes[:]) {
		add("TD attributes are %x, want %x", b.TDAttributes, []byte(p.TDAttributes))
	}
	if len(p.MinTEETCBSVN) != 0 {
		checkMinSVN(add, "TEE_TCB_SVN", b.TEETCBSVN, p.MinTEETCBSVN)
		if v.Quote.BodyType == BodyTypeTDReport15 && b.TEETCBSVN2 != [16]byte{} {
			checkMinSVN(add, "TEE_TCB_SVN_2", b.TEETCBSVN2, p.MinTEETCBSVN)
		}
	}
	if st := v.TCB.Status; !slices.Contains(p.acceptedStatuses(), st) {
		msg := fmt.Sprintf("TCB status %s is not accepted (accepted: %s)", st, joinStatuses(p.acceptedStatuses()))
		if v.TCB.Reason != "" {
			msg += ": " + v.TCB.Reason
		}
		add("%s", msg)
	}
	if len(out) != 0 {
		return &PolicyError{Violations: out}
	}
	return nil
}

func checkMinSVN(add func(string, ...any), name string, have [16]byte, min []byte) {
	for i := range have {
		if have[i] < min[i] {
			add("%s[%d] is %d, the policy requires at least %d", name, i, have[i], min[i])
		}
	}
}

func joinStatuses(s []TCBStatus) string {
	parts := make([]string, len(s))
	for i, x := range s {
		parts[i] = string(x)
	}
	return strings.Join(parts, ", ")
}
