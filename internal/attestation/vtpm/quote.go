package vtpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"
)

// TPM 2.0 constants used by the quote parser.
const (
	tpmGeneratedValue = 0xff544347 // TPM_GENERATED_VALUE, the magic of every TPM-made attestation
	tpmSTAttestQuote  = 0x8018     // TPM_ST_ATTEST_QUOTE
	tpmAlgSHA256      = 0x000B
	tpmAlgRSASSA      = 0x0014
	tpmAlgECDSA       = 0x0018
	maxPCRSelections  = 16
	maxSizeOfSelect   = 8 // bytes, enough for 64 PCRs
)

// PCRSelection is one bank of a TPML_PCR_SELECTION.
type PCRSelection struct {
	Hash uint16
	PCRs []uint32 // ascending
}

// QuoteInfo is a parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
type QuoteInfo struct {
	QualifiedSigner []byte
	ExtraData       []byte
	Clock           uint64
	ResetCount      uint32
	RestartCount    uint32
	Safe            bool
	FirmwareVersion uint64
	Selection       []PCRSelection
	PCRDigest       []byte
}

// reader is a bounds-checked big-endian reader over untrusted bytes.
type reader struct {
	buf []byte
	off int
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.buf)-r.off < n {
		r.err = fmt.Errorf("truncated at offset %d reading %s (%d bytes needed, %d left)", r.off, what, n, len(r.buf)-r.off)
		return nil
	}
	b := r.buf[r.off : r.off+n]
	r.off += n
	return b
}

func (r *reader) u8(what string) uint8 {
	b := r.take(1, what)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u16(what string) uint16 {
	b := r.take(2, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (r *reader) u32(what string) uint32 {
	b := r.take(4, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (r *reader) u64(what string) uint64 {
	b := r.take(8, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// tpm2b reads a TPM2B (16-bit size, then bytes) of at most maxSize bytes.
func (r *reader) tpm2b(what string, maxSize int) []byte {
	n := int(r.u16(what + " size"))
	if r.err == nil && n > maxSize {
		r.err = fmt.Errorf("%s of %d bytes exceeds %d", what, n, maxSize)
		return nil
	}
	return slices.Clone(r.take(n, what))
}

func (r *reader) finish() error {
	if r.err != nil {
		return r.err
	}
	if r.off != len(r.buf) {
		return fmt.Errorf("%d bytes of trailing data", len(r.buf)-r.off)
	}
	return nil
}

// ParseQuote parses a TPMS_ATTEST quote strictly: magic, type, every size, no trailing data. It does not
// verify anything; verify the signature over the raw bytes first.
func ParseQuote(raw []byte) (*QuoteInfo, error) {
	r := &reader{buf: raw}
	if magic := r.u32("magic"); r.err == nil && magic != tpmGeneratedValue {
		return nil, fmt.Errorf("parsing quote: magic %#x is not TPM_GENERATED_VALUE", magic)
	}
	if typ := r.u16("type"); r.err == nil && typ != tpmSTAttestQuote {
		return nil, fmt.Errorf("parsing quote: type %#x is not TPM_ST_ATTEST_QUOTE", typ)
	}
	q := &QuoteInfo{}
	q.QualifiedSigner = r.tpm2b("qualified signer", 2+64)
	q.ExtraData = r.tpm2b("extra data", 64)
	q.Clock = r.u64("clock")
	q.ResetCount = r.u32("reset count")
	q.RestartCount = r.u32("restart count")
	safe := r.u8("safe")
	q.Safe = safe == 1
	if r.err == nil && safe > 1 {
		return nil, fmt.Errorf("parsing quote: safe flag %d is not a boolean", safe)
	}
	q.FirmwareVersion = r.u64("firmware version")
	count := r.u32("PCR selection count")
	if r.err == nil && count > maxPCRSelections {
		return nil, fmt.Errorf("parsing quote: %d PCR selections exceed %d", count, maxPCRSelections)
	}
	for i := 0; r.err == nil && i < int(count); i++ {
		sel := PCRSelection{Hash: r.u16("PCR selection hash")}
		size := int(r.u8("PCR selection size"))
		if r.err == nil && size > maxSizeOfSelect {
			return nil, fmt.Errorf("parsing quote: PCR selection of %d bytes exceeds %d", size, maxSizeOfSelect)
		}
		bits := r.take(size, "PCR selection bitmap")
		for byteIdx, b := range bits {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					sel.PCRs = append(sel.PCRs, uint32(byteIdx*8+bit))
				}
			}
		}
		q.Selection = append(q.Selection, sel)
	}
	q.PCRDigest = r.tpm2b("PCR digest", 64)
	if err := r.finish(); err != nil {
		return nil, fmt.Errorf("parsing quote: %w", err)
	}
	return q, nil
}

// PCRDigest is the digest a quote over SHA-256 PCRs carries: SHA-256 of the PCR values concatenated in
// selection order.
func PCRDigest(pcrs []uint32, values map[uint32][]byte) ([]byte, error) {
	h := sha256.New()
	for _, idx := range pcrs {
		v, ok := values[idx]
		if !ok {
			return nil, fmt.Errorf("no value for quoted PCR %d", idx)
		}
		if len(v) != sha256.Size {
			return nil, fmt.Errorf("PCR %d value has %d bytes, want %d", idx, len(v), sha256.Size)
		}
		h.Write(v)
	}
	return h.Sum(nil), nil
}

// VerifySignature checks a TPMT_SIGNATURE over the raw quote with the attestation key. It accepts ECDSA and
// RSASSA (PKCS#1 v1.5) signatures with SHA-256 only.
func VerifySignature(pub crypto.PublicKey, quote, sig []byte) error {
	r := &reader{buf: sig}
	alg := r.u16("signature algorithm")
	hashAlg := r.u16("signature hash")
	if r.err != nil {
		return fmt.Errorf("parsing signature: %w", r.err)
	}
	if hashAlg != tpmAlgSHA256 {
		return fmt.Errorf("signature hash algorithm %#x is not SHA-256", hashAlg)
	}
	digest := sha256.Sum256(quote)
	switch alg {
	case tpmAlgECDSA:
		rb := r.tpm2b("ECDSA r", 66)
		sb := r.tpm2b("ECDSA s", 66)
		if err := r.finish(); err != nil {
			return fmt.Errorf("parsing signature: %w", err)
		}
		key, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("ECDSA signature but the attestation key is %T", pub)
		}
		if !ecdsa.Verify(key, digest[:], new(big.Int).SetBytes(rb), new(big.Int).SetBytes(sb)) {
			return errors.New("quote signature does not verify with the attestation key")
		}
	case tpmAlgRSASSA:
		s := r.tpm2b("RSA signature", 512)
		if err := r.finish(); err != nil {
			return fmt.Errorf("parsing signature: %w", err)
		}
		key, ok := pub.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("RSA signature but the attestation key is %T", pub)
		}
		if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, digest[:], s); err != nil {
			return errors.New("quote signature does not verify with the attestation key")
		}
	default:
		return fmt.Errorf("signature algorithm %#x is not supported (ECDSA or RSASSA)", alg)
	}
	return nil
}
