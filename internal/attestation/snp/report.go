package snp

import (
	"encoding/binary"
	"fmt"
)

// Report layout constants (AMD SEV Secure Nested Paging Firmware ABI Specification, ATTESTATION_REPORT
// structure). All integers are little-endian.
const (
	// ReportSize is the size of an attestation report.
	ReportSize = 0x4a0
	// MinReportVersion and MaxReportVersion bound the report versions this package parses. Version 3 adds
	// the CPUID family, model and stepping; version 5 adds the mitigation vectors.
	MinReportVersion = 2
	MaxReportVersion = 5
	// ReportDataSize is the size of REPORT_DATA, chosen by the guest when it requests a report.
	ReportDataSize = 64
	// MeasurementSize is the size of the launch MEASUREMENT (SHA-384).
	MeasurementSize = 48
	// KeyDigestSize is the size of ID_KEY_DIGEST and AUTHOR_KEY_DIGEST (SHA-384).
	KeyDigestSize = 48
	// HostDataSize is the size of HOST_DATA.
	HostDataSize = 32
	// ChipIDSize is the size of CHIP_ID.
	ChipIDSize = 64

	// SignatureAlgoECDSAP384SHA384 is the only signature algorithm of attestation reports.
	SignatureAlgoECDSAP384SHA384 = 1

	offSignature  = 0x2a0 // the signature covers report[:offSignature]
	ecdsaCompSize = 72    // R and S are 72-byte little-endian fields; P-384 uses the low 48 bytes
	p384Size      = 48
)

// Guest policy bits (GUEST_POLICY).
const (
	policySMTBit       = 16
	policyReservedBit  = 17 // must be one
	policyMigrateMABit = 18
	policyDebugBit     = 19
	policySingleSocket = 20
	policyMaxKnownBit  = 24
)

// GuestPolicy is the guest policy the guest owner set at launch; the firmware enforces it.
type GuestPolicy uint64

// ABIMinor is the minor part of the minimum firmware ABI version the guest requires.
func (g GuestPolicy) ABIMinor() uint8 { return uint8(g) }

// ABIMajor is the major part of the minimum firmware ABI version the guest requires.
func (g GuestPolicy) ABIMajor() uint8 { return uint8(g >> 8) }

// SMT reports whether the guest may run on a platform with simultaneous multithreading enabled.
func (g GuestPolicy) SMT() bool { return g&(1<<policySMTBit) != 0 }

// MigrateMA reports whether the guest may be associated with a migration agent.
func (g GuestPolicy) MigrateMA() bool { return g&(1<<policyMigrateMABit) != 0 }

// Debug reports whether the host may debug the guest, that is, read and write its memory in plaintext.
func (g GuestPolicy) Debug() bool { return g&(1<<policyDebugBit) != 0 }

// SingleSocket reports whether the guest may run on only one socket.
func (g GuestPolicy) SingleSocket() bool { return g&(1<<policySingleSocket) != 0 }

// PlatformInfo describes the platform's state when the report was produced.
type PlatformInfo uint64

// SMTEnabled reports whether simultaneous multithreading is enabled on the platform.
func (p PlatformInfo) SMTEnabled() bool { return p&1 != 0 }

// TSMEEnabled reports whether transparent secure memory encryption is enabled on the platform.
func (p PlatformInfo) TSMEEnabled() bool { return p&2 != 0 }

// SigningKey is the kind of key that signed a report (SIGNING_KEY).
type SigningKey uint8

// Signing keys.
const (
	SignedByVCEK SigningKey = 0
	SignedByVLEK SigningKey = 1
	NotSigned    SigningKey = 7
)

func (k SigningKey) String() string {
	switch k {
	case SignedByVCEK:
		return "VCEK"
	case SignedByVLEK:
		return "VLEK"
	case NotSigned:
		return "none"
	}
	return fmt.Sprintf("SigningKey(%d)", uint8(k))
}

// Report is a parsed SEV-SNP attestation report. Nothing in it is trusted before [Verifier.Verify]
// succeeded.
type Report struct {
	Version         uint32
	GuestSVN        uint32
	Policy          GuestPolicy
	FamilyID        [16]byte
	ImageID         [16]byte
	VMPL            uint32
	SignatureAlgo   uint32
	CurrentTCB      RawTCB
	PlatformInfo    PlatformInfo
	AuthorKeyEn     bool // AUTHOR_KEY_DIGEST is set: the ID block was signed by an author key
	MaskChipID      bool // the host masked CHIP_ID (it is all zeros)
	SigningKey      SigningKey
	ReportData      [ReportDataSize]byte
	Measurement     [MeasurementSize]byte
	HostData        [HostDataSize]byte
	IDKeyDigest     [KeyDigestSize]byte
	AuthorKeyDigest [KeyDigestSize]byte
	ReportID        [32]byte
	ReportIDMA      [32]byte
	ReportedTCB     RawTCB
	// CPUIDFamily, CPUIDModel and CPUIDStepping are the combined family, model and stepping of CPUID leaf
	// 1 (report version 3 and later; zero in version 2).
	CPUIDFamily      uint8
	CPUIDModel       uint8
	CPUIDStepping    uint8
	ChipID           [ChipIDSize]byte
	CommittedTCB     RawTCB
	CurrentBuild     uint8
	CurrentMinor     uint8
	CurrentMajor     uint8
	CommittedBuild   uint8
	CommittedMinor   uint8
	CommittedMajor   uint8
	LaunchTCB        RawTCB
	LaunchMitVector  uint64 // version 5 and later
	CurrentMitVector uint64 // version 5 and later
	// SignatureR and SignatureS are the big-endian components of the ECDSA P-384 signature.
	SignatureR [p384Size]byte
	SignatureS [p384Size]byte

	raw [ReportSize]byte
}

// Raw returns a copy of the report's bytes.
func (r *Report) Raw() []byte { return append([]byte(nil), r.raw[:]...) }

// signedBytes returns the part of the report the signature covers.
func (r *Report) signedBytes() []byte { return r.raw[:offSignature] }

// ParseReport parses a raw attestation report strictly: exactly ReportSize bytes, a supported version, the
// ECDSA P-384 signature algorithm, a well-formed guest policy and signer info, a VMPL of 0 to 3, and every
// reserved field zero. It checks no signature: see [Verifier.Verify].
func ParseReport(raw []byte) (*Report, error) {
	if len(raw) < ReportSize {
		return nil, fmt.Errorf("%w: %d bytes, truncated (a report has %d)", ErrMalformedReport, len(raw), ReportSize)
	}
	if len(raw) > ReportSize {
		return nil, fmt.Errorf("%w: %d bytes, %d trailing bytes after the report (a report has %d)", ErrMalformedReport, len(raw), len(raw)-ReportSize, ReportSize)
	}
	le := binary.LittleEndian
	r := &Report{}
	copy(r.raw[:], raw)
	b := r.raw[:]

	r.Version = le.Uint32(b[0x00:])
	if r.Version < MinReportVersion || r.Version > MaxReportVersion {
		return nil, fmt.Errorf("%w: version %d, supported versions are %d to %d", ErrMalformedReport, r.Version, MinReportVersion, MaxReportVersion)
	}
	r.GuestSVN = le.Uint32(b[0x04:])
	r.Policy = GuestPolicy(le.Uint64(b[0x08:]))
	if r.Policy&(1<<policyReservedBit) == 0 {
		return nil, fmt.Errorf("%w: guest policy 0x%x has reserved bit %d clear (must be set)", ErrMalformedReport, uint64(r.Policy), policyReservedBit)
	}
	if unknown := uint64(r.Policy) >> (policyMaxKnownBit + 1); unknown != 0 {
		return nil, fmt.Errorf("%w: guest policy 0x%x sets reserved bits above bit %d", ErrMalformedReport, uint64(r.Policy), policyMaxKnownBit)
	}
	copy(r.FamilyID[:], b[0x10:0x20])
	copy(r.ImageID[:], b[0x20:0x30])
	r.VMPL = le.Uint32(b[0x30:])
	if r.VMPL > 3 {
		return nil, fmt.Errorf("%w: VMPL %d, valid levels are 0 to 3", ErrMalformedReport, r.VMPL)
	}
	r.SignatureAlgo = le.Uint32(b[0x34:])
	if r.SignatureAlgo != SignatureAlgoECDSAP384SHA384 {
		return nil, fmt.Errorf("%w: signature algorithm %d, want %d (ECDSA P-384 with SHA-384)", ErrMalformedReport, r.SignatureAlgo, SignatureAlgoECDSAP384SHA384)
	}
	r.CurrentTCB = RawTCB(le.Uint64(b[0x38:]))
	r.PlatformInfo = PlatformInfo(le.Uint64(b[0x40:]))

	signer := le.Uint32(b[0x48:])
	if signer>>5 != 0 {
		return nil, fmt.Errorf("%w: signer info 0x%x sets reserved bits 5-31", ErrMalformedReport, signer)
	}
	r.AuthorKeyEn = signer&1 != 0
	r.MaskChipID = signer&2 != 0
	r.SigningKey = SigningKey(signer >> 2 & 7)
	if r.SigningKey != SignedByVCEK && r.SigningKey != SignedByVLEK && r.SigningKey != NotSigned {
		return nil, fmt.Errorf("%w: signing key %d is reserved", ErrMalformedReport, uint8(r.SigningKey))
	}
	if err := mustBeZero(b, 0x4c, 0x50); err != nil {
		return nil, err
	}
	copy(r.ReportData[:], b[0x50:0x90])
	copy(r.Measurement[:], b[0x90:0xc0])
	copy(r.HostData[:], b[0xc0:0xe0])
	copy(r.IDKeyDigest[:], b[0xe0:0x110])
	copy(r.AuthorKeyDigest[:], b[0x110:0x140])
	copy(r.ReportID[:], b[0x140:0x160])
	copy(r.ReportIDMA[:], b[0x160:0x180])
	r.ReportedTCB = RawTCB(le.Uint64(b[0x180:]))
	reservedFrom := 0x188
	if r.Version >= 3 {
		r.CPUIDFamily, r.CPUIDModel, r.CPUIDStepping = b[0x188], b[0x189], b[0x18a]
		reservedFrom = 0x18b
	}
	if err := mustBeZero(b, reservedFrom, 0x1a0); err != nil {
		return nil, err
	}
	copy(r.ChipID[:], b[0x1a0:0x1e0])
	r.CommittedTCB = RawTCB(le.Uint64(b[0x1e0:]))
	r.CurrentBuild, r.CurrentMinor, r.CurrentMajor = b[0x1e8], b[0x1e9], b[0x1ea]
	if err := mustBeZero(b, 0x1eb, 0x1ec); err != nil {
		return nil, err
	}
	r.CommittedBuild, r.CommittedMinor, r.CommittedMajor = b[0x1ec], b[0x1ed], b[0x1ee]
	if err := mustBeZero(b, 0x1ef, 0x1f0); err != nil {
		return nil, err
	}
	r.LaunchTCB = RawTCB(le.Uint64(b[0x1f0:]))
	reservedFrom = 0x1f8
	if r.Version >= 5 {
		r.LaunchMitVector = le.Uint64(b[0x1f8:])
		r.CurrentMitVector = le.Uint64(b[0x200:])
		reservedFrom = 0x208
	}
	if err := mustBeZero(b, reservedFrom, offSignature); err != nil {
		return nil, err
	}

	// Signature: R and S, 72-byte little-endian fields of which P-384 uses the low 48 bytes, then reserved
	// bytes to the end of the report.
	sig := b[offSignature:]
	for i, c := range []struct {
		name string
		dst  *[p384Size]byte
	}{{"R", &r.SignatureR}, {"S", &r.SignatureS}} {
		field := sig[i*ecdsaCompSize : (i+1)*ecdsaCompSize]
		if !isZero(field[p384Size:]) {
			return nil, fmt.Errorf("%w: signature %s exceeds 48 bytes (P-384)", ErrMalformedReport, c.name)
		}
		for j := range p384Size {
			c.dst[p384Size-1-j] = field[j]
		}
	}
	if err := mustBeZero(b, offSignature+2*ecdsaCompSize, ReportSize); err != nil {
		return nil, err
	}
	return r, nil
}

// mustBeZero checks that b[lo:hi], a reserved field, is all zero.
func mustBeZero(b []byte, lo, hi int) error {
	for i := lo; i < hi; i++ {
		if b[i] != 0 {
			return fmt.Errorf("%w: reserved bytes 0x%x-0x%x are not zero (byte 0x%x is 0x%02x)", ErrMalformedReport, lo, hi-1, i, b[i])
		}
	}
	return nil
}

// CPUProduct returns the product named by the CPUID family and model of the report (report version 3 and
// later). It is not verified: [Verifier.Verify] checks it against the endorsement key certificate.
func (r *Report) CPUProduct() (Product, error) {
	if r.Version < 3 {
		return ProductUnknown, fmt.Errorf("%w: a version %d report does not carry the CPUID (the VCEK or VLEK certificate names the product)", ErrUnknownProduct, r.Version)
	}
	return productFromCPUID(r.CPUIDFamily, r.CPUIDModel)
}
