package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
)

// The mini configuration is written exactly as before the hardware sections existed.
func TestMiniOutputUnchanged(t *testing.T) {
	raw, err := valid().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `attestation:
  measurements:
    "4":
      expected: "0100000000000000000000000000000000000000000000000000000000000000"
      warnOnly: false
    "8":
      expected: "0200000000000000000000000000000000000000000000000000000000000000"
      warnOnly: false
    "9":
      expected: "0300000000000000000000000000000000000000000000000000000000000000"
      warnOnly: true
  variant: mini-vtpm
provider:
  mini:
    controlPlanes: 1
    image: node-image.squashfs
    imageDigest: sha256:abababababababababababababababababababababababababababababababab
    workers: 2
version: v1
`
	if string(raw) != want {
		t.Fatalf("mini configuration changed:\n%s", raw)
	}
}

// 48-byte values in hex.
const (
	hex48x07 = "070707070707070707070707070707070707070707070707" + "070707070707070707070707070707070707070707070707"
	hex48x11 = "111111111111111111111111111111111111111111111111" + "111111111111111111111111111111111111111111111111"
	hex48x20 = "202020202020202020202020202020202020202020202020" + "202020202020202020202020202020202020202020202020"
)

const snpSection = `  snp:
    measurements: ["` + hex48x07 + `"]
    minimumTCB:
      Milan: {bootloader: 3, tee: 0, snp: 8, microcode: 115}
      Genoa: {bootloader: 7, tee: 0, snp: 14, microcode: 72}
    vmpl: 0
    crlDir: amd-crls
`

const tdxSection = `  tdx:
    mrtd: ["` + hex48x11 + `"]
    rtmr0: "` + hex48x20 + `"
    rtmr1: "` + hex48x20 + `"
    rtmr2: "` + hex48x20 + `"
    rtmr3: "` + hex48x20 + `"
    acceptedTCBStatuses: [UpToDate, SWHardeningNeeded]
    collateralDir: /var/cache/intel
`

// rtmrs sets rtmr0 to rtmr3 in a tdx section.
var rtmrs = "    rtmr0: '" + strings.Repeat("20", 48) + "'\n    rtmr1: '" + strings.Repeat("21", 48) + "'\n    rtmr2: '" + strings.Repeat("22", 48) + "'\n    rtmr3: '" + strings.Repeat("23", 48) + "'\n"

// parseUnchecked reads a configuration without validating it.
func parseUnchecked(t *testing.T, raw string) *Config {
	t.Helper()
	var c Config
	if err := yaml.UnmarshalStrict([]byte(raw), &c); err != nil {
		t.Fatalf("parsing:\n%s\n%v", raw, err)
	}
	return &c
}

func hardwareConfig(variant, sections string) string {
	return "version: v1\nprovider:\n  mini: {controlPlanes: 1, workers: 1, image: x, imageDigest: \"sha256:" + strings.Repeat("0", 64) + "\"}\n" +
		"attestation:\n  variant: " + variant + "\n" + sections
}

// problemsExceptProvider returns the validation problems other than the mini provider's refusal of the variant.
func problemsExceptProvider(t *testing.T, c *Config) []string {
	t.Helper()
	err := c.Validate()
	ve, ok := err.(*ValidationError)
	if !ok {
		t.Fatalf("Validate = %v, want a *ValidationError", err)
	}
	var out []string
	sawProvider := false
	for _, p := range ve.Problems {
		if strings.HasPrefix(p, "attestation.variant: the mini provider runs only mini-vtpm") {
			sawProvider = true
			continue
		}
		out = append(out, p)
	}
	if !sawProvider {
		t.Errorf("the mini provider accepted variant %s: %v", c.Attestation.Variant, err)
	}
	return out
}

func TestHardwareSections(t *testing.T) {
	for _, tc := range []struct{ variant, sections string }{
		{"qemu-sev-snp", snpSection},
		{"qemu-tdx", tdxSection},
		{"gcp-sev-snp", "  measurements:\n    \"4\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n    \"8\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n" + snpSection},
	} {
		t.Run(tc.variant, func(t *testing.T) {
			raw := hardwareConfig(tc.variant, tc.sections)
			c := parseUnchecked(t, raw)
			// Valid but for the provider: the mini provider cannot run the variant, and says so.
			if p := problemsExceptProvider(t, c); len(p) != 0 {
				t.Fatalf("problems: %q", p)
			}
			if _, err := Parse([]byte(raw)); err == nil || !strings.Contains(err.Error(), "needs nodes on confidential hardware") {
				t.Fatalf("Parse = %v", err)
			}
			// What is written reads back the same.
			out, err := c.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			again := parseUnchecked(t, string(out))
			out2, err := again.Marshal()
			if err != nil || string(out2) != string(out) {
				t.Fatalf("round trip changed the configuration:\n%s\n%s", out, out2)
			}
			if strings.Contains(string(out), "reportData") || strings.Contains(string(out), "allowDebug") {
				t.Errorf("marshalled configuration has per-request or test-only fields:\n%s", out)
			}
		})
	}
	c := parseUnchecked(t, hardwareConfig("qemu-sev-snp", snpSection))
	p, err := c.Attestation.SNPPolicy()
	if err != nil || p.MinimumTCB[snp.Genoa].SNP != 14 || len(p.Measurements) != 1 {
		t.Fatalf("SNPPolicy = %+v, %v", p, err)
	}
	if _, err := c.Attestation.TDXPolicy(); err == nil {
		t.Fatal("TDXPolicy without a TDX section")
	}
	c = parseUnchecked(t, hardwareConfig("qemu-tdx", tdxSection))
	tp, err := c.Attestation.TDXPolicy()
	if err != nil || len(tp.MRTD) != 1 || len(tp.AcceptedTCBStatuses) != 2 || tp.AcceptedTCBStatuses[1] != tdx.TCBStatusSWHardeningNeeded {
		t.Fatalf("TDXPolicy = %+v, %v", tp, err)
	}
}

func TestHardwareSectionProblems(t *testing.T) {
	pcrs := "  measurements:\n    \"4\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n    \"8\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n"
	for name, tc := range map[string]struct {
		variant, sections string
		want              []string
	}{
		"allowDebug refused": {"qemu-sev-snp", snpSection + "    allowDebug: true\n",
			[]string{"attestation.snp: allowDebug is set"}},
		"reportData refused": {"qemu-sev-snp", snpSection + "    reportData: \"" + strings.Repeat("00", 64) + "\"\n",
			[]string{"attestation.snp: reportData is set"}},
		"empty SNP section, every problem": {"qemu-sev-snp", "  snp: {vmpl: 7}\n",
			[]string{"attestation.snp: no accepted launch measurement", "attestation.snp: no accepted product", "attestation.snp: vmpl 7", "attestation.snp.crlDir: no CRL cache"}},
		"zero minimum TCB": {"qemu-sev-snp", strings.Replace(snpSection, "snp: 8, microcode: 115", "snp: 0, microcode: 115", 1),
			[]string{"minimum TCB of Milan", "set real minimums"}},
		"no CRL cache, allowed":   {"qemu-sev-snp", strings.Replace(snpSection, "    crlDir: amd-crls\n", "    allowMissingCRL: true\n", 1), nil},
		"no SNP section":          {"qemu-sev-snp", "", []string{"attestation.snp: qemu-sev-snp needs an SEV-SNP policy"}},
		"firmware and VCEK cache": {"qemu-sev-snp", snpSection + "    minimumFirmware: {Milan: 1.55.21, Genoa: \"1.55.9\"}\n    vcekCacheDir: vceks\n", nil},
		"fixed host data": {"qemu-sev-snp", snpSection + "    hostData: \"" + strings.Repeat("ab", 32) + "\"\n",
			[]string{"attestation.snp.hostData: on qemu-sev-snp, HOST_DATA names each node"}},
		"short host data": {"qemu-sev-snp", snpSection + "    hostData: \"abcd\"\n", []string{"attestation.snp: hostData has 2 bytes, want 32 (64 hex digits)"}},
		"firmware for one of two products": {"qemu-sev-snp", snpSection + "    minimumFirmware: {Milan: 1.55.21}\n",
			[]string{"attestation.snp: minimumFirmware has no entry for Genoa, which minimumTCB accepts"}},
		"zero firmware": {"qemu-sev-snp", snpSection + "    minimumFirmware: {Milan: 1.55.21, Genoa: 0.0.0}\n", []string{"attestation.snp: minimumFirmware of Genoa is 0.0.0"}},
		"firmware for a product not accepted": {"qemu-sev-snp", snpSection + "    minimumFirmware: {Milan: 1.55.21, Genoa: 1.55.21, Turin: 1.55.21}\n",
			[]string{"attestation.snp: minimumFirmware has an entry for Turin, which minimumTCB does not accept"}},
		"VCEK cache is the CRL cache": {"qemu-sev-snp", snpSection + "    vcekCacheDir: ./amd-crls/\n", []string{"attestation.snp.vcekCacheDir: the same directory as crlDir"}},
		"VCEK cache with space":       {"qemu-sev-snp", snpSection + "    vcekCacheDir: \"vceks \"\n", []string{"attestation.snp.vcekCacheDir: \"vceks \" has leading or trailing white space"}},
		"PCRs without a vTPM":         {"qemu-sev-snp", pcrs + snpSection, []string{"attestation.measurements: qemu-sev-snp has no vTPM", "attestation.snp.measurements"}},
		"vTPM variant without PCRs":   {"aws-sev-snp", snpSection, []string{"attestation.measurements: the measurement policy is empty"}},
		"TDX section for SNP":         {"qemu-sev-snp", snpSection + tdxSection, []string{"attestation.tdx: set, but qemu-sev-snp evidence has no TDX quote"}},
		"SNP section for TDX":         {"qemu-tdx", tdxSection + snpSection, []string{"attestation.snp: set, but qemu-tdx evidence has no SEV-SNP report"}},
		"empty TDX section": {"qemu-tdx", "  tdx: {rtmr1: \"00\", acceptedTCBStatuses: [Revoked, Great]}\n",
			[]string{"attestation.tdx: no accepted MRTD", "attestation.tdx: rtmr1 has 1 bytes", "attestation.tdx: TCB status Revoked cannot be accepted", `attestation.tdx: "Great" is not a TCB status`, "attestation.tdx.collateralDir: not set"}},
		"TDX debug attributes": {"qemu-tdx", tdxSection + "    tdAttributes: \"0100000000000000\"\n", []string{"debug"}},
		"no TDX section":       {"qemu-tdx", "", []string{"attestation.tdx: qemu-tdx needs a TDX policy"}},
		"qemu-tdx with only MRTD": {"qemu-tdx", "  tdx:\n    mrtd: [\"" + hex48x11 + "\"]\n    collateralDir: /var/cache/intel\n",
			[]string{"attestation.tdx: rtmr0, rtmr1, rtmr2, rtmr3 not set", "accepts any image"}},
		"qemu-tdx without SEPT_VE_DISABLE": {"qemu-tdx", tdxSection + "    tdAttributes: \"0000000000000000\"\n", []string{"attestation.tdx: tdAttributes 0000000000000000 has SEPT_VE_DISABLE clear"}},
		"TDX migratable attributes":        {"qemu-tdx", tdxSection + "    tdAttributes: \"0000003000000000\"\n", []string{"MIGRATABLE set, but allowMigratable is false"}},
	} {
		t.Run(name, func(t *testing.T) {
			got := strings.Join(problemsExceptProvider(t, parseUnchecked(t, hardwareConfig(tc.variant, tc.sections))), "\n")
			if tc.want == nil && got != "" {
				t.Fatalf("problems:\n%s", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("problems lack %q:\n%s", w, got)
				}
			}
		})
	}
	// A mini-vtpm configuration must not carry hardware sections.
	c := valid()
	c.Attestation.SNP = &SNP{}
	c.Attestation.TDX = &TDX{}
	err := c.Validate()
	for _, want := range []string{"attestation.snp: set, but mini-vtpm", "attestation.tdx: set, but mini-vtpm"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
	// An unknown variant still gets its sections checked.
	c = valid()
	c.Attestation.Variant = "qemu-sev"
	c.Attestation.SNP = &SNP{Policy: snp.Policy{AllowDebug: true}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "unknown attestation variant") || !strings.Contains(err.Error(), "allowDebug") {
		t.Errorf("Validate = %v", err)
	}
}

// TestSNPFirmwareParseErrors checks that a minimum firmware version that is not major.minor.build fails
// parsing with a message that says what is wrong and what is expected.
func TestSNPFirmwareParseErrors(t *testing.T) {
	for name, value := range map[string]string{"two parts": "1.55", "too high": "1.55.256", "number": "15521", "leading zero": "1.055.1", "float": "1.55"} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(hardwareConfig("qemu-sev-snp", snpSection+"    minimumFirmware: {Milan: "+value+", Genoa: 1.55.1}\n")))
			if err == nil || !strings.Contains(err.Error(), "firmware version") || !strings.Contains(err.Error(), "1.55.21") && !strings.Contains(err.Error(), "0 to 255") {
				t.Fatalf("Parse = %v, want an error about the firmware version", err)
			}
		})
	}
}

func TestHardwareCachePaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	c := parseUnchecked(t, hardwareConfig("qemu-sev-snp", snpSection))
	c.Attestation.resolve(dir)
	if c.Attestation.SNP.CRLDir != filepath.Join(dir, "amd-crls") {
		t.Errorf("crlDir = %s", c.Attestation.SNP.CRLDir)
	}
	c = parseUnchecked(t, hardwareConfig("qemu-sev-snp", snpSection+"    vcekCacheDir: cache/vcek\n"))
	c.Attestation.resolve(dir)
	if c.Attestation.SNP.VCEKCacheDir != filepath.Join(dir, "cache/vcek") {
		t.Errorf("vcekCacheDir = %s", c.Attestation.SNP.VCEKCacheDir)
	}
	c = parseUnchecked(t, hardwareConfig("qemu-tdx", tdxSection))
	c.Attestation.resolve(filepath.Dir(path))
	if c.Attestation.TDX.CollateralDir != "/var/cache/intel" {
		t.Errorf("absolute collateralDir rewritten: %s", c.Attestation.TDX.CollateralDir)
	}
}

// LoadAttestation checks the attestation section whatever the provider, and resolves its directories.
func TestLoadAttestation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	raw := hardwareConfig("qemu-tdx", "  tdx:\n    mrtd: ['"+strings.Repeat("11", 48)+"']\n"+rtmrs+"    collateralDir: intel\n")
	if err := os.WriteFile(path, []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil {
		t.Fatal("Load accepted qemu-tdx with the mini provider")
	}
	a, err := LoadAttestation(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Variant != "qemu-tdx" || a.TDX.CollateralDir != filepath.Join(dir, "intel") {
		t.Fatalf("LoadAttestation = %+v", a)
	}
	raw = hardwareConfig("aws-sev-snp", "")
	if err := os.WriteFile(path, []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAttestation(path); err == nil || !strings.Contains(err.Error(), "attestation.snp: aws-sev-snp needs an SEV-SNP policy") {
		t.Fatalf("aws-sev-snp without its policy: %v", err)
	}
}

// Policy reads the caches a validated configuration names.
func TestPolicy(t *testing.T) {
	dir := t.TempDir()
	coll := tdxtest.CollateralDir(t)
	load := func(variant, sections string) *Attestation {
		t.Helper()
		path := filepath.Join(dir, FileName)
		if err := os.WriteFile(path, []byte(hardwareConfig(variant, sections)), 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := LoadAttestation(path)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := load("qemu-tdx", strings.Replace(tdxSection, "/var/cache/intel", coll, 1))
	p, err := a.Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Variant != "qemu-tdx" || len(p.TDX.Collateral.TCBInfos) != 1 || len(p.TDX.Collateral.QEIdentity) == 0 {
		t.Fatalf("collateral not read: %+v", p.TDX.Collateral)
	}
	if _, err := validators.New(p, validators.Options{}); err != nil {
		t.Fatal(err)
	}
	a.TDX.CollateralDir = filepath.Join(dir, "missing")
	if _, err := a.Policy(nil); err == nil || !strings.Contains(err.Error(), "attestation.tdx.collateralDir") {
		t.Errorf("missing collateral directory: %v", err)
	}

	for _, d := range []string{"amd-crls", "vceks"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := load("qemu-sev-snp", snpSection+"    vcekCacheDir: vceks\n")
	p, err = s.Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.SNP == nil || p.SNP.VCEKCache == nil || p.SNP.VCEKCache.Dir() != filepath.Join(dir, "vceks") || len(p.SNP.Policy.Measurements) != 1 {
		t.Errorf("SEV-SNP policy: %+v", p.SNP)
	}
	if p.AKRoots != nil || p.Measurements != nil {
		t.Errorf("a hardware variant's policy has AK roots or measurements: %+v", p)
	}
	s.SNP.CRLDir = filepath.Join(dir, "missing")
	if _, err := s.Policy(nil); err == nil || !strings.Contains(err.Error(), "attestation.snp.crlDir") {
		t.Errorf("missing CRL directory: %v", err)
	}
}
