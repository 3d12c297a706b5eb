package azure

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// Genuine recorded data (see testdata/README.md).
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseGenuineHCLReport parses the HCL report recorded on an Azure SEV-SNP confidential VM: its
// REPORT_DATA is the SHA-256 of its runtime data, which names the vTPM attestation key.
func TestParseGenuineHCLReport(t *testing.T) {
	r, err := ParseHCLReport(readTestdata(t, "hcl-report-snp.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != 1 || r.Type != ReportTypeSNP || r.Hash != HashSHA256 {
		t.Errorf("version %d, type %v, hash %v", r.Version, r.Type, r.Hash)
	}
	if len(r.HardwareReport) != SNPReportSize || len(r.RuntimeData) != 584 {
		t.Fatalf("hardware report %d bytes, runtime data %d bytes", len(r.HardwareReport), len(r.RuntimeData))
	}
	if !json.Valid(r.RuntimeData) || !bytes.Contains(r.RuntimeData, []byte(`"vmUniqueId":"B6C98C3B-4EC7-4DA6-BD2F-7D98D20D7B75"`)) {
		t.Errorf("runtime data %s", r.RuntimeData)
	}
	rd, err := r.ReportData()
	if err != nil {
		t.Fatal(err)
	}
	// REPORT_DATA sits at offset 0x50 of the SEV-SNP report.
	if !bytes.Equal(rd[:], r.HardwareReport[0x50:0x90]) {
		t.Errorf("REPORT_DATA %x, SHA-256 of the runtime data %x", r.HardwareReport[0x50:0x90], rd)
	}
	if !bytes.Equal(rd[32:], make([]byte, 32)) {
		t.Error("SHA-256 REPORT_DATA is not zero-padded")
	}
	ak, err := r.AttestationKey()
	if err != nil {
		t.Fatal(err)
	}
	if ak.N.BitLen() != 2048 || ak.E != 65537 {
		t.Errorf("attestation key: %d bits, exponent %d", ak.N.BitLen(), ak.E)
	}
}

// TestParsePreviewHCLReport parses the complete NV index contents (2048 bytes, zero padding) recorded on an
// early Azure SEV-SNP preview VM. Its structure is that of today's reports, but its SEV-SNP report is of
// version 1 and its REPORT_DATA is not the hash of its runtime data, so it can serve the parser only.
func TestParsePreviewHCLReport(t *testing.T) {
	raw := readTestdata(t, "hcl-report-snp-preview.bin")
	r, err := ParseHCLReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 2048 || r.Version != 1 || r.Type != ReportTypeSNP || r.Hash != HashSHA256 || len(r.RuntimeData) != 583 {
		t.Errorf("%d bytes: version %d, type %v, hash %v, %d bytes of runtime data", len(raw), r.Version, r.Type, r.Hash, len(r.RuntimeData))
	}
	if v := binary.LittleEndian.Uint32(r.HardwareReport); v != 1 {
		t.Errorf("SEV-SNP report version %d, want 1", v)
	}
	if _, err := r.AttestationKey(); err != nil {
		t.Error(err)
	}
	rd, _ := r.ReportData()
	if bytes.Equal(rd[:], r.HardwareReport[0x50:0x90]) {
		t.Error("the preview report binds its runtime data after all; update the test data README")
	}
}

// put returns a copy of raw with a little-endian uint32 at off.
func put(raw []byte, off int, v uint32) []byte {
	out := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(out[off:], v)
	return out
}

func TestParseHCLReportRejects(t *testing.T) {
	genuine := readTestdata(t, "hcl-report-snp.bin")
	padded := append(bytes.Clone(genuine), make([]byte, 228)...)
	for name, tc := range map[string]struct {
		raw  []byte
		want string
	}{
		"empty":                      {nil, "truncated"},
		"header only":                {genuine[:HeaderSize], "truncated"},
		"truncated report":           {genuine[:1000], "truncated"},
		"truncated runtime data":     {genuine[:len(genuine)-1], "truncated"},
		"oversized":                  {make([]byte, MaxHCLReportSize+1), "exceed the limit"},
		"signature":                  {append([]byte("HCLB"), genuine[4:]...), "signature"},
		"unknown header version 0":   {put(genuine, 4, 0), "unknown header version 0"},
		"unknown header version 3":   {put(genuine, 4, 3), "unknown header version 3"},
		"request type":               {put(genuine, 12, 1), "request type 1"},
		"status":                     {put(genuine, 16, 0x8000), "status 0x8000"},
		"reserved":                   {put(genuine, 28, 1), "reserved"},
		"request data version":       {put(genuine, offRequestData+4, 2), "request data version 2"},
		"report type unknown":        {put(genuine, offRequestData+8, 3), "unknown report type 3"},
		"report type zero":           {put(genuine, offRequestData+8, 0), "unknown report type 0"},
		"hash type invalid":          {put(genuine, offRequestData+12, 0), "unknown hash type 0"},
		"hash type unknown":          {put(genuine, offRequestData+12, 4), "unknown hash type 4"},
		"runtime size lying (large)": {put(put(genuine, offRequestData+16, 4096), offRequestData, RequestDataFixedSize+4096), "report size 1820 disagrees"},
		"runtime size lying (huge)":  {put(genuine, offRequestData+16, 0xffffffff), "disagrees with runtime data size"},
		"runtime size lying (small)": {put(genuine, offRequestData+16, 100), "disagrees with runtime data size 100"},
		"runtime size zero":          {put(genuine, offRequestData+16, 0), "no runtime data"},
		"data size":                  {put(genuine, offRequestData, 0), "request data size 0"},
		"report size":                {put(genuine, 8, 1819), "report size 1819"},
		"report size beyond input":   {put(put(put(genuine, 8, 1920), offRequestData, 704), offRequestData+16, 684), "truncated: the report has 1920 bytes"},
		"non-zero padding":           {append(bytes.Clone(padded), 1), "non-zero bytes after"},
		"non-zero byte in padding":   {func() []byte { p := bytes.Clone(padded); p[len(genuine)+7] = 0xff; return p }(), "non-zero bytes after"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseHCLReport(tc.raw)
			if !errors.Is(err, ErrMalformedHCLReport) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseHCLReport = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := ParseHCLReport(padded); err != nil {
		t.Errorf("zero padding: %v", err)
	}
}

func TestReportDataHashes(t *testing.T) {
	r := &HCLReport{RuntimeData: []byte(`{"keys":[]}`)}
	for _, tc := range []struct {
		hash HashType
		size int
	}{{HashSHA256, 32}, {HashSHA384, 48}, {HashSHA512, 64}} {
		r.Hash = tc.hash
		rd, err := r.ReportData()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(rd[:tc.size], make([]byte, tc.size)) || !bytes.Equal(rd[tc.size:], make([]byte, 64-tc.size)) {
			t.Errorf("%v: %x", tc.hash, rd)
		}
	}
	r.Hash = 9
	if _, err := r.ReportData(); !errors.Is(err, ErrMalformedHCLReport) {
		t.Errorf("unknown hash: %v", err)
	}
}

func TestParseAttestationKey(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := MarshalAttestationKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseAttestationKey(rd)
	if err != nil || !got.Equal(&key.PublicKey) {
		t.Fatalf("ParseAttestationKey = %v, %v", got, err)
	}
	genuine, err := ParseHCLReport(readTestdata(t, "hcl-report-snp.bin"))
	if err != nil {
		t.Fatal(err)
	}
	n := `"n":"` + strings.Split(strings.Split(string(genuine.RuntimeData), `"n":"`)[1], `"`)[0] + `"`
	ak := `{"kid":"HCLAkPub","kty":"RSA","e":"AQAB",` + n + `}`
	for name, tc := range map[string]struct {
		data string
		want string
	}{
		"not JSON":           {`keys`, "not a JSON object"},
		"trailing data":      {`{"keys":[` + ak + `]} {}`, "trailing data"},
		"no keys":            {`{"vm-configuration":{}}`, "no key with key ID"},
		"other kid":          {`{"keys":[{"kid":"HCLEkPub","kty":"RSA","e":"AQAB",` + n + `}]}`, "no key with key ID"},
		"two AKs":            {`{"keys":[` + ak + `,` + ak + `]}`, "more than one key"},
		"EC key":             {`{"keys":[{"kid":"HCLAkPub","kty":"EC","e":"AQAB",` + n + `}]}`, "key type \"EC\""},
		"padded base64":      {`{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAB==",` + n + `}]}`, "exponent is not unpadded base64url"},
		"standard base64":    {`{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAB","n":"ab+/"}]}`, "modulus is not unpadded base64url"},
		"small modulus":      {`{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAB","n":"AQAB"}]}`, "RSA key of 17 bits"},
		"even exponent":      {`{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAA",` + n + `}]}`, "exponent 65536"},
		"leading zero":       {`{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AAEAAQ",` + n + `}]}`, "leading zeros"},
		"exponent too large": {`{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAAAAE",` + n + `}]}`, "exceeds 32 bits"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseAttestationKey([]byte(tc.data))
			if !errors.Is(err, ErrRuntimeData) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseAttestationKey = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMarshalHCLReport(t *testing.T) {
	genuine, err := ParseHCLReport(readTestdata(t, "hcl-report-snp.bin"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := MarshalHCLReport(genuine.Type, genuine.Hash, genuine.HardwareReport, genuine.RuntimeData, 100)
	if err != nil {
		t.Fatal(err)
	}
	// The rebuilt report differs from the genuine one only in the header version.
	genuineRaw := readTestdata(t, "hcl-report-snp.bin")
	if !bytes.Equal(raw[:len(genuineRaw)], put(genuineRaw, 4, 2)) || !bytes.Equal(raw[len(genuineRaw):], make([]byte, 100)) {
		t.Error("MarshalHCLReport does not lay out the report as the paravisor does")
	}
	again, err := ParseHCLReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if again.Version != 2 || !bytes.Equal(again.HardwareReport, genuine.HardwareReport) || !bytes.Equal(again.RuntimeData, genuine.RuntimeData) {
		t.Error("round trip changed the report")
	}
	td, err := MarshalHCLReport(ReportTypeTDX, HashSHA384, bytes.Repeat([]byte{1}, TDReportSize), []byte("{}"), 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseHCLReport(td)
	if err != nil || r.Type != ReportTypeTDX || len(r.HardwareReport) != TDReportSize {
		t.Fatalf("TDX report: %v", err)
	}
	if _, err := MarshalHCLReport(ReportTypeSNP, HashSHA256, make([]byte, HardwareReportAreaSize+1), []byte("{}"), 0); err == nil {
		t.Error("oversized hardware report accepted")
	}
	if _, err := MarshalHCLReport(ReportTypeSNP, HashSHA256, nil, nil, 0); err == nil {
		t.Error("empty runtime data accepted")
	}
	sum := sha256.Sum256(genuine.RuntimeData)
	if _, err := MarshalHCLReport(ReportTypeSNP, HashSHA256, sum[:], genuine.RuntimeData, MaxHCLReportSize); err == nil {
		t.Error("oversized padding accepted")
	}
}

// FuzzParseHCLReport runs the parser on mutated HCL reports: nothing panics, and whatever parses has
// consistent parts.
func FuzzParseHCLReport(f *testing.F) {
	genuine := readTestdata(f, "hcl-report-snp.bin")
	f.Add(genuine)
	f.Add(readTestdata(f, "hcl-report-snp-preview.bin"))
	for _, n := range []int{0, 4, HeaderSize, offRequestData, offRuntimeData, len(genuine) - 1} {
		f.Add(genuine[:n])
	}
	f.Add(put(genuine, offRequestData+16, 0xffffffff))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ParseHCLReport(raw)
		if err != nil {
			if !errors.Is(err, ErrMalformedHCLReport) {
				t.Fatalf("error %v does not wrap ErrMalformedHCLReport", err)
			}
			return
		}
		if len(r.RuntimeData) == 0 || (len(r.HardwareReport) != SNPReportSize && len(r.HardwareReport) != TDReportSize) {
			t.Fatalf("parsed report with %d bytes of hardware report and %d of runtime data", len(r.HardwareReport), len(r.RuntimeData))
		}
		if _, err := r.ReportData(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.AttestationKey(); err != nil && !errors.Is(err, ErrRuntimeData) {
			t.Fatalf("error %v does not wrap ErrRuntimeData", err)
		}
	})
}

// The size bound of the evidence document agrees with the parser.
func TestDocumentBound(t *testing.T) {
	if attestation.MaxHCLReportSize != MaxHCLReportSize {
		t.Fatalf("attestation.MaxHCLReportSize %d, MaxHCLReportSize %d", attestation.MaxHCLReportSize, MaxHCLReportSize)
	}
}
