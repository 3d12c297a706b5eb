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
		"short host data":     {func(p *Policy) { p.HostData = make([]byte, 31) }, "hostData has 31 bytes, want 32"},
		"long host data":      {func(p *Policy) { p.HostData = make([]byte, 33) }, "hostData has 33 bytes, want 32"},
		"empty host data":     {func(p *Policy) { p.HostData = HexBytes{} }, "hostData has 0 bytes, want 32"},
		"zero firmware":       {func(p *Policy) { p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {}} }, "minimumFirmware of Milan is 0.0.0"},
		"firmware for a product not accepted": {func(p *Policy) {
			p.MinimumFirmware = map[Product]FirmwareVersion{Milan: defaultTestFirmware, Genoa: defaultTestFirmware}
		}, "minimumFirmware has an entry for Genoa, which minimumTCB does not accept"},
		"accepted product without firmware": {func(p *Policy) {
			p.MinimumTCB[Genoa] = defaultTestTCB
			p.MinimumFirmware = map[Product]FirmwareVersion{Milan: defaultTestFirmware}
		}, "minimumFirmware has no entry for Genoa"},
		"firmware for unknown product": {func(p *Policy) {
			p.MinimumFirmware = map[Product]FirmwareVersion{Milan: defaultTestFirmware, Product(9): defaultTestFirmware}
		}, "minimumFirmware for unknown product 9"},
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
		"HOST_DATA":              {reportOptions{hostData: [32]byte{0x40}}, func(p *Policy) { p.HostData = append(make([]byte, 31), 0x40) }, "HOST_DATA 4000", ErrHostData},
		"HOST_DATA zero":         {reportOptions{}, func(p *Policy) { p.HostData = append(make([]byte, 31), 1) }, "does not match the policy's hostData", ErrHostData},
		"current firmware build": {reportOptions{}, func(p *Policy) { p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 55, 11}} }, "current firmware 1.55.10 below minimum 1.55.11", ErrFirmware},
		"firmware minor":         {reportOptions{}, func(p *Policy) { p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 56, 0}} }, "committed firmware 1.55.10 below minimum 1.56.0", ErrFirmware},
		// Numeric, not string, comparison: 1.9.0 < 1.55.10 < 1.100.0 (as strings, "1.9" > "1.55" > "1.100").
		"firmware numeric":        {reportOptions{currentFW: &FirmwareVersion{1, 9, 0}, committedFW: &FirmwareVersion{1, 9, 0}}, func(p *Policy) { p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 55, 10}} }, "current firmware 1.9.0 below minimum 1.55.10", ErrFirmware},
		"committed firmware only": {reportOptions{committedFW: &FirmwareVersion{1, 55, 9}}, func(p *Policy) { p.MinimumFirmware = map[Product]FirmwareVersion{Milan: defaultTestFirmware} }, "committed firmware 1.55.9 below minimum 1.55.10", ErrFirmware},
		"firmware not stated":     {reportOptions{currentFW: &FirmwareVersion{}, committedFW: &FirmwareVersion{}}, func(p *Policy) { p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 0, 0}} }, "the report states no current firmware version", ErrFirmware},
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

// TestPolicyHostDataAndFirmwareAccept checks that matching HOST_DATA and firmware at or above the minimum
// pass, including a minimum whose parts are higher than the report's as strings but lower as numbers.
func TestPolicyHostDataAndFirmwareAccept(t *testing.T) {
	o := reportOptions{hostData: [32]byte{1, 2, 3}, currentFW: &FirmwareVersion{1, 100, 2}, committedFW: &FirmwareVersion{1, 55, 10}}
	ev := newTestEvidence(t, o)
	for _, minFW := range []FirmwareVersion{{1, 55, 10}, {1, 9, 200}, {0, 255, 255}} {
		p := testPolicy(o)
		p.HostData = o.hostData[:]
		p.MinimumFirmware = map[Product]FirmwareVersion{Milan: minFW}
		if _, err := Validate(testVerifier(t, ev.roots, nil), p, ev.raw, ev.certs); err != nil {
			t.Errorf("minimum %v: %v", minFW, err)
		}
	}
}

// TestGenuinePolicyHostDataAndFirmware checks HOST_DATA and the firmware minimum on the genuine report
// (HOST_DATA all zero, firmware 1.49.3 current and committed) and on mutated copies of it. A mutated copy
// no longer verifies, so the policy step runs on a VerifiedReport made from the verified genuine one with
// the mutated report in its place.
func TestGenuinePolicyHostDataAndFirmware(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	vr, err := genuineVerifier(t).Verify(mustParse(t, raw), genuineCerts(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := vr.Report.CurrentFirmware(); got != (FirmwareVersion{1, 49, 3}) || vr.Report.CommittedFirmware() != got {
		t.Fatalf("genuine firmware: current %v, committed %v", got, vr.Report.CommittedFirmware())
	}
	p := genuinePolicy(t)
	p.HostData = make([]byte, 32)
	p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 49, 3}}
	if err := p.Check(vr); err != nil {
		t.Fatalf("genuine report, its own HOST_DATA and firmware: %v", err)
	}
	mutated := func(mutate func(b []byte)) *VerifiedReport {
		b := append([]byte(nil), raw...)
		mutate(b)
		if _, err := genuineVerifier(t).Verify(mustParse(t, b), genuineCerts(t)); !errors.Is(err, ErrSignature) {
			t.Fatalf("mutated genuine report: %v, want ErrSignature", err)
		}
		c := *vr
		c.Report = mustParse(t, b)
		return &c
	}
	for name, tc := range map[string]struct {
		mutate  func(b []byte)
		policy  func(p *Policy)
		want    []string
		wantErr error
	}{
		"HOST_DATA last byte":     {func(b []byte) { b[0xdf] ^= 1 }, nil, []string{"HOST_DATA " + strings.Repeat("00", 31) + "01 does not match"}, ErrHostData},
		"HOST_DATA first byte":    {func(b []byte) { b[0xc0] = 0x80 }, nil, []string{"HOST_DATA 80"}, ErrHostData},
		"current build lowered":   {func(b []byte) { b[0x1e8] = 2 }, nil, []string{"current firmware 1.49.2 below minimum 1.49.3"}, ErrFirmware},
		"committed minor lowered": {func(b []byte) { b[0x1ed] = 48 }, nil, []string{"committed firmware 1.48.3 below minimum 1.49.3"}, ErrFirmware},
		"firmware fields zero":    {func(b []byte) { clear(b[0x1e8:0x1ef]) }, nil, []string{"states no current firmware version", "states no committed firmware version"}, ErrFirmware},
		"numeric minimum":         {nil, func(p *Policy) { p.MinimumFirmware[Milan] = FirmwareVersion{1, 100, 0} }, []string{"current firmware 1.49.3 below minimum 1.100.0", "committed firmware 1.49.3 below minimum 1.100.0"}, ErrFirmware},
	} {
		t.Run(name, func(t *testing.T) {
			target := vr
			if tc.mutate != nil {
				target = mutated(tc.mutate)
			}
			p := genuinePolicy(t)
			p.HostData = make([]byte, 32)
			p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 49, 3}}
			if tc.policy != nil {
				tc.policy(p)
			}
			err := p.Check(target)
			if !errors.Is(err, ErrPolicy) || !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want ErrPolicy and %v", err, tc.wantErr)
			}
			var pe *PolicyError
			if !errors.As(err, &pe) || len(pe.Violations) != len(tc.want) {
				t.Fatalf("got %v, want exactly %q", err, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %v, want it to name %q", err, w)
				}
			}
			if tc.wantErr == ErrHostData && errors.Is(err, ErrFirmware) || tc.wantErr == ErrFirmware && errors.Is(err, ErrHostData) {
				t.Errorf("%v matches the other check's error", err)
			}
		})
	}
	// Without hostData in the policy, any HOST_DATA is accepted.
	p = genuinePolicy(t)
	if err := p.Check(mutated(func(b []byte) { b[0xc0] = 0x80 })); err != nil {
		t.Errorf("no hostData in the policy: %v", err)
	}
}

func TestParseFirmwareVersion(t *testing.T) {
	for in, want := range map[string]FirmwareVersion{"1.55.21": {1, 55, 21}, "0.0.0": {}, "255.255.255": {255, 255, 255}, "1.9.0": {1, 9, 0}} {
		got, err := ParseFirmwareVersion(in)
		if err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
		if got.String() != in {
			t.Errorf("%q prints as %q", in, got)
		}
	}
	for _, in := range []string{"", "1", "1.55", "1.55.21.0", "1.55.256", "1..2", "1.55.-1", "1.55.+1", " 1.55.21", "1.55.021", "1.5a.2", "1.55.21\n", "0x1.2.3", "1000.1.1"} {
		if v, err := ParseFirmwareVersion(in); err == nil {
			t.Errorf("%q accepted as %v", in, v)
		}
	}
	if (FirmwareVersion{1, 9, 0}).Compare(FirmwareVersion{1, 55, 0}) != -1 || (FirmwareVersion{2, 0, 0}).Compare(FirmwareVersion{1, 255, 255}) != 1 || (FirmwareVersion{1, 2, 3}).Compare(FirmwareVersion{1, 2, 3}) != 0 {
		t.Error("Compare is not numeric")
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
	p.HostData = append(make([]byte, 31), 0xab)
	p.MinimumFirmware = map[Product]FirmwareVersion{Milan: {1, 55, 21}, Turin: {1, 9, 100}}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"Milan":{"bootloader":3`) || !strings.Contains(string(data), `"measurements":["0100`) ||
		!strings.Contains(string(data), `"minimumFirmware":{"Milan":"1.55.21","Turin":"1.9.100"}`) || !strings.Contains(string(data), `"hostData":"00000000000000000000000000000000000000000000000000000000000000ab"`) {
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
		"unknown field":              {strings.Replace(valid, `"vmpl"`, `"vmpL2"`, 1), "unknown field"},
		"trailing data":              {valid + "{}", "trailing data"},
		"field twice":                {strings.Replace(valid, `"vmpl"`, `"vmpl":3,"vmpl"`, 1), `key "vmpl" twice`},
		"field in another case":      {strings.Replace(valid, `"vmpl"`, `"VMPL"`, 1), `must be spelled "vmpl"`},
		"odd hex":                    {strings.Replace(valid, `"reportData":"02`, `"reportData":"0`, 1), "hexadecimal"},
		"hex not string":             {strings.Replace(valid, `"reportData":"`, `"reportData":1,"x":"`, 1), "hexadecimal string"},
		"unknown product":            {strings.Replace(valid, `"Milan"`, `"Rome"`, 1), "unknown SEV-SNP product"},
		"empty object":               {"{}", "no accepted launch measurement"},
		"not JSON":                   {"minimumTCB: x", "invalid character"},
		"empty":                      {"", "no JSON value"},
		"firmware as string compare": {strings.Replace(valid, `"1.55.21"`, `"1.55"`, 1), "want major.minor.build"},
		"firmware too high":          {strings.Replace(valid, `"1.55.21"`, `"1.55.300"`, 1), "not a decimal number from 0 to 255"},
		"firmware not a string":      {strings.Replace(valid, `"1.55.21"`, `15521`, 1), "want a string \"major.minor.build\""},
		"host data short":            {strings.Replace(valid, `"hostData":"00`, `"hostData":"`, 1), "hostData has 31 bytes"},
		"host data not hex":          {strings.Replace(valid, `"hostData":"00`, `"hostData":"zz`, 1), "hexadecimal"},
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
