package tdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
)

func TestParseGenuineQuote(t *testing.T) {
	raw := genuineQuote(t)
	q := mustParseQuote(t, raw)
	if q.Header.Version != QuoteVersion4 || q.Header.TEEType != TEETypeTDX || q.Header.QEVendorID != intelQEVendorID {
		t.Errorf("header = %+v", q.Header)
	}
	if q.BodyType != BodyTypeTDReport10 {
		t.Errorf("body type = %d, want %d", q.BodyType, BodyTypeTDReport10)
	}
	if q.Body.Debug() {
		t.Error("genuine production quote reports a debug TD")
	}
	if got := q.Body.TEETCBSVN; got != [16]byte{3, 0, 4} {
		t.Errorf("TEE_TCB_SVN = %v", got)
	}
	if !bytes.HasPrefix(q.PCKCertChain, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Errorf("PCK chain does not start with a PEM certificate")
	}
	if len(q.QEAuthData) != 32 || q.QEReport.ISVProdID != 2 || q.QEReport.ISVSVN != 4 {
		t.Errorf("QE report %+v, auth data %d bytes", q.QEReport, len(q.QEAuthData))
	}
	// The parser keeps no reference to its input.
	raw[100] ^= 0xff
	if bytes.Equal(q.signed[100:101], raw[100:101]) {
		t.Error("the parsed quote aliases its input")
	}
}

// TestParseQuoteMatchesGoTDXGuest compares every field this parser extracts with the independent parser
// of github.com/google/go-tdx-guest on the genuine quote.
func TestParseQuoteMatchesGoTDXGuest(t *testing.T) {
	raw := genuineQuote(t)
	q := mustParseQuote(t, raw)
	anyQuote, err := abi.QuoteToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	ref, ok := anyQuote.(*pb.QuoteV4)
	if !ok {
		t.Fatalf("reference parser returned %T", anyQuote)
	}
	h, b := ref.GetHeader(), ref.GetTdQuoteBody()
	sd := ref.GetSignedData()
	qe := sd.GetCertificationData().GetQeReportCertificationData()
	eq := func(name string, got, want []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Errorf("%s = %x, reference %x", name, got, want)
		}
	}
	if uint32(q.Header.Version) != h.GetVersion() || uint32(q.Header.AttestationKeyType) != h.GetAttestationKeyType() || q.Header.TEEType != h.GetTeeType() {
		t.Errorf("header %+v, reference %v", q.Header, h)
	}
	eq("QE vendor ID", q.Header.QEVendorID[:], h.GetQeVendorId())
	eq("user data", q.Header.UserData[:], h.GetUserData())
	eq("TEE_TCB_SVN", q.Body.TEETCBSVN[:], b.GetTeeTcbSvn())
	eq("MRSEAM", q.Body.MRSEAM[:], b.GetMrSeam())
	eq("MRSIGNERSEAM", q.Body.MRSignerSEAM[:], b.GetMrSignerSeam())
	eq("SEAMATTRIBUTES", q.Body.SEAMAttributes[:], b.GetSeamAttributes())
	eq("TDATTRIBUTES", q.Body.TDAttributes[:], b.GetTdAttributes())
	eq("XFAM", q.Body.XFAM[:], b.GetXfam())
	eq("MRTD", q.Body.MRTD[:], b.GetMrTd())
	eq("MRCONFIGID", q.Body.MRConfigID[:], b.GetMrConfigId())
	eq("MROWNER", q.Body.MROwner[:], b.GetMrOwner())
	eq("MROWNERCONFIG", q.Body.MROwnerConfig[:], b.GetMrOwnerConfig())
	for i := range q.Body.RTMR {
		eq("RTMR", q.Body.RTMR[i][:], b.GetRtmrs()[i])
	}
	eq("REPORTDATA", q.Body.ReportData[:], b.GetReportData())
	eq("signature", q.Signature[:], sd.GetSignature())
	eq("attestation key", q.AttestationKey[:], sd.GetEcdsaAttestationKey())
	r := qe.GetQeReport()
	eq("QE CPUSVN", q.QEReport.CPUSVN[:], r.GetCpuSvn())
	eq("QE attributes", q.QEReport.Attributes[:], r.GetAttributes())
	eq("QE MRENCLAVE", q.QEReport.MREnclave[:], r.GetMrEnclave())
	eq("QE MRSIGNER", q.QEReport.MRSigner[:], r.GetMrSigner())
	eq("QE report data", q.QEReport.ReportData[:], r.GetReportData())
	if q.QEReport.MiscSelect != r.GetMiscSelect() || uint32(q.QEReport.ISVProdID) != r.GetIsvProdId() || uint32(q.QEReport.ISVSVN) != r.GetIsvSvn() {
		t.Errorf("QE report %+v, reference %v", q.QEReport, r)
	}
	eq("QE report signature", q.QEReportSignature[:], qe.GetQeReportSignature())
	eq("QE auth data", q.QEAuthData, qe.GetQeAuthData().GetData())
	eq("PCK chain", q.PCKCertChain, qe.GetPckCertificateChainData().GetPckCertChain())
}

func TestParseQuoteTrailingData(t *testing.T) {
	// The recorded file carries a text suffix after the quote; a strict parser must refuse it.
	raw := tdxtest.RecordedQuote()
	_, err := ParseQuote(raw)
	if !errors.Is(err, ErrMalformedQuote) || !strings.Contains(err.Error(), "39 trailing bytes after the quote") {
		t.Fatalf("ParseQuote(quote + suffix) = %v, want 39 trailing bytes", err)
	}
	for _, extra := range [][]byte{{0}, {0, 0, 0, 0}, []byte("x")} {
		if _, err := ParseQuote(append(genuineQuote(t), extra...)); !errors.Is(err, ErrMalformedQuote) {
			t.Errorf("ParseQuote(quote + %q) = %v, want ErrMalformedQuote", extra, err)
		}
	}
}

func TestParseQuoteTruncated(t *testing.T) {
	raw := genuineQuote(t)
	// Every proper prefix fails; none panics.
	for n := range len(raw) {
		if _, err := ParseQuote(raw[:n]); !errors.Is(err, ErrMalformedQuote) {
			t.Fatalf("ParseQuote(first %d bytes) = %v, want ErrMalformedQuote", n, err)
		}
	}
	// A few lengths, with the part named in the error.
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, "empty"},
		{1, "header version"},
		{47, "header user data"},
		{48, "TD report TEE_TCB_SVN"},
		{300, "TD report MROWNER needs 48 bytes at offset 280"},
		{632, "signature data length"},
		{636, "truncated: signature data has length 4299"},
		{1000, "truncated: signature data has length 4299"},
		{genuineQuoteSize - 1, "truncated: signature data has length 4299"},
	} {
		_, err := ParseQuote(raw[:tc.n])
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseQuote(first %d bytes) = %v, want an error mentioning %q", tc.n, err, tc.want)
		}
	}
}

// TestParseQuoteInnerLengths changes the inner length fields consistently with the outer ones, so that only
// the inner check can catch the mismatch.
func TestParseQuoteInnerLengths(t *testing.T) {
	p := newTestPKI(t)
	raw := p.build(t, p.newQuote())
	const sigLenOff = headerSize + tdReport10Size
	certSizeOff := sigLenOff + 4 + 128 + 2
	authSizeOff := certSizeOff + 4 + enclaveReportSize + 64
	authSize := int(binary.LittleEndian.Uint16(raw[authSizeOff:]))
	pckTypeOff := authSizeOff + 2 + authSize
	pckSizeOff := pckTypeOff + 2

	set32 := func(b []byte, off int, delta int) {
		binary.LittleEndian.PutUint32(b[off:], uint32(int(binary.LittleEndian.Uint32(b[off:]))+delta))
	}
	for _, tc := range []struct {
		name   string
		mutate func(b []byte) []byte
		want   string
	}{
		{"certification data longer", func(b []byte) []byte { set32(b, certSizeOff, 1); return b }, "truncated: certification data"},
		{"certification data shorter", func(b []byte) []byte { set32(b, certSizeOff, -1); return b }, "1 trailing bytes after the signature data"},
		{"PCK chain longer", func(b []byte) []byte { set32(b, pckSizeOff, 5); return b }, "truncated: PCK certificate chain"},
		{"PCK chain shorter", func(b []byte) []byte { set32(b, pckSizeOff, -5); return b }, "5 trailing bytes after the certification data"},
		{"auth data longer", func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[authSizeOff:], uint16(authSize+1))
			return b
		}, "QE certification data type"},
		{"auth data huge", func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[authSizeOff:], 0xffff)
			return b
		}, "truncated: QE authentication data"},
		{"PCK chain type", func(b []byte) []byte { b[pckTypeOff] = 4; return b }, "QE certification data type 4"},
		{"certification type", func(b []byte) []byte { b[certSizeOff-2] = 5; return b }, "certification data type 5"},
		{"version 3", func(b []byte) []byte { b[0] = 3; return b }, "quote version 3"},
		{"SGX TEE type", func(b []byte) []byte { b[4] = 0; return b }, "TEE type 0x0"},
		{"key type", func(b []byte) []byte { b[2] = 3; return b }, "attestation key type 3"},
		{"empty PCK chain", func(b []byte) []byte {
			n := len(b) - pckSizeOff - 4
			b = b[:pckSizeOff+4]
			binary.LittleEndian.PutUint32(b[pckSizeOff:], 0)
			set32(b, certSizeOff, -n)
			set32(b, sigLenOff, -n)
			return b
		}, "empty PCK certificate chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(bytes.Clone(raw))
			_, err := ParseQuote(b)
			if !errors.Is(err, ErrMalformedQuote) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseQuote = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := ParseQuote(raw); err != nil {
		t.Fatalf("unmodified test quote: %v", err)
	}
	if _, err := ParseQuote(make([]byte, MaxQuoteSize+1)); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Errorf("oversized quote: %v", err)
	}
}

func TestParseQuoteV5(t *testing.T) {
	p := newTestPKI(t)
	for _, bodyType := range []uint16{BodyTypeTDReport10, BodyTypeTDReport15} {
		tq := p.newQuote()
		tq.version, tq.bodyType = QuoteVersion5, bodyType
		tq.body.TEETCBSVN2 = [16]byte{3, 0, 6}
		tq.body.MRServiceTD = [48]byte{0x5d}
		raw := p.build(t, tq)
		q := mustParseQuote(t, raw)
		if q.BodyType != bodyType || q.Body.MRTD != tq.body.MRTD || q.Body.RTMR != tq.body.RTMR {
			t.Errorf("body type %d: parsed %+v", bodyType, q.Body)
		}
		if bodyType == BodyTypeTDReport15 && (q.Body.TEETCBSVN2 != tq.body.TEETCBSVN2 || q.Body.MRServiceTD != tq.body.MRServiceTD) {
			t.Errorf("TD report 1.5 fields not parsed: %+v", q.Body)
		}
		if bodyType == BodyTypeTDReport10 && (q.Body.TEETCBSVN2 != [16]byte{} || q.Body.MRServiceTD != [48]byte{}) {
			t.Errorf("TD report 1.0 has 1.5 fields: %+v", q.Body)
		}
	}

	tq := p.newQuote()
	tq.version, tq.bodyType = QuoteVersion5, BodyTypeTDReport15
	raw := p.build(t, tq)
	for _, tc := range []struct {
		name string
		off  int
		val  byte
		want string
	}{
		{"SGX body", headerSize, 1, "body type 1 is not a TD report"},
		{"body type 1.0 with 1.5 size", headerSize, 2, "body size 648 does not match body type 2"},
		{"body size", headerSize + 2, 0x49, "body size 585 does not match"},
	} {
		b := bytes.Clone(raw)
		b[tc.off] = tc.val
		if _, err := ParseQuote(b); !errors.Is(err, ErrMalformedQuote) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseQuote = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func FuzzParseQuote(f *testing.F) {
	raw := tdxtest.RecordedQuote()
	f.Add(raw[:genuineQuoteSize])
	f.Add(raw)
	p := newTestPKI(f)
	f.Add(p.build(f, p.newQuote()))
	tq := p.newQuote()
	tq.version, tq.bodyType = QuoteVersion5, BodyTypeTDReport15
	f.Add(p.build(f, tq))
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := ParseQuote(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedQuote) {
				t.Fatalf("error does not wrap ErrMalformedQuote: %v", err)
			}
			return
		}
		// A parsed quote accounts for every byte of its input.
		size := len(q.signed) + 4 + 128 + 6 + enclaveReportSize + 64 + 2 + len(q.QEAuthData) + 6 + len(q.PCKCertChain)
		if size != len(data) {
			t.Fatalf("parsed quote accounts for %d bytes, input has %d", size, len(data))
		}
		if !bytes.Equal(q.signed, data[:len(q.signed)]) {
			t.Fatal("signed data is not the quote's prefix")
		}
	})
}

func TestUnverifiedPCK(t *testing.T) {
	q := mustParseQuote(t, genuineQuote(t))
	cert, info, err := q.UnverifiedPCK()
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "Intel SGX PCK Certificate" || info.FMSPC != [6]byte{0x50, 0x80, 0x6f, 0, 0, 0} || info.CA != PCKCAPlatform {
		t.Errorf("PCK %q, FMSPC %x, CA %s", cert.Subject.CommonName, info.FMSPC, info.CA)
	}
	q.PCKCertChain = []byte("not PEM")
	if _, _, err := q.UnverifiedPCK(); !errors.Is(err, ErrMalformedQuote) {
		t.Errorf("malformed chain: %v", err)
	}
}
