package tdx

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

func TestEmptyPolicyDenies(t *testing.T) {
	p := newTestPKI(t)
	tq := p.newQuote()
	v, err := p.verify(t, p.build(t, tq), p.collateral(t, p.newCollateral()))
	if err != nil {
		t.Fatal(err)
	}
	for name, pol := range map[string]*Policy{
		"nil":                  nil,
		"zero":                 {},
		"zero with REPORTDATA": (&Policy{}).WithReportData(tq.body.ReportData),
		"only RTMRs":           {RTMR0: tq.body.RTMR[0][:], ReportData: tq.body.ReportData[:]},
		"empty MRTD list":      {MRTD: []HexBytes{}, ReportData: tq.body.ReportData[:]},
	} {
		if err := pol.Check(v); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%s policy: Check = %v, want ErrInvalidPolicy", name, err)
		}
		if err := pol.Validate(); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "no") {
			t.Errorf("%s policy: Validate = %v", name, err)
		}
	}
	// A policy without the expected REPORT_DATA cannot bind the quote to a nonce.
	pol := testPolicy(tq.body.ReportData)
	pol.ReportData = nil
	if err := pol.Check(v); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "no expected REPORT_DATA") {
		t.Errorf("policy without REPORT_DATA: %v", err)
	}
}

func TestPolicyCheck(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	rd := ReportDataForNonce(attestation.MiniVTPM, bytes.Repeat([]byte{1}, 32), []byte("tls key hash"))
	for _, tc := range []struct {
		name   string
		quote  func(q *testQuote)
		policy func(p *Policy)
		want   []string // violations, in order
	}{
		{name: "accepted"},
		{name: "debug TD", quote: func(q *testQuote) { q.body.TDAttributes[0] |= 1 }, want: []string{"TD attributes have DEBUG set"}},
		{name: "debug TD, policy expects debug attributes", quote: func(q *testQuote) { q.body.TDAttributes[0] |= 1 },
			policy: func(p *Policy) { p.TDAttributes = HexBytes{1, 0, 0, 0x10, 0, 0, 0, 0} }, want: []string{"invalid"}},
		{name: "other TD-under-debug bit", quote: func(q *testQuote) { q.body.TDAttributes[0] |= 0x80 }, want: []string{"TD attributes 80000010", "TD-under-debug bits set"}},
		{name: "wrong MRTD", quote: func(q *testQuote) { q.body.MRTD[47] ^= 1 }, want: []string{"MRTD 1111", "is not among the 1 accepted values"}},
		{name: "second accepted MRTD", quote: func(q *testQuote) { q.body.MRTD[47] ^= 1 }, policy: func(p *Policy) {
			m := defaultBody().MRTD
			m[47] ^= 1
			p.MRTD = append(p.MRTD, m[:])
		}},
		{name: "wrong RTMR0", quote: func(q *testQuote) { q.body.RTMR[0][1] = 9 }, want: []string{"RTMR[0] is 2009"}},
		{name: "wrong RTMR3", quote: func(q *testQuote) { q.body.RTMR[3][1] = 9 }, want: []string{"RTMR[3] is 2309"}},
		{name: "RTMR3 not checked", quote: func(q *testQuote) { q.body.RTMR[3][1] = 9 }, policy: func(p *Policy) { p.RTMR3 = nil }},
		{name: "wrong RTMR1 and RTMR2, all reported", quote: func(q *testQuote) { q.body.RTMR[1][1] = 9; q.body.RTMR[2][1] = 9 },
			want: []string{"RTMR[1] is", "RTMR[2] is"}},
		{name: "wrong REPORT_DATA", quote: func(q *testQuote) { q.body.ReportData[63] ^= 1 }, want: []string{"REPORT_DATA does not match"}},
		{name: "wrong MRSEAM", quote: func(q *testQuote) { q.body.MRSEAM[0] = 0 }, want: []string{"MRSEAM 00a1", "not among the 1 accepted TDX modules"}},
		{name: "any MRSEAM", quote: func(q *testQuote) { q.body.MRSEAM[0] = 0 }, policy: func(p *Policy) { p.MRSEAM = nil }},
		{name: "wrong XFAM", quote: func(q *testQuote) { q.body.XFAM[0] = 3 }, want: []string{"XFAM is 031a060000000000, want e71a060000000000"}},
		{name: "migratable TD", quote: func(q *testQuote) { q.body.TDAttributes[3] |= tdAttributeMigratable }, want: []string{"TD attributes 0000003000000000 have MIGRATABLE set"}},
		{name: "migratable TD allowed", quote: func(q *testQuote) { q.body.TDAttributes[3] |= tdAttributeMigratable }, policy: func(p *Policy) { p.AllowMigratable = true }},
		{name: "SEPT_VE_DISABLE clear", quote: func(q *testQuote) { q.body.TDAttributes[3] &^= tdAttributeSEPTVEDisable }, want: []string{"TD attributes 0000000000000000 have SEPT_VE_DISABLE clear"}},
		{name: "SEPT_VE_DISABLE clear, policy expects it", quote: func(q *testQuote) { q.body.TDAttributes[3] &^= tdAttributeSEPTVEDisable },
			policy: func(p *Policy) { p.TDAttributes = HexBytes{0, 0, 0, 0, 0, 0, 0, 0} }, want: []string{"SEPT_VE_DISABLE clear"}},
		{name: "migratable TD, policy expects it", quote: func(q *testQuote) { q.body.TDAttributes[3] |= tdAttributeMigratable },
			policy: func(p *Policy) { p.TDAttributes = HexBytes{0, 0, 0, 0x30, 0, 0, 0, 0} }, want: []string{"invalid"}},
		{name: "TD attributes", policy: func(p *Policy) { p.TDAttributes = HexBytes{0, 0, 0, 0, 0, 0, 0, 0} }, want: []string{"TD attributes are 0000001000000000, want 0000000000000000"}},
		{name: "TD attributes match", policy: func(p *Policy) { p.TDAttributes = HexBytes{0, 0, 0, 0x10, 0, 0, 0, 0} }},
		{name: "minimum TEE TCB SVN", policy: func(p *Policy) { p.MinTEETCBSVN = HexBytes{3, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} },
			want: []string{"TEE_TCB_SVN[2] is 5, the policy requires at least 6"}},
		{name: "minimum TEE TCB SVN met", policy: func(p *Policy) { p.MinTEETCBSVN = HexBytes{3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} }},
		{name: "out-of-date TCB", quote: func(q *testQuote) { q.body.TEETCBSVN[2] = 4 }, want: []string{"TCB status OutOfDate is not accepted (accepted: UpToDate)"}},
		{name: "out-of-date TCB accepted", quote: func(q *testQuote) { q.body.TEETCBSVN[2] = 4 },
			policy: func(p *Policy) { p.AcceptedTCBStatuses = []TCBStatus{TCBStatusUpToDate, TCBStatusOutOfDate} }},
		{name: "out-of-date TCB not in the list", quote: func(q *testQuote) { q.body.TEETCBSVN[2] = 4 },
			policy: func(p *Policy) { p.AcceptedTCBStatuses = []TCBStatus{TCBStatusSWHardeningNeeded} }, want: []string{"TCB status OutOfDate is not accepted (accepted: SWHardeningNeeded)"}},
		{name: "unsupported TCB", quote: func(q *testQuote) { q.body.TEETCBSVN[2] = 1 }, want: []string{"TCB status NotSupported is not accepted", "no TCB level of the TCB info matches the platform"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tq := p.newQuote()
			tq.body.ReportData = rd
			if tc.quote != nil {
				tc.quote(tq)
			}
			v, err := p.verify(t, p.build(t, tq), c)
			if err != nil {
				t.Fatal(err)
			}
			pol := testPolicy(rd)
			if tc.policy != nil {
				tc.policy(pol)
			}
			err = pol.Check(v)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Check = %v, want success", err)
				}
				return
			}
			if tc.want[0] == "invalid" {
				if !errors.Is(err, ErrInvalidPolicy) {
					t.Fatalf("Check = %v, want ErrInvalidPolicy", err)
				}
				return
			}
			var pe *PolicyError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPolicy) {
				t.Fatalf("Check = %v, want a *PolicyError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check = %v, want it to mention %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "TDX quote: ") {
				t.Errorf("error %q does not say it is about a TDX quote", err)
			}
		})
	}
}

func TestPolicyDebugMessage(t *testing.T) {
	p := newTestPKI(t)
	tq := p.newQuote()
	tq.body.TDAttributes[0] |= 1
	v, err := p.verify(t, p.build(t, tq), p.collateral(t, p.newCollateral()))
	if err != nil {
		t.Fatal(err)
	}
	if err := testPolicy(tq.body.ReportData).Check(v); err == nil || err.Error() != "TDX quote: TD attributes have DEBUG set" {
		t.Fatalf("Check = %v", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	mrtd := HexBytes(bytes.Repeat([]byte{1}, 48))
	for _, tc := range []struct {
		name string
		p    Policy
		want string
	}{
		{"short MRTD", Policy{MRTD: []HexBytes{mrtd[:47]}}, "mrtd[0] has 47 bytes, want 48"},
		{"empty MRTD entry", Policy{MRTD: []HexBytes{mrtd, {}}}, "mrtd[1] has 0 bytes"},
		{"long RTMR2", Policy{MRTD: []HexBytes{mrtd}, RTMR2: append(mrtd, 0)}, "rtmr2 has 49 bytes"},
		{"MRSEAM", Policy{MRTD: []HexBytes{mrtd}, MRSEAM: []HexBytes{{1}}}, "mrseam[0] has 1 bytes"},
		{"XFAM", Policy{MRTD: []HexBytes{mrtd}, XFAM: HexBytes{1}}, "xfam has 1 bytes, want 8"},
		{"debug attributes", Policy{MRTD: []HexBytes{mrtd}, TDAttributes: HexBytes{1, 0, 0, 0, 0, 0, 0, 0}}, "debug bits"},
		{"TEE TCB SVN", Policy{MRTD: []HexBytes{mrtd}, MinTEETCBSVN: HexBytes{1}}, "minTEETCBSVN has 1 bytes, want 16"},
		{"REPORT_DATA", Policy{MRTD: []HexBytes{mrtd}, ReportData: HexBytes{1}}, "reportData has 1 bytes, want 64"},
		{"revoked", Policy{MRTD: []HexBytes{mrtd}, AcceptedTCBStatuses: []TCBStatus{TCBStatusRevoked}}, "TCB status Revoked cannot be accepted"},
		{"unknown status", Policy{MRTD: []HexBytes{mrtd}, AcceptedTCBStatuses: []TCBStatus{"Fine"}}, `"Fine" is not a TCB status`},
	} {
		if err := tc.p.Validate(); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want %q", tc.name, err, tc.want)
		}
	}
	ok := Policy{MRTD: []HexBytes{mrtd}, AcceptedTCBStatuses: []TCBStatus{TCBStatusUpToDate, TCBStatusSWHardeningNeeded}}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid policy: %v", err)
	}
}

func TestParsePolicy(t *testing.T) {
	mrtd := strings.Repeat("ab", 48)
	raw := `{"mrtd": ["` + mrtd + `"], "rtmr1": "` + strings.Repeat("01", 48) + `", "acceptedTCBStatuses": ["UpToDate", "SWHardeningNeeded"], "minTEETCBSVN": "03000500000000000000000000000000"}`
	p, err := ParsePolicy([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.MRTD) != 1 || p.MRTD[0].String() != mrtd || len(p.RTMR1) != 48 || p.RTMR0 != nil || len(p.AcceptedTCBStatuses) != 2 {
		t.Errorf("parsed %+v", p)
	}
	// Round trip.
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := ParsePolicy(out)
	if err != nil {
		t.Fatalf("re-parsing %s: %v", out, err)
	}
	if p2.MRTD[0].String() != mrtd || !bytes.Equal(p2.RTMR1, p.RTMR1) || !bytes.Equal(p2.MinTEETCBSVN, p.MinTEETCBSVN) {
		t.Errorf("round trip: %s", out)
	}

	for _, bad := range []string{
		``,
		`{}`,
		`{"mrtd": []}`,
		`{"mrtd": ["` + mrtd + `"], "allowDebug": true}`,
		`{"mrtd": ["` + mrtd + `"]} {}`,
		`{"mrtd": ["zz"]}`,
		`{"mrtd": [1]}`,
		`{"mrtd": ["` + mrtd + `"], "acceptedTCBStatuses": ["Revoked"]}`,
		`{"mrtd": ["` + mrtd + `"], "acceptedTCBStatuses": ["NotSupported"]}`,
	} {
		if _, err := ParsePolicy([]byte(bad)); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("ParsePolicy(%q) = %v, want ErrInvalidPolicy", bad, err)
		}
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"mrtd": ["` + strings.Repeat("ab", 48) + `"], "rtmr0": "` + strings.Repeat("01", 48) + `", "acceptedTCBStatuses": ["UpToDate"]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			return
		}
		// Whatever parses is a usable policy that accepts at least one MRTD and never a debug TD.
		if len(p.MRTD) == 0 || p.Validate() != nil {
			t.Fatalf("ParsePolicy accepted an unusable policy: %+v", p)
		}
		if len(p.TDAttributes) == 8 && p.TDAttributes[0]&tdAttributesTUD != 0 {
			t.Fatal("ParsePolicy accepted debug TD attributes")
		}
	})
}
