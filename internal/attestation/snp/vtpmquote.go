package snp

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// The TPM part of vTPM-combined evidence: one quote of the SHA-256 bank, PCRs 0-23, signed by an attestation
// key that the hardware report binds. The same checks live in package tdx; both follow the mini-vtpm
// validator, except that the attestation key is trusted through the hardware report instead of a certificate.

// tpmAlgSHA256 is TPM_ALG_SHA256.
const tpmAlgSHA256 = 0x000b

// parseAttestationKey parses the attestation key of TPM evidence: a DER SubjectPublicKeyInfo, in its
// canonical encoding (the binding commits to the key's encoding), of an ECDSA P-256 or P-384 key or an RSA
// key of 2048 to 4096 bits.
func parseAttestationKey(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, errors.New("the TPM part has no attestation key (akPublic)")
	}
	key, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the attestation key: %w", err)
	}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("attestation key on curve %s, want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 4096 {
			return nil, fmt.Errorf("RSA attestation key of %d bits, want 2048 to 4096", n)
		}
	default:
		return nil, fmt.Errorf("attestation key of type %T, want ECDSA or RSA", key)
	}
	again, err := x509.MarshalPKIXPublicKey(key)
	if err != nil || !bytes.Equal(again, der) {
		return nil, errors.New("the attestation key is not in canonical DER encoding")
	}
	return key, nil
}

// verifyVTPMQuote verifies the TPM part of evidence whose attestation key ak a verified hardware report
// binds. In this order it checks: exactly one quote, its signature by ak, its structure, that its qualifying
// data is attestation.BindingDigest(variant, nonce, userData), that it covers exactly the SHA-256 PCRs 0-23,
// that the PCR values in the evidence match the quoted digest, the event log against the quoted PCRs, and
// the measurement policy. Warn-only mismatches are logged.
func verifyVTPMQuote(variant attestation.Variant, ev *attestation.TPMEvidence, ak crypto.PublicKey, nonce, userData []byte, policy measurements.M, log *slog.Logger) error {
	if len(ev.Quotes) != 1 {
		return fmt.Errorf("vTPM: evidence has %d quotes, want exactly 1 (SHA-256 bank)", len(ev.Quotes))
	}
	q := ev.Quotes[0]
	if err := vtpm.VerifySignature(ak, q.Quote, q.Signature); err != nil {
		return fmt.Errorf("vTPM quote (attestation key bound by the hardware report): %w", err)
	}
	info, err := vtpm.ParseQuote(q.Quote)
	if err != nil {
		return fmt.Errorf("vTPM: %w", err)
	}
	binding := attestation.BindingDigest(variant, nonce, userData)
	if subtle.ConstantTimeCompare(info.ExtraData, binding[:]) != 1 {
		return errors.New("vTPM quote is not bound to this nonce and user data (stale, replayed or made for another channel)")
	}
	if len(info.Selection) != 1 || info.Selection[0].Hash != tpmAlgSHA256 || !isFullSelection(info.Selection[0].PCRs) {
		return fmt.Errorf("vTPM quote covers PCR selection %v, want SHA-256 PCRs 0-23", info.Selection)
	}
	if len(q.PCRs) != measurements.NumPCRs {
		return fmt.Errorf("vTPM: evidence carries %d PCR values, the quote covers %d", len(q.PCRs), measurements.NumPCRs)
	}
	digest, err := vtpm.PCRDigest(info.Selection[0].PCRs, q.PCRs)
	if err != nil {
		return fmt.Errorf("vTPM: checking PCR values: %w", err)
	}
	if !bytes.Equal(digest, info.PCRDigest) {
		return errors.New("vTPM: PCR values in the evidence do not match the quoted PCR digest")
	}
	events, err := verifyEventLog(ev.EventLog, q.PCRs)
	if err != nil {
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

func isFullSelection(pcrs []uint32) bool {
	if len(pcrs) != measurements.NumPCRs {
		return false
	}
	for i, p := range pcrs {
		if p != uint32(i) {
			return false
		}
	}
	return true
}

// verifyEventLog parses the log and checks that replaying it gives the quoted value of every PCR it extends.
// It returns the events of quoted PCRs only.
func verifyEventLog(raw []byte, quoted map[uint32][]byte) ([]eventlog.Event, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	events, err := eventlog.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("vTPM: parsing event log: %w", err)
	}
	replayed := eventlog.Replay(events)
	for _, idx := range slices.Sorted(maps.Keys(replayed)) {
		val, ok := quoted[idx]
		if !ok {
			continue
		}
		if got := replayed[idx]; !bytes.Equal(got[:], val) {
			return nil, fmt.Errorf("vTPM: event log does not match quoted PCR %d: replay gives %x, quote has %x (measurements were made without being logged, or the log was altered)", idx, got, val)
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
