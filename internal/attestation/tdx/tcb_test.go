package tdx

import (
	"strings"
	"testing"
)

func level(sgx [16]byte, pcesvn uint16, tdx [16]byte, st TCBStatus) TCBLevel {
	return TCBLevel{SGXComponents: sgx, PCESVN: pcesvn, TDXComponents: tdx, Status: st}
}

func TestMatchPlatformLevel(t *testing.T) {
	levels := []TCBLevel{
		level([16]byte{9, 9}, 10, [16]byte{3, 0, 10}, TCBStatusUpToDate),
		level([16]byte{9, 9}, 10, [16]byte{3, 0, 9}, TCBStatusSWHardeningNeeded),
		level([16]byte{2, 2}, 2, [16]byte{1, 0, 2}, TCBStatusOutOfDate),
	}
	for _, tc := range []struct {
		name string
		p    platformTCB
		want int
		why  string
	}{
		// Numbers, not strings: 10 >= 9 although "10" < "9".
		{"two-digit SVNs", platformTCB{[16]byte{10, 10}, 10, [16]byte{3, 0, 10}}, 0, ""},
		{"one TDX component lower", platformTCB{[16]byte{10, 10}, 10, [16]byte{3, 0, 9}}, 1, ""},
		{"one SGX component lower", platformTCB{[16]byte{10, 8}, 10, [16]byte{3, 0, 10}}, 2, ""},
		{"PCESVN lower", platformTCB{[16]byte{10, 10}, 9, [16]byte{3, 0, 10}}, 2, ""},
		// Component-wise: a higher component does not make up for a lower one.
		{"mixed", platformTCB{[16]byte{200, 1}, 200, [16]byte{200, 0, 200}}, -1, "PCK SGX TCB component 2 is 1, the level needs 9"},
		{"below all", platformTCB{[16]byte{1, 1}, 1, [16]byte{0}}, -1, "level 2 (OutOfDate, 0001-01-01): PCK SGX TCB component 1 is 1, the level needs 2"},
		{"TEE component 15", platformTCB{[16]byte{9, 9}, 10, [16]byte{3, 0, 10}}, 0, ""},
	} {
		got, why := matchPlatformLevel(levels, tc.p)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%s: level %d (%q), want %d (%q)", tc.name, got, why, tc.want, tc.why)
		}
	}

	// The last TEE TCB SVN component counts too.
	lv := []TCBLevel{level([16]byte{}, 0, [16]byte{15: 1}, TCBStatusUpToDate)}
	if got, _ := matchPlatformLevel(lv, platformTCB{}); got != -1 {
		t.Error("TEE_TCB_SVN[15] below the level matched")
	}
	// With TEE_TCB_SVN[1] > 0, components 0 and 1 are left to the TDX module identity.
	lv = []TCBLevel{level([16]byte{}, 0, [16]byte{9, 9, 3}, TCBStatusUpToDate)}
	if got, _ := matchPlatformLevel(lv, platformTCB{teeTCBSVN: [16]byte{1, 1, 3}}); got != 0 {
		t.Error("TEE_TCB_SVN[0:2] compared although TEE_TCB_SVN[1] > 0")
	}
	if got, _ := matchPlatformLevel(lv, platformTCB{teeTCBSVN: [16]byte{1, 0, 3}}); got != -1 {
		t.Error("TEE_TCB_SVN[0] not compared although TEE_TCB_SVN[1] == 0")
	}
}

func TestEvaluatePlatformModuleIdentities(t *testing.T) {
	info := &TCBInfo{
		TCBLevels: []TCBLevel{
			level([16]byte{}, 0, [16]byte{0, 1, 5}, TCBStatusUpToDate),
			level([16]byte{}, 0, [16]byte{0, 1, 2}, TCBStatusConfigurationNeeded),
			level([16]byte{}, 0, [16]byte{4, 0, 2}, TCBStatusUpToDate),
		},
		TDXModuleIdentities: []TDXModuleIdentity{{
			ID:        "TDX_01",
			TDXModule: TDXModule{AttributesMask: [8]byte{0xff}},
			TCBLevels: []SVNLevel{{ISVSVN: 4, Status: TCBStatusUpToDate}, {ISVSVN: 2, Status: TCBStatusOutOfDate, AdvisoryIDs: []string{"INTEL-SA-1"}}},
		}},
	}
	body := &TDReport{}
	for _, tc := range []struct {
		name        string
		tee         [16]byte
		want        TCBStatus
		wantModule  TCBStatus
		wantReason  string
		wantAdvisor int
	}{
		{"module up to date", [16]byte{4, 1, 5}, TCBStatusUpToDate, TCBStatusUpToDate, "", 0},
		{"module out of date", [16]byte{3, 1, 5}, TCBStatusOutOfDate, TCBStatusOutOfDate, "", 1},
		{"module out of date, platform needs configuration", [16]byte{2, 1, 2}, TCBStatusOutOfDateConfigurationNeeded, TCBStatusOutOfDate, "", 1},
		{"module below every level", [16]byte{1, 1, 5}, TCBStatusNotSupported, TCBStatusNotSupported, "no TCB level of TDX module identity TDX_01 matches TEE_TCB_SVN[0] = 1", 0},
		{"unknown module version", [16]byte{4, 3, 5}, TCBStatusNotSupported, "", "TCB level 0 is for TDX module major version 1, the quote's TEE_TCB_SVN[1] is 3", 0},
		{"major version 0", [16]byte{4, 0, 2}, TCBStatusUpToDate, "", "", 0},
	} {
		ev, err := evaluatePlatform(info, platformTCB{teeTCBSVN: tc.tee}, body)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ev.Status != tc.want || ev.Module != tc.wantModule || !strings.Contains(ev.Reason, tc.wantReason) || len(ev.AdvisoryIDs) != tc.wantAdvisor {
			t.Errorf("%s: %+v, want status %s, module %q, reason %q", tc.name, ev, tc.want, tc.wantModule, tc.wantReason)
		}
	}

	// No identity for the module version.
	info.TCBLevels = append(info.TCBLevels, level([16]byte{}, 0, [16]byte{0, 2, 0}, TCBStatusUpToDate))
	ev, err := evaluatePlatform(info, platformTCB{teeTCBSVN: [16]byte{9, 2, 0}}, body)
	if err != nil || ev.Status != TCBStatusNotSupported || !strings.Contains(ev.Reason, "no TDX module identity TDX_02") {
		t.Errorf("missing module identity: %+v, %v", ev, err)
	}
	// The module identity's signer must match.
	body.MRSignerSEAM[0] = 1
	if _, err := evaluatePlatform(info, platformTCB{teeTCBSVN: [16]byte{4, 1, 5}}, body); err == nil || !strings.Contains(err.Error(), "TDX module identity TDX_01") {
		t.Errorf("module signer mismatch: %v", err)
	}
}

func TestLowerBy(t *testing.T) {
	for _, tc := range []struct{ platform, component, want TCBStatus }{
		{TCBStatusUpToDate, TCBStatusUpToDate, TCBStatusUpToDate},
		{TCBStatusSWHardeningNeeded, TCBStatusUpToDate, TCBStatusSWHardeningNeeded},
		{TCBStatusUpToDate, TCBStatusOutOfDate, TCBStatusOutOfDate},
		{TCBStatusSWHardeningNeeded, TCBStatusOutOfDate, TCBStatusOutOfDate},
		{TCBStatusConfigurationNeeded, TCBStatusOutOfDate, TCBStatusOutOfDateConfigurationNeeded},
		{TCBStatusConfigurationAndSWHardeningNeeded, TCBStatusOutOfDate, TCBStatusOutOfDateConfigurationNeeded},
		{TCBStatusUpToDate, TCBStatusRevoked, TCBStatusRevoked},
		{TCBStatusRevoked, TCBStatusUpToDate, TCBStatusRevoked},
		{TCBStatusUpToDate, TCBStatusNotSupported, TCBStatusNotSupported},
		{TCBStatusNotSupported, TCBStatusUpToDate, TCBStatusNotSupported},
		{TCBStatusUpToDate, TCBStatusSWHardeningNeeded, TCBStatusSWHardeningNeeded},
		{TCBStatusConfigurationNeeded, TCBStatusSWHardeningNeeded, TCBStatusConfigurationNeeded},
	} {
		if got := lowerBy(tc.platform, tc.component); got != tc.want {
			t.Errorf("lowerBy(%s, %s) = %s, want %s", tc.platform, tc.component, got, tc.want)
		}
	}
}

func TestEvaluateTCBQE(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		name     string
		isvsvn   uint16
		levels   []map[string]any
		want, qe TCBStatus
	}{
		{"QE up to date", 4, []map[string]any{svnLevel(4, "UpToDate")}, TCBStatusUpToDate, TCBStatusUpToDate},
		{"QE newer than every level", 9, []map[string]any{svnLevel(4, "UpToDate")}, TCBStatusUpToDate, TCBStatusUpToDate},
		{"QE out of date", 3, []map[string]any{svnLevel(4, "UpToDate"), svnLevel(2, "OutOfDate")}, TCBStatusOutOfDate, TCBStatusOutOfDate},
		{"QE revoked", 1, []map[string]any{svnLevel(4, "UpToDate"), svnLevel(0, "Revoked")}, TCBStatusRevoked, TCBStatusRevoked},
		{"QE below every level", 1, []map[string]any{svnLevel(4, "UpToDate")}, TCBStatusNotSupported, TCBStatusNotSupported},
	} {
		tc2 := p.newCollateral()
		tc2.qeLevels = tc.levels
		tq := p.newQuote()
		tq.qe.ISVSVN = tc.isvsvn
		v, err := p.verify(t, p.build(t, tq), p.collateral(t, tc2))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if v.TCB.Status != tc.want || v.TCB.QE != tc.qe || v.TCB.Platform != TCBStatusUpToDate {
			t.Errorf("%s: %+v, want %s (QE %s)", tc.name, v.TCB, tc.want, tc.qe)
		}
	}
}
