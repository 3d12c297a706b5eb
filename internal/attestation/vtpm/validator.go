package vtpm

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

// Validator validates mini-vtpm evidence against pinned AK roots and a measurement policy.
type Validator struct {
	roots  *x509.CertPool
	policy measurements.M
	log    *slog.Logger
	now    func() time.Time
}

// NewValidator returns a validator that trusts attestation keys certified by akRoots and accepts only PCR
// values matching policy. Both are required: no roots or an empty policy is an error, not "accept all".
func NewValidator(akRoots []*x509.Certificate, policy measurements.M, log *slog.Logger) (*Validator, error) {
	if len(akRoots) == 0 {
		return nil, errors.New("no attestation key root certificate configured; pin the provider's AK CA certificate")
	}
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool := x509.NewCertPool()
	for _, r := range akRoots {
		pool.AddCert(r)
	}
	return &Validator{roots: pool, policy: policy, log: log, now: time.Now}, nil
}

// Variant returns attestation.MiniVTPM.
func (v *Validator) Variant() attestation.Variant { return attestation.MiniVTPM }

// Validate checks evidence for nonce and returns the user data it binds.
func (v *Validator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if err := attestation.CheckNonce(nonce); err != nil {
		return nil, err
	}
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return nil, err
	}
	if doc.Variant != attestation.MiniVTPM.Name {
		return nil, fmt.Errorf("evidence is of variant %q, this validator accepts %q", doc.Variant, attestation.MiniVTPM.Name)
	}
	if doc.TPM == nil {
		return nil, errors.New("evidence has no TPM part")
	}
	verified, err := v.verifyQuote(doc, nonce)
	if err != nil {
		return nil, err
	}
	events, err := verifyEventLog(doc.TPM.EventLog, verified)
	if err != nil {
		return nil, err
	}
	mms, err := v.policy.Check(verified)
	if err != nil {
		return nil, err
	}
	for i := range mms {
		mms[i].Events = describeEvents(events, mms[i].PCR)
	}
	for _, mm := range mms {
		if mm.WarnOnly {
			v.log.Warn("PCR does not match the policy (warn only)", "pcr", mm.PCR, "expected", mm.Expected.String(), "actual", fmt.Sprintf("%x", mm.Actual))
		}
	}
	if len(measurements.Fatal(mms)) > 0 {
		return nil, &measurements.Error{Mismatches: mms}
	}
	return doc.UserData, nil
}

// verifyQuote verifies the AK chain, the quote and its binding, and returns the PCR values the quote covers.
func (v *Validator) verifyQuote(doc *attestation.Document, nonce []byte) (map[uint32][]byte, error) {
	ak, err := v.verifyAKCert(doc.TPM)
	if err != nil {
		return nil, err
	}
	if len(doc.TPM.Quotes) != 1 {
		return nil, fmt.Errorf("evidence has %d quotes, want exactly 1 (SHA-256 bank)", len(doc.TPM.Quotes))
	}
	q := doc.TPM.Quotes[0]
	if err := VerifySignature(ak.PublicKey, q.Quote, q.Signature); err != nil {
		return nil, fmt.Errorf("verifying quote: %w", err)
	}
	info, err := ParseQuote(q.Quote)
	if err != nil {
		return nil, err
	}
	binding := attestation.BindingDigest(attestation.MiniVTPM, nonce, doc.UserData)
	if subtle.ConstantTimeCompare(info.ExtraData, binding[:]) != 1 {
		return nil, errors.New("quote is not bound to this nonce and user data (stale, replayed or made for another channel)")
	}
	want := quoteSelection.PCRs
	if len(info.Selection) != 1 || info.Selection[0].Hash != tpmAlgSHA256 || !slices.Equal(toInts(info.Selection[0].PCRs), want) {
		return nil, fmt.Errorf("quote covers PCR selection %v, want SHA-256 PCRs 0-23", info.Selection)
	}
	if len(q.PCRs) != len(want) {
		return nil, fmt.Errorf("evidence carries %d PCR values, the quote covers %d", len(q.PCRs), len(want))
	}
	digest, err := PCRDigest(info.Selection[0].PCRs, q.PCRs)
	if err != nil {
		return nil, fmt.Errorf("checking PCR values: %w", err)
	}
	if !bytes.Equal(digest, info.PCRDigest) {
		return nil, errors.New("PCR values in the evidence do not match the quoted PCR digest")
	}
	return q.PCRs, nil
}

func (v *Validator) verifyAKCert(ev *attestation.TPMEvidence) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(ev.AKCert)
	if err != nil {
		return nil, fmt.Errorf("parsing attestation key certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for i, der := range ev.AKIntermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing intermediate certificate %d: %w", i, err)
		}
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   v.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("attestation key certificate (subject %q, issuer %q) is not trusted: %w", cert.Subject.CommonName, cert.Issuer.CommonName, err)
	}
	if !slices.ContainsFunc(cert.UnknownExtKeyUsage, OIDAKCertificate.Equal) {
		return nil, fmt.Errorf("certificate %q is not an attestation key certificate (missing extended key usage %v)", cert.Subject.CommonName, OIDAKCertificate)
	}
	return cert, nil
}

// verifyEventLog parses the log and checks that, for every quoted PCR the log extends, replaying the log gives
// the quoted value. It returns only events of quoted PCRs; events of other PCRs are not trusted.
func verifyEventLog(raw []byte, quoted map[uint32][]byte) ([]eventlog.Event, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	events, err := eventlog.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing event log: %w", err)
	}
	replayed := eventlog.Replay(events)
	for _, idx := range slices.Sorted(maps.Keys(replayed)) {
		val, ok := quoted[idx]
		if !ok {
			continue
		}
		got := replayed[idx]
		if !bytes.Equal(got[:], val) {
			return nil, fmt.Errorf("event log does not match quoted PCR %d: replay gives %x, quote has %x (measurements were made without being logged, or the log was altered)", idx, got, val)
		}
	}
	return slices.DeleteFunc(events, func(e eventlog.Event) bool {
		_, ok := quoted[e.PCR]
		return !ok
	}), nil
}

func describeEvents(events []eventlog.Event, pcr uint32) []string {
	var out []string
	for _, e := range events {
		if e.PCR == pcr && e.Type != eventlog.NoAction {
			out = append(out, fmt.Sprintf("event %d %s: %s", e.Seq, e.Type, e.Description()))
		}
	}
	return out
}

func toInts(pcrs []uint32) []int {
	out := make([]int, len(pcrs))
	for i, p := range pcrs {
		out[i] = int(p)
	}
	return out
}
