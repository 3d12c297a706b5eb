package snp

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestGenuinePolicy(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	v := genuineVerifier(t)
	if _, err := Validate(v, genuinePolicy(t), raw, genuineCerts(t)); err != nil {
		t.Fatal(err)
	}
	// The recorded guest was launched with debugging allowed and runs with SMT: a production policy, which
	// allows neither, rejects it and says why.
	p := genuinePolicy(t)
	p.AllowDebug, p.AllowSMT = false, false
	_, err := Validate(v, p, raw, genuineCerts(t))
	var pe *PolicyError
	if !errors.As(err, &pe) || len(pe.Violations) != 2 || !strings.Contains(err.Error(), "DEBUG bit set") || !strings.Contains(err.Error(), "SMT is enabled") {
		t.Errorf("got %v, want the debug and SMT violations", err)
	}
	// Raising the minimum microcode by one rejects it.
	p = genuinePolicy(t)
	p.MinimumTCB[Milan] = TCB{Bootloader: 2, SNP: 5, Microcode: 69}
	_, err = Validate(v, p, raw, genuineCerts(t))
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "reported TCB microcode 68 below minimum 69") || !strings.Contains(err.Error(), "committed TCB microcode 68 below minimum 69") {
		t.Errorf("raised microcode minimum: %v", err)
	}
}

func TestEmptyPolicyDenies(t *testing.T) {
	ev := newTestEvidence(t, reportOptions{})
	v := testVerifier(t, ev.roots, nil)
	r, _ := ParseReport(ev.raw)
	vr, err := v.Verify(r, ev.certs)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*Policy{"zero": {}, "nil": nil, "only measurement": {Measurements: []HexBytes{make([]byte, 48)}}} {
		if err := p.Check(vr); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%s policy: %v, want ErrInvalidPolicy", name, err)
		}
		if _, err := Validate(v, p, ev.raw, ev.certs); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%s policy, Validate: %v, want ErrInvalidPolicy", name, err)
		}
	}
	err = (&Policy{}).Validate()
	for _, want := range []string{"reportData has 0 bytes", "no accepted launch measurement", "no accepted product"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("zero policy: %v, want it to name %q", err, want)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	base := func() *Policy { return testPolicy(reportOptions{}) }
	if err := base().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mutate func(p *Policy)
		want   string
	}{
		"short report data":   {func(p *Policy) { p.ReportData = p.ReportData[:32] }, "reportData has 32 bytes"},
		"short measurement":   {func(p *Policy) { p.Measurements = append(p.Measurements, make([]byte, 32)) }, "measurement 1 has 32 bytes"},
		"zero SNP minimum":    {func(p *Policy) { p.MinimumTCB[Milan] = TCB{Microcode: 1} }, "accepts every SNP firmware"},
		"zero microcode":      {func(p *Policy) { p.MinimumTCB[Milan] = TCB{SNP: 1} }, "accepts every SNP firmware or microcode"},
		"FMC for Genoa":       {func(p *Policy) { p.MinimumTCB[Genoa] = TCB{SNP: 1, Microcode: 1, FMC: 1} }, "only Turin"},
		"unknown product":     {func(p *Policy) { p.MinimumTCB[Product(9)] = TCB{SNP: 1, Microcode: 1} }, "unknown product"},
		"VMPL 4":              {func(p *Policy) { p.VMPL = 4 }, "vmpl 4"},
		"report version 1":    {func(p *Policy) { p.MinimumReportVersion = 1 }, "minimumReportVersion 1"},
		"report version 9":    {func(p *Policy) { p.MinimumReportVersion = 9 }, "minimumReportVersion 9"},
		"short ID key digest": {func(p *Policy) { p.IDKeyDigests = []HexBytes{{1}} }, "idKeyDigests[0] has 1 bytes"},
		"short author digest": {func(p *Policy) { p.AuthorKeyDigests = []HexBytes{{1}} }, "authorKeyDigests[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			p := base()
			tc.mutate(p)
			if err := p.Validate(); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalidPolicy naming %q", err, tc.want)
			}
		})
	}
}

// TestPolicyViolations checks each policy rule with a report the test signs: the report passes a policy
// made for it and fails after exactly one change, with a message that names the rule.
func TestPolicyViolations(t *testing.T) {
	idKey := [48]byte{0x1d}
	authorKey := [48]byte{0xa0}
	tests := map[string]struct {
		report  reportOptions
		policy  func(p *Policy)
		want    string
		wantErr error
	}{
		"debug":                  {reportOptions{policy: 0xb0000}, nil, "DEBUG bit set", nil},
		"migration agent":        {reportOptions{policy: 0x70000}, nil, "migration agent", nil},
		"SMT enabled":            {reportOptions{platform: 1}, nil, "SMT is enabled", nil},
		"VMPL":                   {reportOptions{vmpl: 1}, nil, "VMPL 1, want 0", nil},
		"wrong VMPL expected":    {reportOptions{}, func(p *Policy) { p.VMPL = 2 }, "VMPL 0, want 2", nil},
		"measurement":            {reportOptions{}, func(p *Policy) { p.Measurements = []HexBytes{make([]byte, 48)} }, "is not one of the 1 accepted measurements", nil},
		"REPORT_DATA":            {reportOptions{}, func(p *Policy) { p.ReportData = make([]byte, 64); p.ReportData[63] = 1 }, "REPORT_DATA", ErrReportData},
		"product":                {reportOptions{}, func(p *Policy) { p.MinimumTCB = map[Product]TCB{Genoa: defaultTestTCB} }, "product Milan is not accepted (accepted: Genoa)", nil},
		"report version":         {reportOptions{version: 2}, func(p *Policy) { p.MinimumReportVersion = 3 }, "report version 2 below minimum 3", nil},
		"VLEK":                   {reportOptions{vlek: true}, nil, "signed by a VLEK", nil},
		"bootloader":             {reportOptions{}, func(p *Policy) { p.MinimumTCB[Milan] = TCB{Bootloader: 4, SNP: 8, Microcode: 115} }, "reported TCB bootloader 3 below minimum 4", nil},
		"TEE":                    {reportOptions{}, func(p *Policy) { p.MinimumTCB[Milan] = TCB{Bootloader: 3, TEE: 1, SNP: 8, Microcode: 115} }, "reported TCB TEE 0 below minimum 1", nil},
		"SNP firmware":           {reportOptions{}, func(p *Policy) { p.MinimumTCB[Milan] = TCB{Bootloader: 3, SNP: 9, Microcode: 115} }, "reported TCB SNP firmware 8 below minimum 9", nil},
		"microcode":              {reportOptions{}, func(p *Policy) { p.MinimumTCB[Milan] = TCB{Bootloader: 3, SNP: 8, Microcode: 116} }, "reported TCB microcode 115 below minimum 116", nil},
		"committed TCB":          {reportOptions{committed: &TCB{Bootloader: 3, SNP: 7, Microcode: 115}}, nil, "committed TCB SNP firmware 7 below minimum 8", nil},
		"Turin FMC":              {reportOptions{product: Turin, tcb: TCB{FMC: 1, Bootloader: 1, SNP: 1, Microcode: 1}}, func(p *Policy) { p.MinimumTCB[Turin] = TCB{FMC: 2, Bootloader: 1, SNP: 1, Microcode: 1} }, "reported TCB FMC 1 below minimum 2", nil},
		"no ID block":            {reportOptions{}, func(p *Policy) { p.IDKeyDigests = []HexBytes{idKey[:]} }, "without an ID block", nil},
		"other ID key":           {reportOptions{idKey: [48]byte{0x2d}}, func(p *Policy) { p.IDKeyDigests = []HexBytes{idKey[:]} }, "ID key digest 2d", nil},
		"no author key":          {reportOptions{idKey: idKey}, func(p *Policy) { p.AuthorKeyDigests = []HexBytes{authorKey[:]} }, "no author key", nil},
		"other author key":       {reportOptions{idKey: idKey, authorKey: &[48]byte{0xb0}}, func(p *Policy) { p.AuthorKeyDigests = []HexBytes{authorKey[:]} }, "author key digest b0", nil},
		"missing CRL disallowed": {reportOptions{}, func(p *Policy) { p.AllowMissingCRL = false }, "revocation not checked: no CRL of the Milan ARK", ErrCRLUnavailable},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.report.measurement = [48]byte{0x4d, 0x45}
			tc.report.reportData = [64]byte{0x4e}
			ev := newTestEvidence(t, tc.report)
			vr, err := testVerifier(t, ev.roots, nil).Verify(mustParse(t, ev.raw), ev.certs)
			if err != nil {
				t.Fatal(err)
			}
			p := testPolicy(tc.report)
			if tc.report.product == Turin {
				p.MinimumTCB = map[Product]TCB{Turin: tc.report.tcb}
			}
			// The policy made for the report accepts it once the rule under test is relaxed.
			relaxed := *p
			relaxed.AllowDebug, relaxed.AllowMigrationAgent, relaxed.AllowSMT, relaxed.AllowVLEK = true, true, true, true
			relaxed.VMPL = tc.report.vmpl
			if tc.report.committed != nil {
				relaxed.MinimumTCB = map[Product]TCB{Milan: *tc.report.committed}
			}
			if err := relaxed.Check(vr); err != nil {
				t.Fatalf("relaxed policy: %v", err)
			}
			if tc.policy != nil {
				tc.policy(p)
			}
			err = p.Check(vr)
			if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrPolicy naming %q", err, tc.want)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, want it to match %v", err, tc.wantErr)
			}
		})
	}
}

func TestPolicyAcceptsIDAndAuthorKeys(t *testing.T) {
	o := reportOptions{idKey: [48]byte{0x1d}, authorKey: &[48]byte{0xa0}}
	ev := newTestEvidence(t, o)
	p := testPolicy(o)
	p.IDKeyDigests = []HexBytes{make([]byte, 48), o.idKey[:]}
	p.AuthorKeyDigests = []HexBytes{o.authorKey[:]}
	if _, err := Validate(testVerifier(t, ev.roots, nil), p, ev.raw, ev.certs); err != nil {
		t.Error(err)
	}
}

func mustParse(t testing.TB, raw []byte) *Report {
	t.Helper()
	r, err := ParseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestParsePolicy(t *testing.T) {
	p := testPolicy(reportOptions{measurement: [48]byte{1}, reportData: [64]byte{2}})
	p.MinimumTCB[Turin] = TCB{FMC: 1, Bootloader: 1, SNP: 3, Microcode: 4}
	p.IDKeyDigests = []HexBytes{make([]byte, 48)}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"Milan":{"bootloader":3`) || !strings.Contains(string(data), `"measurements":["0100`) {
		t.Errorf("unexpected encoding %s", data)
	}
	back, err := ParsePolicy(data)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(back)
	if string(again) != string(data) {
		t.Errorf("round trip:\n%s\n%s", data, again)
	}
	valid := string(data)
	for name, tc := range map[string]struct {
		data string
		want string
	}{
		"unknown field":   {strings.Replace(valid, `"vmpl"`, `"vmpL2"`, 1), "unknown field"},
		"trailing data":   {valid + "{}", "trailing data"},
		"odd hex":         {strings.Replace(valid, `"reportData":"02`, `"reportData":"0`, 1), "hexadecimal"},
		"hex not string":  {strings.Replace(valid, `"reportData":"`, `"reportData":1,"x":"`, 1), "hexadecimal string"},
		"unknown product": {strings.Replace(valid, `"Milan"`, `"Rome"`, 1), "unknown SEV-SNP product"},
		"empty object":    {"{}", "no accepted launch measurement"},
		"not JSON":        {"minimumTCB: x", "invalid character"},
		"empty":           {"", "EOF"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tc.data))
			if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalidPolicy naming %q", err, tc.want)
			}
		})
	}
	// Product names are case-insensitive on input.
	lower := strings.Replace(valid, `"Milan"`, `"milan"`, 1)
	if p, err := ParsePolicy([]byte(lower)); err != nil || p.MinimumTCB[Milan] == (TCB{}) {
		t.Errorf("lower-case product: %v", err)
	}
}
