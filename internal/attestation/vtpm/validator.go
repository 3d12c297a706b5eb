package vtpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/measuredboot"
)

// Validator validates mini-vtpm evidence against pinned AK roots and a measurement policy.
type Validator struct {
	variant attestation.Variant
	roots   *x509.CertPool
	policy  measurements.M
	log     *slog.Logger
	now     func() time.Time
	// akCache remembers AK certificate chains that verified, keyed by their exact bytes.
	akCache akCache
}

// NewValidator returns a validator that trusts attestation keys certified by akRoots and accepts only PCR
// values matching policy. Both are required: no roots or an empty policy is an error, not "accept all".
func NewValidator(akRoots []*x509.Certificate, policy measurements.M, log *slog.Logger) (*Validator, error) {
	return NewValidatorFor(attestation.MiniVTPM, akRoots, policy, log)
}

// NewValidatorFor is [NewValidator] for evidence of variant, one whose attestation key the provider certifies
// ([ProviderCertified]); the policy must pin the image PCRs of the variant's measured-boot scheme
// ([ImageScheme]).
func NewValidatorFor(variant attestation.Variant, akRoots []*x509.Certificate, policy measurements.M, log *slog.Logger) (*Validator, error) {
	if !ProviderCertified(variant) {
		return nil, fmt.Errorf("%s evidence is not a TPM quote with a provider-certified attestation key", variant)
	}
	if len(akRoots) == 0 {
		return nil, errors.New("no attestation key root certificate configured; pin the provider's AK CA certificate")
	}
	if err := policy.ValidateScheme(ImageScheme(variant)); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool := x509.NewCertPool()
	for _, r := range akRoots {
		pool.AddCert(r)
	}
	return &Validator{variant: variant, roots: pool, policy: policy, log: log, now: time.Now, akCache: akCache{entries: map[[32]byte]akCacheEntry{}}}, nil
}

// Variant returns the variant of the evidence the validator accepts.
func (v *Validator) Variant() attestation.Variant { return v.variant }

// Validate checks evidence for nonce and returns the user data it binds.
func (v *Validator) Validate(_ context.Context, evidence, nonce []byte) ([]byte, error) {
	if err := attestation.CheckNonce(nonce); err != nil {
		return nil, err
	}
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return nil, err
	}
	if doc.Variant != v.variant.Name {
		return nil, fmt.Errorf("evidence is of variant %q, this validator accepts %q", doc.Variant, v.variant.Name)
	}
	if doc.TPM == nil {
		return nil, errors.New("evidence has no TPM part")
	}
	ak, err := v.verifyAKCert(doc.TPM)
	if err != nil {
		return nil, err
	}
	if err := VerifyQuote(v.variant, doc.TPM, ak.PublicKey, nonce, doc.UserData, v.policy, v.log); err != nil {
		return nil, err
	}
	return doc.UserData, nil
}

// VerifyQuote verifies the TPM part of evidence whose attestation key ak the caller already trusts (through a
// certificate chain, or a hardware report that binds it). In this order it checks: exactly one quote, its
// signature by ak, its structure, that its qualifying data is attestation.BindingDigest(variant, nonce,
// userData), that it covers exactly the SHA-256 PCRs 0-23, that the PCR values in the evidence match the
// quoted digest, the event log against the quoted PCRs only, the event log's data against the variant's
// measurement scheme ([Scheme]), and the measurement policy (warn-only mismatches are logged; a failure
// lists every mismatching PCR with the events behind it, marking what the digests do not bind as
// unverified).
func VerifyQuote(variant attestation.Variant, ev *attestation.TPMEvidence, ak crypto.PublicKey, nonce, userData []byte, policy measurements.M, log *slog.Logger) error {
	if len(ev.Quotes) != 1 {
		return fmt.Errorf("evidence has %d quotes, want exactly 1 (SHA-256 bank)", len(ev.Quotes))
	}
	q := ev.Quotes[0]
	if err := VerifySignature(ak, q.Quote, q.Signature); err != nil {
		return fmt.Errorf("verifying quote: %w", err)
	}
	info, err := ParseQuote(q.Quote)
	if err != nil {
		return err
	}
	binding := attestation.BindingDigest(variant, nonce, userData)
	if subtle.ConstantTimeCompare(info.ExtraData, binding[:]) != 1 {
		return errors.New("quote is not bound to this nonce and user data (stale, replayed or made for another channel)")
	}
	want := quoteSelection.PCRs
	if len(info.Selection) != 1 || info.Selection[0].Hash != tpmAlgSHA256 || !slices.Equal(toInts(info.Selection[0].PCRs), want) {
		return fmt.Errorf("quote covers PCR selection %v, want SHA-256 PCRs 0-23", info.Selection)
	}
	if len(q.PCRs) != len(want) {
		return fmt.Errorf("evidence carries %d PCR values, the quote covers %d", len(q.PCRs), len(want))
	}
	digest, err := PCRDigest(info.Selection[0].PCRs, q.PCRs)
	if err != nil {
		return fmt.Errorf("checking PCR values: %w", err)
	}
	if !bytes.Equal(digest, info.PCRDigest) {
		return errors.New("PCR values in the evidence do not match the quoted PCR digest")
	}
	events, err := verifyEventLog(ev.EventLog, q.PCRs, Scheme(variant), variant.Name == attestation.MiniVTPM.Name)
	if err != nil {
		return err
	}
	if err := policy.ValidateScheme(ImageScheme(variant)); err != nil {
		return err
	}
	mms, err := policy.Check(q.PCRs)
	if err != nil {
		return err
	}
	for i := range mms {
		mms[i].Events = describeEvents(events, mms[i].PCR)
		if mms[i].WarnOnly && log != nil {
			log.Warn("PCR does not match the policy (warn only)", "variant", variant.Name, "pcr", mms[i].PCR, "expected", mms[i].Expected.String(), "actual", fmt.Sprintf("%x", mms[i].Actual))
		}
	}
	if len(measurements.Fatal(mms)) > 0 {
		return &measurements.Error{Mismatches: mms}
	}
	return nil
}

func (v *Validator) verifyAKCert(ev *attestation.TPMEvidence) (*x509.Certificate, error) {
	key := akCacheKey(ev)
	now := v.now()
	if c, ok := v.akCache.get(key); ok {
		// The same bytes verified before against the same roots; only time can change the outcome.
		if now.Before(c.notBefore) || now.After(c.notAfter) {
			return nil, fmt.Errorf("attestation key certificate (subject %q) is not trusted: x509: certificate has expired or is not yet valid: current time %s is outside the chain's validity %s to %s",
				c.cert.Subject.CommonName, now.UTC().Format(time.RFC3339), c.notBefore.UTC().Format(time.RFC3339), c.notAfter.UTC().Format(time.RFC3339))
		}
		return c.cert, nil
	}
	cert, chain, err := v.verifyAKChain(ev, now)
	if err != nil {
		return nil, err
	}
	entry := akCacheEntry{cert: cert, notBefore: cert.NotBefore, notAfter: cert.NotAfter}
	for _, c := range chain {
		if c.NotBefore.After(entry.notBefore) {
			entry.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(entry.notAfter) {
			entry.notAfter = c.NotAfter
		}
	}
	v.akCache.put(key, entry)
	return cert, nil
}

func (v *Validator) verifyAKChain(ev *attestation.TPMEvidence, now time.Time) (*x509.Certificate, []*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(ev.AKCert)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing attestation key certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for i, der := range ev.AKIntermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("parsing intermediate certificate %d: %w", i, err)
		}
		inter.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("attestation key certificate (subject %q, issuer %q) is not trusted: %w", cert.Subject.CommonName, cert.Issuer.CommonName, err)
	}
	if !slices.ContainsFunc(cert.UnknownExtKeyUsage, OIDAKCertificate.Equal) {
		return nil, nil, fmt.Errorf("certificate %q is not an attestation key certificate (missing extended key usage %v)", cert.Subject.CommonName, OIDAKCertificate)
	}
	return cert, chains[0], nil
}

// ProviderCertified tells whether the attestation key of variant's TPM is certified by the provider (after
// credential activation against the TPM's endorsement key certificate) rather than bound by a hardware
// report: mini-vtpm and qemu-vtpm.
func ProviderCertified(variant attestation.Variant) bool {
	return variant.Name == attestation.MiniVTPM.Name || variant.Name == attestation.QEMUVTPM.Name
}

// ImageScheme is the measured-boot scheme whose image PCRs a policy for variant's nodes must enforce: the
// UEFI scheme for qemu-vtpm (PCRs 4, 11, 12, 13), the mini scheme (PCRs 4 and 8) for the others.
func ImageScheme(variant attestation.Variant) measurements.Scheme {
	if variant.Name == attestation.QEMUVTPM.Name {
		return measurements.UEFIScheme
	}
	return measurements.MiniScheme
}

// BootPCRs are the PCRs that describe how a node of variant booted, which every node of a cluster shares:
// for mini-vtpm the mini firmware's (measuredboot.BootPCRs); for qemu-vtpm the UEFI firmware's (0, 1, 2, 3,
// 5, 7) and the image's (ImageScheme). A node pins its own values of these to trust its peers.
func BootPCRs(variant attestation.Variant) []uint32 {
	if variant.Name == attestation.QEMUVTPM.Name {
		return append([]uint32{0, 1, 2, 3, 5, 7}, measurements.UEFIScheme.ImagePCRs...)
	}
	return slices.Clone(measuredboot.BootPCRs)
}

// Scheme is the measurement scheme whose events the vTPM of variant logs: the mini firmware's for
// mini-vtpm (every event's type and data bound), the TCG PC Client firmware profile's for the UEFI firmware
// of qemu-vtpm and the cloud vTPMs (the data of separators, versions and actions bound, nothing else).
func Scheme(variant attestation.Variant) eventlog.Scheme {
	if variant.Name == attestation.MiniVTPM.Name {
		return measuredboot.Scheme
	}
	return eventlog.TCGScheme
}

// verifyEventLog parses the log, checks that, for every quoted PCR the log extends, replaying the log gives
// the quoted value, and checks the events' data against scheme (eventlog.CheckData). With complete (the mini
// firmware and the bootstrapper log every measurement they make) every quoted PCR must be what the log
// replays to, its reset value where the log has no event, so that a log with events removed (or none) is
// refused. It returns only events of quoted PCRs; events of other PCRs are not trusted.
func verifyEventLog(raw []byte, quoted map[uint32][]byte, scheme eventlog.Scheme, complete bool) ([]eventlog.Event, error) {
	var events []eventlog.Event
	if len(raw) > 0 {
		var err error
		if events, err = eventlog.Parse(raw); err != nil {
			return nil, fmt.Errorf("parsing event log: %w", err)
		}
		if err := eventlog.CheckData(events, scheme); err != nil {
			return nil, err
		}
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
	if complete {
		for _, idx := range slices.Sorted(maps.Keys(quoted)) {
			if _, ok := replayed[idx]; !ok {
				if reset := eventlog.ResetValue(idx); !bytes.Equal(reset[:], quoted[idx]) {
					return nil, fmt.Errorf("event log does not explain quoted PCR %d: it logs no event for it, but the quote has %x (measurements were made without being logged, or events were removed from the log)", idx, quoted[idx])
				}
			}
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
			out = append(out, fmt.Sprintf("event %d %s", e.Seq, e.Explain()))
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

// akCacheSize bounds the AK certificate cache; a cluster has one AK per node.
const akCacheSize = 4096

type akCacheEntry struct {
	cert                *x509.Certificate
	notBefore, notAfter time.Time // intersection of the chain's validity periods
}

type akCache struct {
	mu      sync.Mutex
	entries map[[32]byte]akCacheEntry
}

func (c *akCache) get(key [32]byte) (akCacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	return e, ok
}

func (c *akCache) put(key [32]byte, e akCacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= akCacheSize {
		clear(c.entries)
	}
	c.entries[key] = e
}

// akCacheKey hashes the AK certificate and its intermediates, length-prefixed.
func akCacheKey(ev *attestation.TPMEvidence) [32]byte {
	h := sha256.New()
	for _, der := range append([][]byte{ev.AKCert}, ev.AKIntermediates...) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(der)))
		h.Write(n[:])
		h.Write(der)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
