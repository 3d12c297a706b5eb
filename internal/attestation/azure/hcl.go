package azure

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
)

// Layout of the HCL report (all integers little-endian):
//
//	offset  size  field
//	0       4     signature "HCLA"
//	4       4     header version (1 or 2)
//	8       4     report size: header + hardware report area + request data (data size)
//	12      4     request type (2: HCL report)
//	16      4     status (0: success)
//	20      12    reserved, zero
//	32      1184  hardware report area: an SEV-SNP report (1184 bytes) or a TDX TD report (1024 bytes)
//	1216    4     data size: the 20 bytes of this fixed part + the runtime data size
//	1220    4     request data version (1)
//	1224    4     report type (2: SEV-SNP, 4: TDX)
//	1228    4     hash type of REPORT_DATA over the runtime data (1: SHA-256, 2: SHA-384, 3: SHA-512)
//	1232    4     runtime data size
//	1236    n     runtime data (JSON)
//
// The NV index is larger than the report; the bytes after report size are zero.
const (
	// NVIndexHCLReport is the vTPM NV index in which the Azure paravisor stores the HCL report.
	NVIndexHCLReport = 0x01400001

	// HeaderSize is the size of the HCL report header.
	HeaderSize = 32
	// HardwareReportAreaSize is the size of the area that holds the hardware report: the larger of an
	// SEV-SNP report (1184 bytes) and a TDX TD report (1024 bytes).
	HardwareReportAreaSize = 1184
	// SNPReportSize is the size of the SEV-SNP report in the hardware report area.
	SNPReportSize = 1184
	// TDReportSize is the size of the TDX TD report at the start of the hardware report area.
	TDReportSize = 1024
	// RequestDataFixedSize is the size of the fixed part of the request data before the runtime data.
	RequestDataFixedSize = 20
	// MinHCLReportSize is the size of an HCL report with one byte of runtime data.
	MinHCLReportSize = HeaderSize + HardwareReportAreaSize + RequestDataFixedSize + 1
	// MaxHCLReportSize bounds the HCL report as read from the NV index, padding included. A TPM NV index
	// holds at most a few kilobytes; the bound leaves room for larger vTPM limits.
	MaxHCLReportSize = 16 << 10
	// MaxRuntimeDataSize bounds the runtime data.
	MaxRuntimeDataSize = MaxHCLReportSize - HeaderSize - HardwareReportAreaSize - RequestDataFixedSize

	hclSignature         = "HCLA"
	requestTypeHCLReport = 2
	requestDataVersion   = 1
	offRequestData       = HeaderSize + HardwareReportAreaSize
	offRuntimeData       = offRequestData + RequestDataFixedSize
)

// ReportType is the kind of hardware report in an HCL report.
type ReportType uint32

// Hardware report types.
const (
	ReportTypeSNP ReportType = 2
	ReportTypeTDX ReportType = 4
)

func (t ReportType) String() string {
	switch t {
	case ReportTypeSNP:
		return "SEV-SNP"
	case ReportTypeTDX:
		return "TDX"
	}
	return fmt.Sprintf("unknown report type %d", uint32(t))
}

// HashType is the hash with which the paravisor computed REPORT_DATA from the runtime data.
type HashType uint32

// Hash types.
const (
	HashSHA256 HashType = 1
	HashSHA384 HashType = 2
	HashSHA512 HashType = 3
)

func (h HashType) String() string {
	switch h {
	case HashSHA256:
		return "SHA-256"
	case HashSHA384:
		return "SHA-384"
	case HashSHA512:
		return "SHA-512"
	}
	return fmt.Sprintf("unknown hash type %d", uint32(h))
}

// ErrMalformedHCLReport wraps every structural error of an HCL report.
var ErrMalformedHCLReport = errors.New("HCL report: malformed")

// ErrRuntimeData wraps every error of the runtime data claims.
var ErrRuntimeData = errors.New("HCL report: runtime data")

// HCLReport is a parsed HCL report. Parsing checks its structure only: nothing in it is trusted until the
// hardware report is verified and its REPORT_DATA equals [HCLReport.ReportData].
type HCLReport struct {
	// Version is the header version.
	Version uint32
	// Type is the kind of hardware report.
	Type ReportType
	// Hash is the hash of REPORT_DATA over the runtime data.
	Hash HashType
	// HardwareReport is the SEV-SNP report (1184 bytes) or the TDX TD report (1024 bytes).
	HardwareReport []byte
	// RuntimeData is the runtime data JSON, whose hash the hardware report's REPORT_DATA carries.
	RuntimeData []byte
}

// ParseHCLReport parses an HCL report as read from the vTPM NV index (padding included). It checks the
// signature, versions, request type, status, reserved fields, report type, hash type, that the sizes agree
// with each other and with the input, that the hardware report area holds nothing after a TD report, and
// that every byte after the report is zero. The returned slices are
// copies.
func ParseHCLReport(raw []byte) (*HCLReport, error) {
	if len(raw) > MaxHCLReportSize {
		return nil, fmt.Errorf("%w: %d bytes exceed the limit of %d", ErrMalformedHCLReport, len(raw), MaxHCLReportSize)
	}
	if len(raw) < MinHCLReportSize {
		return nil, fmt.Errorf("%w: truncated: %d bytes, an HCL report has at least %d", ErrMalformedHCLReport, len(raw), MinHCLReportSize)
	}
	le := binary.LittleEndian
	if string(raw[0:4]) != hclSignature {
		return nil, fmt.Errorf("%w: signature %q, want %q (is NV index 0x%08x the paravisor's HCL report?)", ErrMalformedHCLReport, raw[0:4], hclSignature, NVIndexHCLReport)
	}
	version := le.Uint32(raw[4:])
	if version != 1 && version != 2 {
		return nil, fmt.Errorf("%w: unknown header version %d (this parser reads versions 1 and 2)", ErrMalformedHCLReport, version)
	}
	reportSize := uint64(le.Uint32(raw[8:]))
	if rt := le.Uint32(raw[12:]); rt != requestTypeHCLReport {
		return nil, fmt.Errorf("%w: request type %d, want %d (HCL report)", ErrMalformedHCLReport, rt, requestTypeHCLReport)
	}
	if st := le.Uint32(raw[16:]); st != 0 {
		return nil, fmt.Errorf("%w: the paravisor reported status 0x%x: it could not produce a report", ErrMalformedHCLReport, st)
	}
	if !allZero(raw[20:HeaderSize]) {
		return nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrMalformedHCLReport)
	}
	dataSize := uint64(le.Uint32(raw[offRequestData:]))
	if v := le.Uint32(raw[offRequestData+4:]); v != requestDataVersion {
		return nil, fmt.Errorf("%w: unknown request data version %d, want %d", ErrMalformedHCLReport, v, requestDataVersion)
	}
	typ := ReportType(le.Uint32(raw[offRequestData+8:]))
	if typ != ReportTypeSNP && typ != ReportTypeTDX {
		return nil, fmt.Errorf("%w: %v, want %v (%d) or %v (%d)", ErrMalformedHCLReport, typ, ReportTypeSNP, ReportTypeSNP, ReportTypeTDX, ReportTypeTDX)
	}
	hash := HashType(le.Uint32(raw[offRequestData+12:]))
	if hash != HashSHA256 && hash != HashSHA384 && hash != HashSHA512 {
		return nil, fmt.Errorf("%w: %v for REPORT_DATA (want 1: SHA-256, 2: SHA-384 or 3: SHA-512)", ErrMalformedHCLReport, hash)
	}
	varSize := uint64(le.Uint32(raw[offRequestData+16:]))
	if varSize == 0 {
		return nil, fmt.Errorf("%w: no runtime data", ErrMalformedHCLReport)
	}
	if dataSize != RequestDataFixedSize+varSize {
		return nil, fmt.Errorf("%w: request data size %d disagrees with runtime data size %d (want %d + %d)", ErrMalformedHCLReport, dataSize, varSize, RequestDataFixedSize, varSize)
	}
	if want := offRequestData + dataSize; reportSize != want {
		return nil, fmt.Errorf("%w: report size %d disagrees with its parts (%d bytes up to the request data + %d bytes of request data = %d)", ErrMalformedHCLReport, reportSize, offRequestData, dataSize, want)
	}
	if reportSize > uint64(len(raw)) {
		return nil, fmt.Errorf("%w: truncated: the report has %d bytes, the input %d", ErrMalformedHCLReport, reportSize, len(raw))
	}
	if !allZero(raw[reportSize:]) {
		return nil, fmt.Errorf("%w: non-zero bytes after the %d-byte report", ErrMalformedHCLReport, reportSize)
	}
	hwSize := SNPReportSize
	if typ == ReportTypeTDX {
		hwSize = TDReportSize
		// The TD report is smaller than the area; the paravisor leaves the rest zero. Anything there is
		// data no signature covers.
		if !allZero(raw[HeaderSize+TDReportSize : HeaderSize+HardwareReportAreaSize]) {
			return nil, fmt.Errorf("%w: non-zero bytes after the %d-byte TD report in the hardware report area", ErrMalformedHCLReport, TDReportSize)
		}
	}
	return &HCLReport{
		Version:        version,
		Type:           typ,
		Hash:           hash,
		HardwareReport: bytes.Clone(raw[HeaderSize : HeaderSize+hwSize]),
		RuntimeData:    bytes.Clone(raw[offRuntimeData:reportSize]),
	}, nil
}

// ReportData returns the REPORT_DATA the hardware report must carry for this runtime data: its hash (of
// the report's hash type), zero-padded to 64 bytes.
func (r *HCLReport) ReportData() ([64]byte, error) {
	var out [64]byte
	switch r.Hash {
	case HashSHA256:
		d := sha256.Sum256(r.RuntimeData)
		copy(out[:], d[:])
	case HashSHA384:
		d := sha512.Sum384(r.RuntimeData)
		copy(out[:], d[:])
	case HashSHA512:
		d := sha512.Sum512(r.RuntimeData)
		copy(out[:], d[:])
	default:
		return out, fmt.Errorf("%w: %v", ErrMalformedHCLReport, r.Hash)
	}
	return out, nil
}

// AttestationKeyID is the key ID of the vTPM attestation key in the runtime data.
const AttestationKeyID = "HCLAkPub"

// jwk is a JSON web key of the runtime data. Only RSA keys occur.
type jwk struct {
	Kid string `json:"kid"`
	Kty string `json:"kty"`
	N   string `json:"n"`
	E   string `json:"e"`
}

// AttestationKey returns the vTPM attestation key the runtime data names: the one key with key ID
// "HCLAkPub", an RSA key of 2048 to 4096 bits. Trust it only after the hardware report that binds the
// runtime data is verified.
func (r *HCLReport) AttestationKey() (*rsa.PublicKey, error) {
	return ParseAttestationKey(r.RuntimeData)
}

// ParseAttestationKey extracts the "HCLAkPub" key from runtime data JSON. The JSON must be a single object
// whose "keys" member is an array of JSON web keys; exactly one of them has key ID "HCLAkPub". Other
// members and keys are ignored.
func ParseAttestationKey(runtimeData []byte) (*rsa.PublicKey, error) {
	dec := json.NewDecoder(bytes.NewReader(runtimeData))
	var claims struct {
		Keys []jwk `json:"keys"`
	}
	if err := dec.Decode(&claims); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object with a key list: %w", ErrRuntimeData, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrRuntimeData)
	}
	var found *jwk
	for i := range claims.Keys {
		if claims.Keys[i].Kid != AttestationKeyID {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("%w: more than one key with key ID %q", ErrRuntimeData, AttestationKeyID)
		}
		found = &claims.Keys[i]
	}
	if found == nil {
		return nil, fmt.Errorf("%w: no key with key ID %q, so the vTPM attestation key is unknown", ErrRuntimeData, AttestationKeyID)
	}
	if found.Kty != "RSA" {
		return nil, fmt.Errorf("%w: %s has key type %q, want RSA", ErrRuntimeData, AttestationKeyID, found.Kty)
	}
	n, err := base64.RawURLEncoding.Strict().DecodeString(found.N)
	if err != nil {
		return nil, fmt.Errorf("%w: %s modulus is not unpadded base64url: %w", ErrRuntimeData, AttestationKeyID, err)
	}
	e, err := base64.RawURLEncoding.Strict().DecodeString(found.E)
	if err != nil {
		return nil, fmt.Errorf("%w: %s exponent is not unpadded base64url: %w", ErrRuntimeData, AttestationKeyID, err)
	}
	if len(n) == 0 || n[0] == 0 || len(e) == 0 || e[0] == 0 || len(e) > 4 {
		return nil, fmt.Errorf("%w: %s modulus or exponent is empty, has leading zeros or the exponent exceeds 32 bits", ErrRuntimeData, AttestationKeyID)
	}
	key := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if bits := key.N.BitLen(); bits < 2048 || bits > 4096 {
		return nil, fmt.Errorf("%w: %s is an RSA key of %d bits, want 2048 to 4096", ErrRuntimeData, AttestationKeyID, bits)
	}
	if key.E < 3 || key.E%2 == 0 || key.E > 1<<31-1 {
		return nil, fmt.Errorf("%w: %s has RSA exponent %d, want an odd exponent of at least 3", ErrRuntimeData, AttestationKeyID, key.E)
	}
	return key, nil
}

// MarshalHCLReport lays out an HCL report (header version 2) around a hardware report and runtime data, as
// the paravisor does, with padding zero bytes after it. It is the inverse of [ParseHCLReport] and serves
// tests and fakes of the paravisor.
func MarshalHCLReport(typ ReportType, hash HashType, hardwareReport, runtimeData []byte, padding int) ([]byte, error) {
	if len(hardwareReport) > HardwareReportAreaSize {
		return nil, fmt.Errorf("hardware report of %d bytes exceeds the area of %d", len(hardwareReport), HardwareReportAreaSize)
	}
	if len(runtimeData) == 0 || len(runtimeData) > MaxRuntimeDataSize || padding < 0 {
		return nil, fmt.Errorf("runtime data of %d bytes, want 1 to %d", len(runtimeData), MaxRuntimeDataSize)
	}
	size := offRuntimeData + len(runtimeData)
	if size+padding > MaxHCLReportSize {
		return nil, fmt.Errorf("HCL report of %d bytes with padding exceeds the limit of %d", size+padding, MaxHCLReportSize)
	}
	le := binary.LittleEndian
	out := make([]byte, size+padding)
	copy(out, hclSignature)
	le.PutUint32(out[4:], 2)
	le.PutUint32(out[8:], uint32(size))
	le.PutUint32(out[12:], requestTypeHCLReport)
	copy(out[HeaderSize:], hardwareReport)
	le.PutUint32(out[offRequestData:], uint32(RequestDataFixedSize+len(runtimeData)))
	le.PutUint32(out[offRequestData+4:], requestDataVersion)
	le.PutUint32(out[offRequestData+8:], uint32(typ))
	le.PutUint32(out[offRequestData+12:], uint32(hash))
	le.PutUint32(out[offRequestData+16:], uint32(len(runtimeData)))
	copy(out[offRuntimeData:], runtimeData)
	return out, nil
}

// MarshalAttestationKey encodes an RSA attestation key as runtime data JSON with one key of key ID
// "HCLAkPub", as the paravisor writes it. It serves tests and fakes of the paravisor.
func MarshalAttestationKey(key *rsa.PublicKey) ([]byte, error) {
	if key == nil || key.N == nil {
		return nil, errors.New("no RSA key")
	}
	e := big.NewInt(int64(key.E)).Bytes()
	return json.Marshal(map[string]any{"keys": []map[string]any{{
		"kid": AttestationKeyID, "key_ops": []string{"sign"}, "kty": "RSA",
		"e": base64.RawURLEncoding.EncodeToString(e),
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
	}}})
}

func allZero(b []byte) bool {
	var acc byte
	for _, v := range b {
		acc |= v
	}
	return acc == 0
}
