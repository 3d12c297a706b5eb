package tdx

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Quote format constants (Intel TDX DCAP Quote Generation Library and Quote Verification Library API,
// quote formats v4 and v5). All integers in a quote are little-endian.
const (
	// QuoteVersion4 is the TDX 1.0 quote format.
	QuoteVersion4 = 4
	// QuoteVersion5 adds a body descriptor (type and size) so that the body can be a TD report 1.0 or 1.5.
	QuoteVersion5 = 5

	// AttestationKeyTypeECDSAP256 is the only attestation key type of TDX quotes: ECDSA on NIST P-256 with
	// SHA-256.
	AttestationKeyTypeECDSAP256 = 2
	// TEETypeTDX is the TEE type of a TD quote (0x00000000 is SGX).
	TEETypeTDX = 0x81

	// BodyTypeTDReport10 is the v5 body type of a TD report 1.0 (TDX 1.0), the only body of a v4 quote.
	BodyTypeTDReport10 = 2
	// BodyTypeTDReport15 is the v5 body type of a TD report 1.5 (TDX 1.5): a 1.0 body followed by
	// TEE_TCB_SVN_2 and MRSERVICETD.
	BodyTypeTDReport15 = 3

	// MaxQuoteSize bounds the size of a quote. Genuine quotes are about 5 KiB; the PCK certificate chain is
	// most of it.
	MaxQuoteSize = 64 << 10

	headerSize           = 48
	tdReport10Size       = 584
	tdReport15Size       = tdReport10Size + 16 + 48
	enclaveReportSize    = 384
	ecdsaSignatureSize   = 64
	ecdsaP256KeySize     = 64
	certDataTypeQEReport = 6 // QE report certification data
	certDataTypePCKPEM   = 5 // PCK certificate chain, concatenated PEM
)

// intelQEVendorID is the QE vendor ID of Intel's quoting enclave (939A7233-F79C-4CA9-940A-0DB3957F0607).
var intelQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// ErrMalformedQuote wraps every error of ParseQuote.
var ErrMalformedQuote = errors.New("TDX quote: malformed")

// Quote is a parsed TDX quote. ParseQuote only checks its structure; nothing in it is trusted before
// Verify succeeded.
type Quote struct {
	Header Header
	// BodyType is BodyTypeTDReport10 or BodyTypeTDReport15 (v5 quotes only; always BodyTypeTDReport10 for v4).
	BodyType uint16
	// Body is the TD report of the quoted TD.
	Body TDReport
	// Signature is the ECDSA P-256 signature (r || s) by the attestation key over everything before the
	// signature data length: the header and the body (and, in v5, the body descriptor).
	Signature [ecdsaSignatureSize]byte
	// AttestationKey is the attestation key's public key (x || y, P-256), certified by the QE report.
	AttestationKey [ecdsaP256KeySize]byte
	// QEReport is the SGX report of the quoting enclave (QE), signed by the PCK.
	QEReport EnclaveReport
	// QEReportSignature is the ECDSA P-256 signature (r || s) by the PCK over the raw QE report.
	QEReportSignature [ecdsaSignatureSize]byte
	// QEAuthData is the QE authentication data; the QE report data binds it with the attestation key.
	QEAuthData []byte
	// PCKCertChain is the PCK certificate chain as concatenated PEM: PCK certificate, its issuing CA, root.
	PCKCertChain []byte

	signed      []byte // bytes the attestation key signed
	qeReportRaw []byte // bytes the PCK signed
}

// Header is the quote header.
type Header struct {
	Version            uint16
	AttestationKeyType uint16
	TEEType            uint32
	// Reserved holds two reserved 16-bit fields (QE and PCE SVN in older formats); verification ignores them.
	Reserved   [4]byte
	QEVendorID [16]byte
	// UserData is custom data of the quoting enclave (for Intel's QE, the first 16 bytes are a platform
	// identifier); it is not part of any policy.
	UserData [20]byte
}

// TDReport is the TD quote body: the TD's measurements and the TDX module identity.
type TDReport struct {
	// TEETCBSVN are the SVNs of the TDX module and the platform (TEE TCB SVN, 16 components).
	TEETCBSVN      [16]byte
	MRSEAM         [48]byte // measurement of the TDX module
	MRSignerSEAM   [48]byte // signer of the TDX module (zero for Intel's)
	SEAMAttributes [8]byte
	// TDAttributes are the TD's attributes (little-endian bit field); bits 0-7 (TUD) mark a TD under debug.
	TDAttributes  [8]byte
	XFAM          [8]byte // extended features available to the TD
	MRTD          [48]byte
	MRConfigID    [48]byte
	MROwner       [48]byte
	MROwnerConfig [48]byte
	RTMR          [4][48]byte
	ReportData    [64]byte
	// TEETCBSVN2 and MRServiceTD are present in TD report 1.5 bodies only (zero otherwise).
	TEETCBSVN2  [16]byte
	MRServiceTD [48]byte
}

// TD attribute bits (byte 0 of TDAttributes holds the TD-under-debug group; TDATTRIBUTES is little-endian,
// so bit n is bit n%8 of byte n/8).
const (
	tdAttributeDebug = 1 << 0
	tdAttributesTUD  = 0xff
	// SEPT_VE_DISABLE (bit 28): an EPT violation of the TD's private memory does not raise a #VE in the
	// guest. Without it, the host can make pages pending and have the guest's #VE handler accept them.
	tdAttributeSEPTVEDisableByte = 3
	tdAttributeSEPTVEDisable     = 1 << 4
	// MIGRATABLE (bit 29): the TD can be exported to another platform by a migration TD that the host
	// chooses, whose own measurement the quote does not show.
	tdAttributeMigratableByte = 3
	tdAttributeMigratable     = 1 << 5
)

// Debug reports whether the TD runs in debug mode (TDATTRIBUTES.DEBUG), in which the host can read and
// change the TD's memory and registers.
func (r *TDReport) Debug() bool { return r.TDAttributes[0]&tdAttributeDebug != 0 }

// SEPTVEDisable reports whether TDATTRIBUTES.SEPT_VE_DISABLE is set.
func (r *TDReport) SEPTVEDisable() bool {
	return r.TDAttributes[tdAttributeSEPTVEDisableByte]&tdAttributeSEPTVEDisable != 0
}

// Migratable reports whether TDATTRIBUTES.MIGRATABLE is set.
func (r *TDReport) Migratable() bool {
	return r.TDAttributes[tdAttributeMigratableByte]&tdAttributeMigratable != 0
}

// EnclaveReport is an SGX enclave report, here the report of the quoting enclave.
type EnclaveReport struct {
	CPUSVN     [16]byte
	MiscSelect uint32
	Attributes [16]byte
	MREnclave  [32]byte
	MRSigner   [32]byte
	ISVProdID  uint16
	ISVSVN     uint16
	ReportData [64]byte
}

// reader reads little-endian fields from untrusted bytes. The first error sticks; it names the part of
// the quote being read, the offset and what was missing.
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
		r.err = fmt.Errorf("%w: truncated: %s needs %d bytes at offset %d, %d left", ErrMalformedQuote, what, n, r.off, len(r.buf)-r.off)
		return nil
	}
	b := r.buf[r.off : r.off+n]
	r.off += n
	return b
}

func (r *reader) u16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *reader) into(dst []byte, what string) {
	if b := r.take(len(dst), what); b != nil {
		copy(dst, b)
	}
}

func (r *reader) rest() int { return len(r.buf) - r.off }

// exactly checks that a length field announces exactly the bytes that remain: fewer is truncation, more
// is trailing data.
func (r *reader) exactly(n uint32, what, container string) error {
	switch rest := int64(r.rest()); {
	case int64(n) > rest:
		return fmt.Errorf("%w: truncated: %s has length %d at offset %d, but only %d bytes are left", ErrMalformedQuote, what, n, r.off, rest)
	case int64(n) < rest:
		return fmt.Errorf("%w: %d trailing bytes after %s (%s has length %d at offset %d)", ErrMalformedQuote, rest-int64(n), container, what, n, r.off)
	}
	return nil
}

// ParseQuote parses a raw TDX quote of version 4 or 5 strictly: every length field must match the data,
// and truncated or trailing bytes are errors. It checks structure only; use Verify to check signatures,
// certificates and collateral. The quote keeps no reference to raw.
func ParseQuote(raw []byte) (*Quote, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformedQuote)
	}
	if len(raw) > MaxQuoteSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrMalformedQuote, len(raw), MaxQuoteSize)
	}
	raw = slices.Clone(raw)
	r := &reader{buf: raw}
	q := &Quote{}

	h := &q.Header
	h.Version = r.u16("header version")
	h.AttestationKeyType = r.u16("header attestation key type")
	h.TEEType = r.u32("header TEE type")
	r.into(h.Reserved[:], "header reserved fields")
	r.into(h.QEVendorID[:], "header QE vendor ID")
	r.into(h.UserData[:], "header user data")
	if r.err != nil {
		return nil, r.err
	}
	switch h.Version {
	case QuoteVersion4, QuoteVersion5:
	default:
		return nil, fmt.Errorf("%w: quote version %d is not supported (want %d or %d)", ErrMalformedQuote, h.Version, QuoteVersion4, QuoteVersion5)
	}
	if h.TEEType != TEETypeTDX {
		return nil, fmt.Errorf("%w: TEE type %#x is not TDX (%#x)", ErrMalformedQuote, h.TEEType, TEETypeTDX)
	}
	if h.AttestationKeyType != AttestationKeyTypeECDSAP256 {
		return nil, fmt.Errorf("%w: attestation key type %d is not supported (want %d, ECDSA P-256)", ErrMalformedQuote, h.AttestationKeyType, AttestationKeyTypeECDSAP256)
	}

	q.BodyType = BodyTypeTDReport10
	bodySize := tdReport10Size
	if h.Version == QuoteVersion5 {
		q.BodyType = r.u16("body type")
		size := r.u32("body size")
		if r.err != nil {
			return nil, r.err
		}
		switch q.BodyType {
		case BodyTypeTDReport10:
			bodySize = tdReport10Size
		case BodyTypeTDReport15:
			bodySize = tdReport15Size
		default:
			return nil, fmt.Errorf("%w: body type %d is not a TD report (want %d, TD report 1.0, or %d, TD report 1.5)", ErrMalformedQuote, q.BodyType, BodyTypeTDReport10, BodyTypeTDReport15)
		}
		if size != uint32(bodySize) {
			return nil, fmt.Errorf("%w: body size %d does not match body type %d (want %d)", ErrMalformedQuote, size, q.BodyType, bodySize)
		}
	}
	parseTDReport(r, &q.Body, q.BodyType == BodyTypeTDReport15)
	if r.err != nil {
		return nil, r.err
	}
	q.signed = raw[:r.off]

	sigLen := r.u32("signature data length")
	if r.err != nil {
		return nil, r.err
	}
	if err := r.exactly(sigLen, "signature data", "the quote"); err != nil {
		return nil, err
	}
	r.into(q.Signature[:], "quote signature")
	r.into(q.AttestationKey[:], "attestation key")

	certType := r.u16("certification data type")
	certSize := r.u32("certification data size")
	if r.err != nil {
		return nil, r.err
	}
	if certType != certDataTypeQEReport {
		return nil, fmt.Errorf("%w: certification data type %d is not supported (want %d, QE report certification data)", ErrMalformedQuote, certType, certDataTypeQEReport)
	}
	if err := r.exactly(certSize, "certification data", "the signature data"); err != nil {
		return nil, err
	}

	q.qeReportRaw = r.take(enclaveReportSize, "QE report")
	if r.err != nil {
		return nil, r.err
	}
	parseEnclaveReport(q.qeReportRaw, &q.QEReport)
	r.into(q.QEReportSignature[:], "QE report signature")
	authSize := r.u16("QE authentication data size")
	q.QEAuthData = r.take(int(authSize), "QE authentication data")

	pckType := r.u16("QE certification data type")
	pckSize := r.u32("QE certification data size")
	if r.err != nil {
		return nil, r.err
	}
	if pckType != certDataTypePCKPEM {
		return nil, fmt.Errorf("%w: QE certification data type %d is not supported (want %d, PCK certificate chain)", ErrMalformedQuote, pckType, certDataTypePCKPEM)
	}
	if err := r.exactly(pckSize, "PCK certificate chain", "the certification data"); err != nil {
		return nil, err
	}
	q.PCKCertChain = r.take(int(pckSize), "PCK certificate chain")
	if r.err != nil {
		return nil, r.err
	}
	if len(q.PCKCertChain) == 0 {
		return nil, fmt.Errorf("%w: empty PCK certificate chain", ErrMalformedQuote)
	}
	return q, nil
}

func parseTDReport(r *reader, b *TDReport, v15 bool) {
	r.into(b.TEETCBSVN[:], "TD report TEE_TCB_SVN")
	r.into(b.MRSEAM[:], "TD report MRSEAM")
	r.into(b.MRSignerSEAM[:], "TD report MRSIGNERSEAM")
	r.into(b.SEAMAttributes[:], "TD report SEAMATTRIBUTES")
	r.into(b.TDAttributes[:], "TD report TDATTRIBUTES")
	r.into(b.XFAM[:], "TD report XFAM")
	r.into(b.MRTD[:], "TD report MRTD")
	r.into(b.MRConfigID[:], "TD report MRCONFIGID")
	r.into(b.MROwner[:], "TD report MROWNER")
	r.into(b.MROwnerConfig[:], "TD report MROWNERCONFIG")
	for i := range b.RTMR {
		r.into(b.RTMR[i][:], fmt.Sprintf("TD report RTMR[%d]", i))
	}
	r.into(b.ReportData[:], "TD report REPORTDATA")
	if v15 {
		r.into(b.TEETCBSVN2[:], "TD report TEE_TCB_SVN_2")
		r.into(b.MRServiceTD[:], "TD report MRSERVICETD")
	}
}

// parseEnclaveReport decodes a 384-byte SGX report.
func parseEnclaveReport(b []byte, e *EnclaveReport) {
	copy(e.CPUSVN[:], b[0:16])
	e.MiscSelect = binary.LittleEndian.Uint32(b[16:20])
	// 20:48 reserved
	copy(e.Attributes[:], b[48:64])
	copy(e.MREnclave[:], b[64:96])
	// 96:128 reserved
	copy(e.MRSigner[:], b[128:160])
	// 160:256 reserved
	e.ISVProdID = binary.LittleEndian.Uint16(b[256:258])
	e.ISVSVN = binary.LittleEndian.Uint16(b[258:260])
	// 260:320 reserved
	copy(e.ReportData[:], b[320:384])
}

// UnverifiedPCK parses the PCK certificate chain of the quote and the SGX extension of its first
// certificate, the PCK certificate, without verifying anything: use it to display a quote (platform FMSPC,
// PCE ID, SGX TCB). Verify checks the chain and uses the same extension.
func (q *Quote) UnverifiedPCK() (*x509.Certificate, *PCKInfo, error) {
	chain, err := parseCertChainPEM(q.PCKCertChain, "PCK certificate chain")
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrMalformedQuote, err)
	}
	info, err := parsePCKExtension(chain[0])
	if err != nil {
		return chain[0], nil, err
	}
	if len(chain) > 1 {
		if ca, err := pckCAOf(chain[1]); err == nil {
			info.CA = ca
		}
	}
	return chain[0], info, nil
}

// TrimQuotePadding returns raw without the zero bytes a quote provider appended after the quote (Azure's
// instance metadata service returns quotes in a larger, zero-filled buffer). The quote's own length fields
// decide where it ends; every byte after that must be zero. The result still has to pass ParseQuote.
func TrimQuotePadding(raw []byte) ([]byte, error) {
	if len(raw) > MaxQuoteSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrMalformedQuote, len(raw), MaxQuoteSize)
	}
	r := &reader{buf: raw}
	version := r.u16("header version")
	r.take(headerSize-2, "header")
	bodySize := uint32(tdReport10Size)
	if version == QuoteVersion5 {
		r.u16("body type")
		bodySize = r.u32("body size")
	}
	if r.err != nil {
		return nil, r.err
	}
	if bodySize > uint32(len(raw)) {
		return nil, fmt.Errorf("%w: truncated: body size %d exceeds the %d bytes of the quote", ErrMalformedQuote, bodySize, len(raw))
	}
	r.take(int(bodySize), "TD report body")
	sigLen := r.u32("signature data length")
	if r.err != nil {
		return nil, r.err
	}
	if int64(sigLen) > int64(r.rest()) {
		return nil, fmt.Errorf("%w: truncated: signature data has length %d at offset %d, but only %d bytes are left", ErrMalformedQuote, sigLen, r.off, r.rest())
	}
	end := r.off + int(sigLen)
	if !isZero(raw[end:]) {
		return nil, fmt.Errorf("%w: non-zero bytes after the %d-byte quote", ErrMalformedQuote, end)
	}
	return raw[:end:end], nil
}
