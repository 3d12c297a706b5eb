package tdx

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Layout of the TD report (TDREPORT_STRUCT) the TDX module returns to a TD for TDG.MR.REPORT (Intel TDX
// module ABI specification). It is not signed: only the TDX module can check its MAC, on the platform that
// made it. The quoting enclave turns it into a quote, whose TD report body carries most of its fields.
//
//	offset  size  field
//	0       256   REPORTMACSTRUCT
//	0       8       REPORTTYPE: type (0x81: TDX), subtype (0), version (0 or 1), reserved (0)
//	8       8       reserved, zero
//	16      16      CPUSVN
//	32      48      TEE_TCB_INFO_HASH
//	80      48      TEE_INFO_HASH
//	128     64      REPORTDATA
//	192     32      reserved, zero
//	224     32      MAC
//	256     239   TEE_TCB_INFO
//	256     8       VALID
//	264     16      TEE_TCB_SVN
//	280     48      MRSEAM
//	328     48      MRSIGNERSEAM
//	376     8       ATTRIBUTES (of the TDX module)
//	384     16      TEE_TCB_SVN2 (TDX 1.5; zero before)
//	400     95      reserved
//	495     17    reserved
//	512     512   TDINFO
//	512     8       ATTRIBUTES (of the TD)
//	520     8       XFAM
//	528     48      MRTD
//	576     48      MRCONFIGID
//	624     48      MROWNER
//	672     48      MROWNERCONFIG
//	720     192     RTMR0-3
//	912     48      SERVTD_HASH
//	960     64      reserved
const (
	// TDReportStructSize is the size of a TD report (TDREPORT_STRUCT).
	TDReportStructSize = 1024

	tdReportTypeTDX    = 0x81
	offTDReportSVN     = 264
	offTDReportTDInfo  = 512
	offTDReportRData   = 128
	offTDReportSVN2    = 384
	offTDReportServTD  = 912
	offTDReportRTMR    = 720
	offTDReportMRSEAM  = 280
	offTDReportSigner  = 328
	offTDReportSeamAtt = 376
)

// ErrMalformedTDReport wraps every structural error of a TD report.
var ErrMalformedTDReport = errors.New("TD report: malformed")

// ErrTDReportMismatch is returned when a quote was not made for a given TD report.
var ErrTDReportMismatch = errors.New("the TDX quote is not the quote of the TD report")

// TDReportStruct is a parsed TD report (TDREPORT_STRUCT). Nothing in it is trusted: it carries a MAC that
// only the TDX module of its platform can check. It is trusted once a verified quote carries the same
// fields (MatchQuote).
type TDReportStruct struct {
	// Version is the REPORTTYPE version: 1 when SERVTD_HASH is in use (TDX 1.5), 0 otherwise.
	Version    byte
	CPUSVN     [16]byte
	ReportData [ReportDataSize]byte
	// Body holds the fields in the layout of a quote's TD report body (TEETCBSVN2 and MRServiceTD are
	// SERVTD_HASH and TEE_TCB_SVN2 of the report).
	Body TDReport

	raw []byte
}

// Raw returns a copy of the 1024 bytes the report was parsed from.
func (r *TDReportStruct) Raw() []byte { return bytes.Clone(r.raw) }

// ParseTDReport parses a TD report strictly: exactly TDReportStructSize bytes, report type TDX (0x81)
// with subtype 0 and version 0 or 1, and zero reserved fields. It checks structure only.
func ParseTDReport(raw []byte) (*TDReportStruct, error) {
	if len(raw) != TDReportStructSize {
		return nil, fmt.Errorf("%w: %d bytes, want exactly %d", ErrMalformedTDReport, len(raw), TDReportStructSize)
	}
	if raw[0] != tdReportTypeTDX {
		return nil, fmt.Errorf("%w: report type %#x is not TDX (%#x)", ErrMalformedTDReport, raw[0], tdReportTypeTDX)
	}
	if raw[1] != 0 {
		return nil, fmt.Errorf("%w: report subtype %d, want 0", ErrMalformedTDReport, raw[1])
	}
	if raw[2] > 1 {
		return nil, fmt.Errorf("%w: report version %d, this parser reads versions 0 and 1", ErrMalformedTDReport, raw[2])
	}
	for _, z := range []struct {
		from, to int
		what     string
	}{
		{3, 16, "REPORTTYPE reserved byte and the reserved field after it"},
		{192, 224, "the reserved field after REPORTDATA"},
		{400, 512, "the reserved fields after TEE_TCB_INFO"},
		{960, 1024, "the reserved field at the end of TDINFO"},
	} {
		if !isZero(raw[z.from:z.to]) {
			return nil, fmt.Errorf("%w: %s (bytes %d to %d) are not zero", ErrMalformedTDReport, z.what, z.from, z.to)
		}
	}
	if raw[2] == 0 && !isZero(raw[offTDReportServTD:offTDReportServTD+48]) {
		return nil, fmt.Errorf("%w: a version 0 report, which has no service TD, carries a SERVTD_HASH", ErrMalformedTDReport)
	}
	r := &TDReportStruct{Version: raw[2], raw: bytes.Clone(raw)}
	raw = r.raw
	copy(r.CPUSVN[:], raw[16:32])
	copy(r.ReportData[:], raw[offTDReportRData:offTDReportRData+ReportDataSize])
	b := &r.Body
	copy(b.TEETCBSVN[:], raw[offTDReportSVN:])
	copy(b.MRSEAM[:], raw[offTDReportMRSEAM:])
	copy(b.MRSignerSEAM[:], raw[offTDReportSigner:])
	copy(b.SEAMAttributes[:], raw[offTDReportSeamAtt:])
	copy(b.TEETCBSVN2[:], raw[offTDReportSVN2:])
	td := raw[offTDReportTDInfo:]
	copy(b.TDAttributes[:], td[0:8])
	copy(b.XFAM[:], td[8:16])
	copy(b.MRTD[:], td[16:64])
	copy(b.MRConfigID[:], td[64:112])
	copy(b.MROwner[:], td[112:160])
	copy(b.MROwnerConfig[:], td[160:208])
	for i := range b.RTMR {
		copy(b.RTMR[i][:], raw[offTDReportRTMR+48*i:])
	}
	copy(b.MRServiceTD[:], raw[offTDReportServTD:])
	b.ReportData = r.ReportData
	return r, nil
}

// MatchQuote checks that q is a quote of this TD report: every field the quote's TD report body carries
// must be byte-identical to the report's (for a TD report 1.0 body: the TEE TCB SVN, MRSEAM, MRSIGNERSEAM,
// the module and TD attributes, XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3 and REPORTDATA; a
// 1.5 body adds TEE_TCB_SVN_2 and MRSERVICETD). The error names every field that differs.
func (r *TDReportStruct) MatchQuote(q *Quote) error {
	if r == nil || q == nil {
		return errors.New("matching a TDX quote with a TD report: no report or quote")
	}
	a, b := &r.Body, &q.Body
	var diff []string
	cmp := func(name string, x, y []byte) {
		if subtle.ConstantTimeCompare(x, y) != 1 {
			diff = append(diff, name)
		}
	}
	cmp("TEE_TCB_SVN", a.TEETCBSVN[:], b.TEETCBSVN[:])
	cmp("MRSEAM", a.MRSEAM[:], b.MRSEAM[:])
	cmp("MRSIGNERSEAM", a.MRSignerSEAM[:], b.MRSignerSEAM[:])
	cmp("SEAMATTRIBUTES", a.SEAMAttributes[:], b.SEAMAttributes[:])
	cmp("TDATTRIBUTES", a.TDAttributes[:], b.TDAttributes[:])
	cmp("XFAM", a.XFAM[:], b.XFAM[:])
	cmp("MRTD", a.MRTD[:], b.MRTD[:])
	cmp("MRCONFIGID", a.MRConfigID[:], b.MRConfigID[:])
	cmp("MROWNER", a.MROwner[:], b.MROwner[:])
	cmp("MROWNERCONFIG", a.MROwnerConfig[:], b.MROwnerConfig[:])
	for i := range a.RTMR {
		cmp(fmt.Sprintf("RTMR[%d]", i), a.RTMR[i][:], b.RTMR[i][:])
	}
	cmp("REPORTDATA", a.ReportData[:], b.ReportData[:])
	if q.BodyType == BodyTypeTDReport15 {
		cmp("TEE_TCB_SVN_2", a.TEETCBSVN2[:], b.TEETCBSVN2[:])
		cmp("MRSERVICETD", a.MRServiceTD[:], b.MRServiceTD[:])
	}
	if len(diff) != 0 {
		return fmt.Errorf("%w: %v differ (a quote made for another TD report, or a TD report that was altered)", ErrTDReportMismatch, diff)
	}
	return nil
}

func isZero(b []byte) bool {
	var acc byte
	for _, v := range b {
		acc |= v
	}
	return acc == 0
}
