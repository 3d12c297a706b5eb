package snp

import (
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

// HexBytes is a byte string that JSON encodes as hexadecimal.
type HexBytes []byte

// MarshalJSON encodes b as a hexadecimal JSON string.
func (b HexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(b)) }

// UnmarshalJSON decodes a hexadecimal JSON string.
func (b *HexBytes) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("want a hexadecimal string: %w", err)
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("invalid hexadecimal string: %w", err)
	}
	*b = v
	return nil
}

func (b HexBytes) String() string { return hex.EncodeToString(b) }

// Policy says which verified reports are acceptable. Every check is explicit, and a zero Policy denies
// everything: it has no REPORT_DATA, no accepted measurement and no accepted product. The Allow* fields
// weaken the policy and default to false.
type Policy struct {
	// ReportData is the expected REPORT_DATA (64 bytes), computed by the caller for each request with
	// [ReportDataForAttestationKey] or [ReportDataForNonce]. It is compared in constant time. Required.
	ReportData HexBytes `json:"reportData,omitempty"`
	// Measurements are the accepted launch measurements (48 bytes each). At least one is required.
	Measurements []HexBytes `json:"measurements"`
	// MinimumTCB maps each accepted product to its minimum TCB: a report from a product without an entry is
	// rejected. Both the REPORTED_TCB (the TCB the endorsement key was derived for) and the COMMITTED_TCB
	// (the rollback floor of the firmware) must meet it component by component. The SNP firmware and
	// microcode minimums must not be zero.
	MinimumTCB map[Product]TCB `json:"minimumTCB"`
	// MinimumFirmware, if not empty, maps each product of MinimumTCB to the lowest accepted SEV-SNP firmware
	// version ("major.minor.build", compared numerically). Both the version the report says the platform
	// runs (CURRENT_MAJOR/MINOR/BUILD) and the version it has committed (COMMITTED_*, the floor it can be
	// rolled back to) must meet it. A report whose firmware leaves these fields zero fails it. If set, it
	// needs an entry for every product of MinimumTCB, so that no accepted product goes unchecked.
	MinimumFirmware map[Product]FirmwareVersion `json:"minimumFirmware,omitempty"`
	// HostData, if set, is the required HOST_DATA (32 bytes): data the host supplied when it launched the
	// guest, which the guest cannot change. It is compared in constant time.
	HostData HexBytes `json:"hostData,omitempty"`
	// VMPL is the required VMPL of the report; 0 is the guest's most privileged level.
	VMPL uint32 `json:"vmpl"`
	// MinimumReportVersion is the lowest accepted report version; 0 means 2, the lowest this package
	// parses.
	MinimumReportVersion uint32 `json:"minimumReportVersion,omitempty"`
	// AllowDebug accepts guests whose policy allows debugging, so that the host can read and write their
	// memory. Never set it outside development and recorded test vectors.
	AllowDebug bool `json:"allowDebug,omitempty"`
	// AllowMigrationAgent accepts guests whose policy allows a migration agent.
	AllowMigrationAgent bool `json:"allowMigrationAgent,omitempty"`
	// AllowSMT accepts reports from platforms with simultaneous multithreading enabled (PLATFORM_INFO
	// SMT_EN). Without it, the platform must have SMT disabled.
	AllowSMT bool `json:"allowSMT,omitempty"`
	// AllowVLEK accepts reports signed by a VLEK (a key AMD provisions to a cloud provider) besides those
	// signed by a VCEK.
	AllowVLEK bool `json:"allowVLEK,omitempty"`
	// AllowMissingCRL accepts reports whose chain could not be checked against a current CRL of the
	// product's ARK. Revoked certificates are rejected regardless.
	AllowMissingCRL bool `json:"allowMissingCRL,omitempty"`
	// IDKeyDigests, if not empty, are the accepted ID_KEY_DIGEST values (SHA-384 of the ID key that signed
	// the guest's ID block, 48 bytes each); the guest must have been launched with an ID block.
	IDKeyDigests []HexBytes `json:"idKeyDigests,omitempty"`
	// AuthorKeyDigests, if not empty, are the accepted AUTHOR_KEY_DIGEST values (48 bytes each); the ID
	// block must have been signed with an author key.
	AuthorKeyDigests []HexBytes `json:"authorKeyDigests,omitempty"`
}

// MaxPolicySize bounds a serialized policy.
const MaxPolicySize = 1 << 20

// ParsePolicy parses a JSON policy strictly (no unknown fields, no trailing data) and validates it.
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > MaxPolicySize {
		return nil, fmt.Errorf("%w: %d bytes exceed the limit of %d", ErrInvalidPolicy, len(data), MaxPolicySize)
	}
	var p Policy
	if err := strictjson.Decode(data, &p, MaxPolicySize); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks that the policy is complete and consistent. An incomplete policy is an error, never
// "accept all".
func (p *Policy) Validate() error {
	if p == nil {
		return fmt.Errorf("%w: no policy", ErrInvalidPolicy)
	}
	var problems []string
	if len(p.ReportData) != ReportDataSize {
		problems = append(problems, fmt.Sprintf("reportData has %d bytes, want %d (compute it with ReportDataForAttestationKey or ReportDataForNonce)", len(p.ReportData), ReportDataSize))
	}
	return joinProblems(append(problems, p.problems()...))
}

// ValidateForCluster checks a policy that a cluster's validators use: complete and consistent like
// [Policy.Validate], but without ReportData (a validator computes it for every request) and without
// AllowDebug (a debuggable guest's memory is open to the host; that setting is for test vectors only). It
// lists every problem.
func (p *Policy) ValidateForCluster() error {
	if p == nil {
		return fmt.Errorf("%w: no policy", ErrInvalidPolicy)
	}
	var problems []string
	if len(p.ReportData) != 0 {
		problems = append(problems, "reportData is set, but a validator computes it for every request from the nonce or attestation key; remove it")
	}
	if p.AllowDebug {
		problems = append(problems, "allowDebug is set: a guest whose policy allows debugging exposes its memory to the host; it is for test vectors only and never accepted in a cluster")
	}
	return joinProblems(append(problems, p.problems()...))
}

// WithReportData returns a copy of p that expects reportData.
func (p *Policy) WithReportData(reportData [ReportDataSize]byte) *Policy {
	var c Policy
	if p != nil {
		c = *p
	}
	c.ReportData = slices.Clone(reportData[:])
	return &c
}

// Clone returns a deep copy of p, so that later changes of p do not reach the copy.
func (p *Policy) Clone() *Policy {
	if p == nil {
		return nil
	}
	c := *p
	c.ReportData = slices.Clone(p.ReportData)
	c.Measurements = cloneAll(p.Measurements)
	c.IDKeyDigests = cloneAll(p.IDKeyDigests)
	c.AuthorKeyDigests = cloneAll(p.AuthorKeyDigests)
	c.MinimumTCB = maps.Clone(p.MinimumTCB)
	c.MinimumFirmware = maps.Clone(p.MinimumFirmware)
	c.HostData = slices.Clone(p.HostData)
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
	if len(problems) > 0 {
		slices.Sort(problems)
		return &InvalidPolicyError{Problems: problems}
	}
	return nil
}

// problems lists what is wrong with every part of the policy but ReportData.
func (p *Policy) problems() []string {
	var problems []string
	if len(p.Measurements) == 0 {
		problems = append(problems, "no accepted launch measurement")
	}
	for i, m := range p.Measurements {
		if len(m) != MeasurementSize {
			problems = append(problems, fmt.Sprintf("measurement %d has %d bytes, want %d", i, len(m), MeasurementSize))
		}
	}
	if len(p.MinimumTCB) == 0 {
		problems = append(problems, "no accepted product (minimumTCB is empty)")
	}
	for _, prod := range sortedProducts(p.MinimumTCB) {
		t := p.MinimumTCB[prod]
		if !prod.valid() {
			problems = append(problems, fmt.Sprintf("minimumTCB for unknown product %d", int(prod)))
			continue
		}
		if t.SNP == 0 || t.Microcode == 0 {
			problems = append(problems, fmt.Sprintf("minimum TCB of %v (%v) accepts every SNP firmware or microcode; set real minimums", prod, t))
		}
		if prod != Turin && t.FMC != 0 {
			problems = append(problems, fmt.Sprintf("minimum TCB of %v sets fmc, which only Turin has", prod))
		}
	}
	for _, prod := range sortedProducts(p.MinimumFirmware) {
		v := p.MinimumFirmware[prod]
		switch _, accepted := p.MinimumTCB[prod]; {
		case !prod.valid():
			problems = append(problems, fmt.Sprintf("minimumFirmware for unknown product %d", int(prod)))
		case !accepted:
			problems = append(problems, fmt.Sprintf("minimumFirmware has an entry for %v, which minimumTCB does not accept; remove the entry or accept the product in minimumTCB", prod))
		case v.IsZero():
			problems = append(problems, fmt.Sprintf("minimumFirmware of %v is 0.0.0, which accepts every firmware; set the lowest accepted version (major.minor.build, for instance 1.55.21)", prod))
		}
	}
	if len(p.MinimumFirmware) > 0 {
		for _, prod := range sortedProducts(p.MinimumTCB) {
			if _, ok := p.MinimumFirmware[prod]; !ok && prod.valid() {
				problems = append(problems, fmt.Sprintf("minimumFirmware has no entry for %v, which minimumTCB accepts; add one (major.minor.build) or remove minimumFirmware", prod))
			}
		}
	}
	if p.HostData != nil && len(p.HostData) != HostDataSize {
		problems = append(problems, fmt.Sprintf("hostData has %d bytes, want %d (64 hex digits); remove it to accept any HOST_DATA", len(p.HostData), HostDataSize))
	}
	if p.VMPL > 3 {
		problems = append(problems, fmt.Sprintf("vmpl %d, valid levels are 0 to 3", p.VMPL))
	}
	if v := p.MinimumReportVersion; v != 0 && (v < MinReportVersion || v > MaxReportVersion) {
		problems = append(problems, fmt.Sprintf("minimumReportVersion %d, want 0 or %d to %d", v, MinReportVersion, MaxReportVersion))
	}
	for name, list := range map[string][]HexBytes{"idKeyDigests": p.IDKeyDigests, "authorKeyDigests": p.AuthorKeyDigests} {
		for i, d := range list {
			if len(d) != KeyDigestSize {
				problems = append(problems, fmt.Sprintf("%s[%d] has %d bytes, want %d", name, i, len(d), KeyDigestSize))
			}
		}
	}
	return problems
}

func sortedProducts[V any](m map[Product]V) []Product {
	out := make([]Product, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// PolicyError lists every way in which a verified report violates a policy. It matches ErrPolicy with
// errors.Is, and also ErrReportData or ErrCRLUnavailable if those checks failed.
type PolicyError struct {
	// Violations describe the failed checks, one each.
	Violations []string
	sentinels  []error
}

func (e *PolicyError) Error() string {
	return ErrPolicy.Error() + ": " + strings.Join(e.Violations, "; ")
}

// Unwrap returns the sentinel errors the violations match.
func (e *PolicyError) Unwrap() []error { return append([]error{ErrPolicy}, e.sentinels...) }

func (e *PolicyError) add(sentinel error, format string, args ...any) {
	e.Violations = append(e.Violations, fmt.Sprintf(format, args...))
	if sentinel != nil && !slices.Contains(e.sentinels, sentinel) {
		e.sentinels = append(e.sentinels, sentinel)
	}
}

// Check decides whether a verified report is acceptable. It first validates the policy (an invalid
// policy denies), then runs every check and reports all violations in one *PolicyError.
func (p *Policy) Check(v *VerifiedReport) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if v == nil || v.Report == nil {
		return fmt.Errorf("%w: no verified report", ErrPolicy)
	}
	r := v.Report
	e := &PolicyError{}

	if subtle.ConstantTimeCompare(r.ReportData[:], p.ReportData) != 1 {
		e.add(ErrReportData, "REPORT_DATA %x does not match the expected value (stale, replayed, or made for another nonce or key)", r.ReportData[:])
	}
	if !containsConstantTime(p.Measurements, r.Measurement[:]) {
		e.add(nil, "launch measurement %x is not one of the %d accepted measurements", r.Measurement[:], len(p.Measurements))
	}
	minTCB, productOK := p.MinimumTCB[v.Product]
	if !productOK {
		e.add(nil, "product %v is not accepted (accepted: %s)", v.Product, joinProducts(sortedProducts(p.MinimumTCB)))
	}
	minVersion := max(p.MinimumReportVersion, MinReportVersion)
	if r.Version < minVersion {
		e.add(nil, "report version %d below minimum %d", r.Version, minVersion)
	}
	if r.SigningKey == SignedByVLEK && !p.AllowVLEK {
		e.add(nil, "signed by a VLEK, but the policy accepts only VCEK-signed reports")
	}
	if r.Policy.Debug() && !p.AllowDebug {
		e.add(nil, "guest policy allows debugging (DEBUG bit set): the host can read and write the guest's memory")
	}
	if r.Policy.MigrateMA() && !p.AllowMigrationAgent {
		e.add(nil, "guest policy allows a migration agent (MIGRATE_MA bit set)")
	}
	if r.PlatformInfo.SMTEnabled() && !p.AllowSMT {
		e.add(nil, "SMT is enabled on the platform (PLATFORM_INFO SMT_EN), and the policy does not allow SMT")
	}
	if r.VMPL != p.VMPL {
		e.add(nil, "VMPL %d, want %d", r.VMPL, p.VMPL)
	}
	if p.HostData != nil && subtle.ConstantTimeCompare(r.HostData[:], p.HostData) != 1 {
		e.add(ErrHostData, "HOST_DATA %x does not match the policy's hostData %x (the host launched the guest with other host data)", r.HostData[:], []byte(p.HostData))
	}
	if minFW, ok := p.MinimumFirmware[v.Product]; ok {
		for _, f := range []struct {
			name, fields string
			got          FirmwareVersion
		}{{"current", "CURRENT", r.CurrentFirmware()}, {"committed", "COMMITTED", r.CommittedFirmware()}} {
			switch {
			case f.got.IsZero():
				e.add(ErrFirmware, "the report states no %s firmware version (%s_MAJOR, _MINOR and _BUILD are zero, as firmware that predates these fields leaves them), and the policy requires at least %v", f.name, f.fields, minFW)
			case f.got.Compare(minFW) < 0:
				e.add(ErrFirmware, "%s firmware %v below minimum %v", f.name, f.got, minFW)
			}
		}
	}
	if productOK {
		for _, t := range []struct {
			name string
			tcb  TCB
		}{{"reported", v.ReportedTCB}, {"committed", v.CommittedTCB}} {
			for _, low := range t.tcb.Below(v.Product, minTCB) {
				e.add(nil, "%s TCB %s", t.name, low)
			}
		}
	}
	if len(p.IDKeyDigests) > 0 {
		switch {
		case isZero(r.IDKeyDigest[:]):
			e.add(nil, "the guest was launched without an ID block, the policy requires one signed by an accepted ID key")
		case !containsConstantTime(p.IDKeyDigests, r.IDKeyDigest[:]):
			e.add(nil, "ID key digest %x is not one of the %d accepted digests", r.IDKeyDigest[:], len(p.IDKeyDigests))
		}
	}
	if len(p.AuthorKeyDigests) > 0 {
		switch {
		case !r.AuthorKeyEn:
			e.add(nil, "the guest's ID block has no author key, the policy requires an accepted one")
		case !containsConstantTime(p.AuthorKeyDigests, r.AuthorKeyDigest[:]):
			e.add(nil, "author key digest %x is not one of the %d accepted digests", r.AuthorKeyDigest[:], len(p.AuthorKeyDigests))
		}
	}
	if v.Revocation != CRLChecked && !p.AllowMissingCRL {
		detail := v.RevocationDetail
		if detail == "" {
			detail = v.Revocation.String()
		}
		e.add(ErrCRLUnavailable, "revocation not checked: %s (supply the CRL or set allowMissingCRL)", detail)
	}
	if len(e.Violations) > 0 {
		return e
	}
	return nil
}

// containsConstantTime reports whether list contains v, comparing every element in constant time.
func containsConstantTime(list []HexBytes, v []byte) bool {
	found := 0
	for _, x := range list {
		found |= subtle.ConstantTimeCompare(x, v)
	}
	return found == 1
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func joinProducts(ps []Product) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// Validate runs the three steps on raw evidence: it parses the report, verifies it with certs (see
// [ParseCertTable] and [ParseCertificates]) and checks it against the policy. It returns the verified
// report only if every step succeeded.
func Validate(v *Verifier, p *Policy, rawReport []byte, certs *Certificates) (*VerifiedReport, error) {
	if v == nil {
		return nil, errors.New("SNP: no verifier")
	}
	// Validate the policy first: an unusable policy should say so before any evidence is examined.
	if err := p.Validate(); err != nil {
		return nil, err
	}
	report, err := ParseReport(rawReport)
	if err != nil {
		return nil, err
	}
	verified, err := v.Verify(report, certs)
	if err != nil {
		return nil, err
	}
	if err := p.Check(verified); err != nil {
		return nil, err
	}
	return verified, nil
}
