package cli

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
)

// Genuine test vectors of the snp package (see its testdata/README.md) and of package tdxtest.
const (
	snpTestdata = "../attestation/snp/testdata"
	// snpTime and tdxTime lie in the validity of the recorded certificates and collateral.
	snpTime = "2025-06-01"
	tdxTime = "2023-07-01T00:00:00Z"
)

func readTestFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeJSON(t *testing.T, path string, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	write(t, path, raw)
	return path
}

type snpFiles struct {
	dir, report, vcek, chain, table, policy, strict string
}

// writeSNPFiles writes the genuine report's certificate table and policies: one that accepts it (as its
// recorded guest has DEBUG set, runs with SMT and comes without a CRL, the policy must allow all three) and
// one with real minimums that refuses it.
func writeSNPFiles(t *testing.T) snpFiles {
	t.Helper()
	dir := t.TempDir()
	f := snpFiles{
		dir: dir, report: filepath.Join(snpTestdata, "attestation.bin"),
		vcek: filepath.Join(snpTestdata, "vcek.testcer"), chain: filepath.Join(snpTestdata, "milan.testcer"),
		table: filepath.Join(dir, "certs.table"),
	}
	r, err := snp.ParseReport(readTestFile(t, f.report))
	if err != nil {
		t.Fatal(err)
	}
	vcek, err := snp.ParseCertificates(readTestFile(t, f.vcek))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := snp.ParseCertificates(readTestFile(t, f.chain))
	if err != nil {
		t.Fatal(err)
	}
	if err := vcek.Merge(chain); err != nil {
		t.Fatal(err)
	}
	write(t, f.table, snp.MarshalCertTable(vcek))
	accept := &snp.Policy{
		ReportData:   r.ReportData[:],
		Measurements: []snp.HexBytes{r.Measurement[:]},
		MinimumTCB:   map[snp.Product]snp.TCB{snp.Milan: {Bootloader: 2, SNP: 5, Microcode: 68}},
		AllowDebug:   true, AllowSMT: true, AllowMissingCRL: true,
	}
	f.policy = writeJSON(t, filepath.Join(dir, "policy.json"), accept)
	strict := *accept
	strict.AllowDebug, strict.AllowSMT, strict.AllowMissingCRL = false, false, false
	strict.MinimumTCB = map[snp.Product]snp.TCB{snp.Milan: {Bootloader: 3, SNP: 8, Microcode: 115}}
	f.strict = writeJSON(t, filepath.Join(dir, "strict.json"), strict)
	return f
}

func TestVerifyReportSNP(t *testing.T) {
	f := writeSNPFiles(t)
	verify := func(extra ...string) []string {
		return append([]string{"attestation", "verify-report", "--snp-report", f.report}, extra...)
	}
	// The genuine Milan report verifies against the embedded AMD root, with the certificates as AMD serves
	// them or as a certificate table.
	for name, args := range map[string][]string{
		"PEM and DER certificates": verify("--certs", f.vcek, "--certs", f.chain, "--policy", f.policy, "--time", snpTime),
		"certificate table":        verify("--cert-table", f.table, "--policy", f.policy, "--time", snpTime+"T12:00:00Z"),
		"VCEK only":                verify("--certs", f.vcek, "--policy", f.policy, "--time", snpTime),
	} {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := run(args...)
			if code != 0 {
				t.Fatalf("code %d, stderr %q", code, errOut)
			}
			for _, want := range []string{"SEV-SNP report verified and accepted at 2025-06-01", "Milan, signed by the VCEK", "Measurement:  b07af962", "Reported TCB: bootloader=2 tee=0 snp=5 microcode=68", "Accepted only because the policy allows: a debuggable guest, SMT, unchecked revocation"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}

	// A policy with real minimums refuses it: exit 1, with every reason.
	_, errOut, code := run(verify("--certs", f.vcek, "--certs", f.chain, "--policy", f.strict, "--time", snpTime)...)
	if code != 1 {
		t.Fatalf("strict policy: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"violates the policy", "- guest policy allows debugging", "- SMT is enabled", "- reported TCB SNP firmware 5 below minimum 8", "- committed TCB microcode 68 below minimum 115", "- revocation not checked"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("strict policy: stderr lacks %q:\n%s", want, errOut)
		}
	}

	tampered := filepath.Join(f.dir, "tampered.bin")
	raw := readTestFile(t, f.report)
	raw[0x90] ^= 1 // launch measurement
	write(t, tampered, raw)
	reserved := filepath.Join(f.dir, "reserved.bin")
	raw = readTestFile(t, f.report)
	raw[0x4c] = 1 // reserved
	write(t, reserved, raw)
	short := filepath.Join(f.dir, "short.bin")
	write(t, short, readTestFile(t, f.report)[:1000])
	emptyPolicy := writeJSON(t, filepath.Join(f.dir, "empty.json"), map[string]any{})
	unknownField := filepath.Join(f.dir, "unknown.json")
	write(t, unknownField, []byte(`{"measurements":[],"allowEverything":true}`))
	badCRLs := filepath.Join(f.dir, "crls")
	if err := os.Mkdir(badCRLs, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(badCRLs, "milan.crl"), []byte("not a CRL"))
	emptyCRLs := filepath.Join(f.dir, "no-crls")
	if err := os.Mkdir(emptyCRLs, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args     []string
		code     int
		contains string
	}{
		"tampered report":    {[]string{"attestation", "verify-report", "--snp-report", tampered, "--certs", f.vcek, "--policy", f.policy, "--time", snpTime}, 1, "signature does not verify"},
		"VCEK expired":       {verify("--certs", f.vcek, "--policy", f.policy, "--time", "2030-01-01"), 1, "VCEK certificate expired"},
		"foreign chain":      {verify("--certs", f.vcek, "--certs", filepath.Join(snpTestdata, "milanvlek.testcer"), "--policy", f.policy, "--time", snpTime), 1, "not usable"},
		"empty CRL cache":    {verify("--certs", f.vcek, "--crl-dir", emptyCRLs, "--policy", f.strict, "--time", snpTime), 1, "no CRL of the Milan ARK"},
		"reserved byte set":  {[]string{"attestation", "verify-report", "--snp-report", reserved, "--certs", f.vcek, "--policy", f.policy}, 2, "reserved bytes"},
		"truncated report":   {[]string{"attestation", "verify-report", "--snp-report", short, "--certs", f.vcek, "--policy", f.policy}, 2, "truncated"},
		"missing report":     {[]string{"attestation", "verify-report", "--snp-report", filepath.Join(f.dir, "nope"), "--certs", f.vcek, "--policy", f.policy}, 2, "no such file"},
		"empty policy":       {verify("--certs", f.vcek, "--policy", emptyPolicy), 2, "no accepted launch measurement"},
		"unknown field":      {verify("--certs", f.vcek, "--policy", unknownField), 2, "allowEverything"},
		"policy not JSON":    {verify("--certs", f.vcek, "--policy", f.report), 2, "SNP policy invalid"},
		"missing policy":     {verify("--certs", f.vcek), 2, "required flag"},
		"no certificates":    {verify("--policy", f.policy), 2, "no certificates"},
		"certs not certs":    {verify("--certs", f.report, "--policy", f.policy), 2, "SNP certificates: malformed"},
		"VCEK twice":         {verify("--certs", f.vcek, "--cert-table", f.table, "--policy", f.policy), 2, "two VCEK"},
		"table not a table":  {verify("--cert-table", f.vcek, "--policy", f.policy), 2, "certificate table"},
		"malformed CRL":      {verify("--certs", f.vcek, "--crl-dir", badCRLs, "--policy", f.policy), 2, "CRL"},
		"missing CRL dir":    {verify("--certs", f.vcek, "--crl-dir", filepath.Join(f.dir, "nope"), "--policy", f.policy), 2, "CRL cache"},
		"bad time":           {verify("--certs", f.vcek, "--policy", f.policy, "--time", "yesterday"), 2, "--time"},
		"collateral for SNP": {verify("--certs", f.vcek, "--policy", f.policy, "--collateral", t.TempDir()), 2, "--collateral is for TDX"},
		"nothing to verify":  {[]string{"attestation", "verify-report", "--policy", f.policy}, 2, "nothing to verify"},
		"both":               {verify("--tdx-quote", f.report, "--policy", f.policy), 2, "not both"},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := run(tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.contains) {
				t.Fatalf("code %d (want %d), stderr %q (want %q)", code, tc.code, errOut, tc.contains)
			}
		})
	}
}

type tdxFiles struct {
	dir, quote, policy, wrongMRTD, noReportData string
}

// writeTDXFiles writes the genuine quote without the test suffix of its file, and policies for it.
func writeTDXFiles(t *testing.T) tdxFiles {
	t.Helper()
	dir := t.TempDir()
	raw := tdxtest.Quote()
	f := tdxFiles{dir: dir, quote: filepath.Join(dir, "quote.dat")}
	write(t, f.quote, raw)
	q, err := tdx.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	good := &tdx.Policy{MRTD: []tdx.HexBytes{q.Body.MRTD[:]}, MRSEAM: []tdx.HexBytes{q.Body.MRSEAM[:]}, ReportData: q.Body.ReportData[:]}
	f.policy = writeJSON(t, filepath.Join(dir, "policy.json"), good)
	wrong := *good
	wrong.MRTD = []tdx.HexBytes{make([]byte, 48)}
	f.wrongMRTD = writeJSON(t, filepath.Join(dir, "wrong.json"), wrong)
	none := *good
	none.ReportData = nil
	f.noReportData = writeJSON(t, filepath.Join(dir, "none.json"), none)
	return f
}

func TestVerifyReportTDX(t *testing.T) {
	f := writeTDXFiles(t)
	coll := tdxtest.CollateralDir(t)
	verify := func(extra ...string) []string {
		return append([]string{"attestation", "verify-report", "--tdx-quote", f.quote, "--collateral", coll}, extra...)
	}
	// The genuine quote verifies against the embedded Intel root and the recorded collateral, but its
	// platform TCB matches no level of that collateral (NotSupported), which no policy may accept: exit 1,
	// and the reason says which component is too low.
	_, errOut, code := run(verify("--policy", f.policy, "--time", tdxTime)...)
	if code != 1 {
		t.Fatalf("genuine quote: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"TDX quote verifies, but violates the policy", "- TCB status NotSupported is not accepted", "PCK SGX TCB component 1 is 3, the level needs 5"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "MRTD") || strings.Contains(errOut, "REPORT_DATA") {
		t.Errorf("the accepted MRTD and REPORT_DATA are reported as violations:\n%s", errOut)
	}
	// A policy for another TD: both reasons.
	_, errOut, code = run(verify("--policy", f.wrongMRTD, "--time", tdxTime)...)
	if code != 1 || !strings.Contains(errOut, "- MRTD 6363b804") || !strings.Contains(errOut, "- TCB status NotSupported") {
		t.Fatalf("wrong MRTD: code %d, stderr %q", code, errOut)
	}

	tampered := filepath.Join(f.dir, "tampered.dat")
	raw := readTestFile(t, f.quote)
	raw[48+136] ^= 1 // MRTD
	write(t, tampered, raw)
	for name, tc := range map[string]struct {
		args     []string
		code     int
		contains string
	}{
		"collateral expired":    {verify("--policy", f.policy, "--time", "2024-06-01"), 1, "refresh the collateral cache"},
		"before the collateral": {verify("--policy", f.policy, "--time", "2023-06-01"), 1, "TDX quote does not verify"},
		"tampered quote":        {[]string{"attestation", "verify-report", "--tdx-quote", tampered, "--collateral", coll, "--policy", f.policy, "--time", tdxTime}, 1, "signature"},
		"file with its suffix":  {[]string{"attestation", "verify-report", "--tdx-quote", tdxtest.QuoteFile(t), "--collateral", coll, "--policy", f.policy}, 2, "39 trailing bytes"},
		"no reportData":         {verify("--policy", f.noReportData, "--time", tdxTime), 2, "no reportData"},
		"policy not JSON":       {verify("--policy", f.quote), 2, "invalid TDX policy"},
		"policy with debug":     {verify("--policy", writeJSON(t, filepath.Join(f.dir, "debug.json"), map[string]any{"mrtd": []string{strings.Repeat("00", 48)}, "tdAttributes": "0100000000000000"})), 2, "debug"},
		"no collateral flag":    {[]string{"attestation", "verify-report", "--tdx-quote", f.quote, "--policy", f.policy}, 2, "no --collateral"},
		"missing collateral":    {[]string{"attestation", "verify-report", "--tdx-quote", f.quote, "--collateral", f.dir, "--policy", f.policy}, 2, "qe_identity.json is not in the collateral directory"},
		"certs for TDX":         {verify("--policy", f.policy, "--certs", f.quote), 2, "for SEV-SNP reports"},
		"quote not a quote":     {[]string{"attestation", "verify-report", "--tdx-quote", f.policy, "--collateral", coll, "--policy", f.policy}, 2, "TDX quote: malformed"},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := run(tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.contains) {
				t.Fatalf("code %d (want %d), stderr %q (want %q)", code, tc.code, errOut, tc.contains)
			}
		})
	}
}

func TestShowRawReports(t *testing.T) {
	out, errOut, code := run("attestation", "show", filepath.Join(snpTestdata, "attestation.bin"))
	if code != 0 {
		t.Fatalf("show SNP report: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"SEV-SNP attestation report (NOT verified", "Measurement:       b07af962", "debug ALLOWED", "REPORT_DATA:       0102030405000000", "Reported TCB:      bootloader=2 tee=0 snp=5 microcode=68", "Signed by:         VCEK", "Product:           unknown: version 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("SNP report: output lacks %q:\n%s", want, out)
		}
	}

	f := writeTDXFiles(t)
	out, errOut, code = run("attestation", "show", f.quote)
	if code != 0 {
		t.Fatalf("show TDX quote: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"TDX quote (NOT verified", "Version:        4 (TD report 1.0)", "MRTD:           6363b804", "RTMR3:          0000", "TD attributes:  0000004000000000 (debug off)", "FMSPC:          50806f000000", "PCE ID:         0000, PCESVN 11", "Intel SGX PCK Platform CA"} {
		if !strings.Contains(out, want) {
			t.Errorf("TDX quote: output lacks %q:\n%s", want, out)
		}
	}

	// Evidence documents show their hardware part.
	report := readTestFile(t, filepath.Join(snpTestdata, "attestation.bin"))
	doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.QEMUSEVSNP.Name, UserData: []byte("user"), SNP: &attestation.SNPEvidence{Report: report, CertChain: readTestFile(t, filepath.Join(snpTestdata, "milan.testcer"))}}
	docFile := filepath.Join(f.dir, "evidence.json")
	writeJSON(t, docFile, doc)
	out, errOut, code = run("attestation", "show", docFile)
	if code != 0 {
		t.Fatalf("show document: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"Variant:    qemu-sev-snp (AMD SEV-SNP report", "User data:  " + hex.EncodeToString([]byte("user")), "SEV-SNP report\n", "Measurement:       b07af962", "Certificates: table 0 bytes, chain"} {
		if !strings.Contains(out, want) {
			t.Errorf("document: output lacks %q:\n%s", want, out)
		}
	}
	tdxDoc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.QEMUTDX.Name, TDX: &attestation.TDXEvidence{Quote: readTestFile(t, f.quote)}}
	writeJSON(t, docFile, tdxDoc)
	if out, _, code := run("attestation", "show", docFile); code != 0 || !strings.Contains(out, "TDX quote\n") || !strings.Contains(out, "FMSPC:          50806f000000") {
		t.Errorf("show TDX document: code %d:\n%s", code, out)
	}

	for name, path := range map[string]string{
		"TDX quote with suffix": tdxtest.QuoteFile(t),
		"certificate":           filepath.Join(snpTestdata, "vcek.testcer"),
	} {
		if _, errOut, code := run("attestation", "show", path); code != 2 || !strings.Contains(errOut, "neither an evidence document") {
			t.Errorf("%s: code %d, stderr %q", name, code, errOut)
		}
	}
	bad := filepath.Join(f.dir, "bad.bin")
	raw := readTestFile(t, filepath.Join(snpTestdata, "attestation.bin"))
	raw[0] = 9 // version
	write(t, bad, raw)
	if _, errOut, code := run("attestation", "show", bad); code != 2 || !strings.Contains(errOut, "is an SEV-SNP report, but") {
		t.Errorf("malformed SNP report: code %d, stderr %q", code, errOut)
	}
}
