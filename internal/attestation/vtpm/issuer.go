// Package vtpm issues and validates TPM 2.0 evidence: one quote over all 24 SHA-256 PCRs, signed by an
// attestation key (AK) whose certificate chains to a root the verifier pins, plus the TCG event log that
// explains the PCR values.
//
// The quote's qualifying data is attestation.BindingDigest of the verifier's nonce and the caller's user data,
// so nonce, user data and PCR values are bound in one signed statement. The validator verifies, in this order:
// the AK certificate chain, the quote signature, the quote structure, the binding, the PCR selection (exactly
// PCRs 0-23 of the SHA-256 bank), the PCR digest, the event log against the quoted PCRs, the event log's data
// against the variant's measurement scheme ([Scheme]), and finally the measurement policy.
//
// The replay binds only each event's digest. For mini-vtpm the scheme is the mini firmware's
// (measuredboot.Scheme): every event's digest is the hash of its data and the data decides the type, and the
// log must explain every quoted PCR, so an altered, removed or retyped event is refused. For the cloud vTPMs
// it is the TCG firmware profile's: separators, versions and actions are checked, and everything else is
// shown as unverified in mismatch explanations ([eventlog.Event.Explain]).
package vtpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
)

// OIDAKCertificate is the extended key usage of TPM attestation key certificates (tcg-kp-AIKCertificate).
var OIDAKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 3}

// KeyAlgorithm selects the attestation key type.
type KeyAlgorithm int

// Attestation key algorithms.
const (
	ECC KeyAlgorithm = iota // NIST P-256, ECDSA-SHA256
	RSA                     // RSA-2048, RSASSA-SHA256
)

func (a KeyAlgorithm) String() string {
	if a == RSA {
		return "RSA-2048"
	}
	return "ECC-P256"
}

// CreateAK creates (or re-creates: the template is deterministic) the TPM's restricted signing key in the
// owner hierarchy. The caller must Close it.
func CreateAK(rw io.ReadWriter, alg KeyAlgorithm) (*client.Key, error) {
	var (
		ak  *client.Key
		err error
	)
	switch alg {
	case ECC:
		ak, err = client.AttestationKeyECC(rw)
	case RSA:
		ak, err = client.AttestationKeyRSA(rw)
	default:
		return nil, fmt.Errorf("unknown attestation key algorithm %d", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s attestation key: %w", alg, err)
	}
	return ak, nil
}

// quoteSelection is the PCR selection every quote of this variant covers.
var quoteSelection = client.FullPcrSel(tpm2.AlgSHA256)

// Issuer produces mini-vtpm evidence from a TPM. It is safe for concurrent use; TPM commands are serialized.
type Issuer struct {
	mu       sync.Mutex
	rw       io.ReadWriter
	ak       *client.Key
	pcrs     map[uint32][]byte // last PCR values read
	runtime  []eventlog.Event  // measurements made after boot, through Measure
	akCert   []byte
	eventLog func() ([]byte, error)
	variant  attestation.Variant
}

// NewIssuer loads the attestation key of the TPM behind rw and checks that akCertDER certifies it.
// eventLog returns the current TCG event log; it may be nil when the platform keeps none.
func NewIssuer(rw io.ReadWriter, alg KeyAlgorithm, akCertDER []byte, eventLog func() ([]byte, error)) (*Issuer, error) {
	return NewIssuerFor(attestation.MiniVTPM, rw, alg, akCertDER, eventLog)
}

// NewIssuerFor is [NewIssuer] for evidence of variant, one whose attestation key the provider certifies
// ([ProviderCertified]).
func NewIssuerFor(variant attestation.Variant, rw io.ReadWriter, alg KeyAlgorithm, akCertDER []byte, eventLog func() ([]byte, error)) (*Issuer, error) {
	if !ProviderCertified(variant) {
		return nil, fmt.Errorf("%s evidence is not a TPM quote with a provider-certified attestation key", variant)
	}
	cert, err := x509.ParseCertificate(akCertDER)
	if err != nil {
		return nil, fmt.Errorf("parsing attestation key certificate: %w", err)
	}
	ak, err := CreateAK(rw, alg)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(ak.PublicKey(), cert.PublicKey) {
		ak.Close()
		return nil, errors.New("the attestation key certificate does not certify this TPM's attestation key; enroll the TPM again")
	}
	return &Issuer{rw: rw, ak: ak, akCert: bytes.Clone(akCertDER), eventLog: eventLog, variant: variant}, nil
}

// Variant returns the variant of the evidence the issuer produces.
func (i *Issuer) Variant() attestation.Variant { return i.variant }

// Issue quotes all SHA-256 PCRs with qualifying data bound to nonce and userData.
func (i *Issuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	if err := attestation.CheckIssueArgs(nonce, userData); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	doc := &attestation.Document{
		Version:  attestation.DocumentVersion,
		Variant:  i.variant.Name,
		UserData: bytes.Clone(userData),
		TPM:      &attestation.TPMEvidence{AKCert: i.akCert},
	}
	log, err := i.log()
	if err != nil {
		return nil, err
	}
	doc.TPM.EventLog = log
	binding := attestation.BindingDigest(i.variant, nonce, userData)
	quote, sig, pcrs, err := i.quote(binding[:])
	if err != nil {
		return nil, err
	}
	doc.TPM.Quotes = []attestation.Quote{{Quote: quote, Signature: sig, PCRs: pcrs}}
	return doc.Marshal()
}

// Measure extends an event into a PCR after boot (for example the cluster ID into PCR 15) and records it, so
// that the event log of every later evidence explains the new value.
func (i *Issuer) Measure(pcr uint32, typ eventlog.EventType, data []byte) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	b := eventlog.NewBuilder()
	ev := b.Append(pcr, typ, data)
	if err := tpm2.PCRExtend(i.rw, tpmutil.Handle(pcr), tpm2.AlgSHA256, ev.Digest[:], ""); err != nil {
		return fmt.Errorf("extending PCR %d: %w", pcr, err)
	}
	i.runtime = append(i.runtime, ev)
	return nil
}

// log returns the boot event log followed by the runtime measurements.
func (i *Issuer) log() ([]byte, error) {
	var boot []byte
	if i.eventLog != nil {
		var err error
		if boot, err = i.eventLog(); err != nil {
			return nil, fmt.Errorf("reading event log: %w", err)
		}
	}
	i.mu.Lock()
	runtime := slices.Clone(i.runtime)
	i.mu.Unlock()
	if len(runtime) == 0 {
		return boot, nil
	}
	b := eventlog.NewBuilder()
	if len(boot) > 0 {
		events, err := eventlog.Parse(boot)
		if err != nil {
			return nil, fmt.Errorf("parsing the boot event log: %w", err)
		}
		for _, e := range events {
			b.AppendDigest(e.PCR, e.Type, e.Digest, e.Data)
		}
	}
	for _, e := range runtime {
		b.AppendDigest(e.PCR, e.Type, e.Digest, e.Data)
	}
	return b.Bytes(), nil
}

// quote signs the PCRs with qualifying data extra and returns the PCR values the quote covers. PCR values
// are cached between quotes: a quote's PCR digest tells whether the cached values are still current, and only
// when it does not are the PCRs read again (and, if they changed in between, quoted again).
func (i *Issuer) quote(extra []byte) (quote, sig []byte, pcrs map[uint32][]byte, err error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for range 3 {
		quote, sig, err = tpm2.QuoteRaw(i.rw, i.ak.Handle(), "", "", extra, quoteSelection, tpm2.AlgNull)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("quoting PCRs: %w", err)
		}
		info, err := ParseQuote(quote)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("the TPM returned a malformed quote: %w", err)
		}
		if i.pcrs != nil && pcrDigestMatches(info, i.pcrs) {
			return quote, sig, maps.Clone(i.pcrs), nil
		}
		read, err := client.ReadPCRs(i.rw, quoteSelection)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("reading PCRs: %w", err)
		}
		i.pcrs = read.GetPcrs()
		if pcrDigestMatches(info, i.pcrs) {
			return quote, sig, maps.Clone(i.pcrs), nil
		}
		// A PCR was extended between the quote and the read: quote again.
	}
	return nil, nil, nil, errors.New("PCRs keep changing while quoting; retry")
}

func pcrDigestMatches(info *QuoteInfo, pcrs map[uint32][]byte) bool {
	if len(info.Selection) != 1 {
		return false
	}
	d, err := PCRDigest(info.Selection[0].PCRs, pcrs)
	return err == nil && bytes.Equal(d, info.PCRDigest)
}

// Close releases the attestation key's TPM handle.
func (i *Issuer) Close() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.ak.Close()
}

func publicKeysEqual(a, b any) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
