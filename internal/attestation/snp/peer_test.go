package snp

import (
	"errors"
	"testing"
)

// A node trusts a peer of its own launch measurement, at least as patched as itself, on a platform of its own
// product; a peer of another measurement, an older TCB or a debuggable guest is refused.
func TestReportPeerPolicy(t *testing.T) {
	own := reportOptions{measurement: [MeasurementSize]byte{7}, tcb: defaultTestTCB}
	r, err := ParseReport(newTestEvidence(t, own).raw)
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.PeerPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if p.AllowDebug || p.AllowMigrationAgent || p.AllowVLEK || len(p.ReportData) != 0 {
		t.Fatalf("peer policy weakened: %+v", p)
	}
	older := defaultTestTCB
	older.SNP--
	for name, tc := range map[string]struct {
		o    reportOptions
		want error
	}{
		"same image":              {o: own},
		"another measurement":     {o: reportOptions{measurement: [MeasurementSize]byte{8}, tcb: defaultTestTCB}, want: ErrPolicy},
		"an older TCB":            {o: reportOptions{measurement: own.measurement, tcb: older}, want: ErrPolicy},
		"a debuggable guest":      {o: reportOptions{measurement: own.measurement, tcb: defaultTestTCB, policy: 0x30000 | 1<<19}, want: ErrPolicy},
		"a migration agent":       {o: reportOptions{measurement: own.measurement, tcb: defaultTestTCB, policy: 0x30000 | 1<<18}, want: ErrPolicy},
		"another product (Genoa)": {o: reportOptions{measurement: own.measurement, tcb: defaultTestTCB, product: Genoa}, want: ErrPolicy},
	} {
		e := newTestEvidence(t, tc.o)
		roots := testRoots(t, Milan, Genoa)
		_, err := Validate(testVerifier(t, roots, nil), p.WithReportData(tc.o.reportData), e.raw, e.certs)
		if tc.want == nil && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if _, err := (*Report)(nil).PeerPolicy(); err == nil {
		t.Error("a peer policy without a report")
	}
}
