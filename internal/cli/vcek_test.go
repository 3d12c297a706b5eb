package cli

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
)

// kdsServer serves body at the VCEK path of the genuine report (any other request gets 404) on loopback,
// and counts requests.
func kdsServer(t *testing.T, body []byte) (string, *atomic.Int32) {
	t.Helper()
	r, err := snp.ParseReport(readTestFile(t, filepath.Join(snpTestdata, "attestation.bin")))
	if err != nil {
		t.Fatal(err)
	}
	k, err := snp.VCEKKeyFor(r, snp.Milan)
	if err != nil {
		t.Fatal(err)
	}
	want, err := snp.VCEKURL("http://kds", k)
	if err != nil {
		t.Fatal(err)
	}
	want = strings.TrimPrefix(want, "http://kds")
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n.Add(1)
		if req.URL.RequestURI() != want {
			http.NotFound(w, req)
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestFetchVCEKThenVerifyOffline fetches the genuine VCEK from a local key distribution service, then
// verifies the genuine report with the cache and no certificates.
func TestFetchVCEKThenVerifyOffline(t *testing.T) {
	f := writeSNPFiles(t)
	kds, requests := kdsServer(t, readTestFile(t, f.vcek))
	cache := filepath.Join(f.dir, "vceks")

	// Before the fetch, the cache has no entry: the report does not verify.
	if err := os.Mkdir(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := run("attestation", "verify-report", "--snp-report", f.report, "--vcek-cache", cache, "--policy", f.policy, "--time", snpTime)
	if code != 1 || !strings.Contains(errOut, "has no entry") || !strings.Contains(errOut, "fetch-vcek") {
		t.Fatalf("empty cache: code %d, stderr %q", code, errOut)
	}

	out, errOut, code := run("attestation", "fetch-vcek", "--report", f.report, "--cache", cache, "--kds-url", kds, "--time", snpTime)
	if code != 0 {
		t.Fatalf("fetch-vcek: code %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "Fetched the VCEK of Milan chip") || !strings.Contains(out, "verified it against the embedded AMD Milan root") {
		t.Errorf("fetch-vcek output:\n%s", out)
	}
	entries := dirEntries(t, cache)
	if len(entries) != 1 || !strings.HasPrefix(entries[0], "milan-") || !strings.HasSuffix(entries[0], "-bl2-tee0-snp5-ucode68.der") {
		t.Fatalf("cache holds %v", entries)
	}

	out, errOut, code = run("attestation", "verify-report", "--snp-report", f.report, "--vcek-cache", cache, "--policy", f.policy, "--time", snpTime)
	if code != 0 {
		t.Fatalf("verify-report with the cache: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"SEV-SNP report verified and accepted", "VCEK:         from the offline cache " + cache, "Firmware:     1.49.3 (committed 1.49.3)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// A second fetch finds the verified entry and makes no request.
	before := requests.Load()
	out, _, code = run("attestation", "fetch-vcek", "--report", f.report, "--cache", cache, "--kds-url", kds, "--time", snpTime)
	if code != 0 || !strings.Contains(out, "in the cache already") || requests.Load() != before {
		t.Errorf("second fetch: code %d, %d requests, output %q", code, requests.Load()-before, out)
	}

	// Evidence documents work as --report too; a cache directory is created.
	doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.QEMUSEVSNP.Name, SNP: &attestation.SNPEvidence{Report: readTestFile(t, f.report)}}
	raw, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	evidence := filepath.Join(f.dir, "evidence.json")
	write(t, evidence, raw)
	fresh := filepath.Join(f.dir, "new", "vceks")
	if _, errOut, code := run("attestation", "fetch-vcek", "--report", evidence, "--cache", fresh, "--kds-url", kds, "--product", "milan", "--time", snpTime); code != 0 || len(dirEntries(t, fresh)) != 1 {
		t.Errorf("evidence document: code %d, stderr %q", code, errOut)
	}
}

func TestFetchVCEKRefuses(t *testing.T) {
	f := writeSNPFiles(t)
	genuine := readTestFile(t, f.vcek)
	chain := readTestFile(t, f.chain)
	for name, tc := range map[string]struct {
		body     []byte
		extra    []string
		code     int
		contains string
	}{
		"the ASK and ARK":   {chain, nil, 1, "nothing written"},
		"truncated":         {genuine[:len(genuine)-10], nil, 1, "nothing written"},
		"garbage":           {[]byte("garbage"), nil, 1, "nothing written"},
		"expired VCEK":      {genuine, []string{"--time", "2030-01-01"}, 1, "VCEK certificate expired"},
		"not served":        {genuine, []string{"--product", "Genoa"}, 1, "has no such VCEK"},
		"unknown product":   {genuine, []string{"--product", "Rome"}, 2, "--product"},
		"bad URL":           {genuine, []string{"--kds-url", "kdsintf.amd.com"}, 2, "--kds-url"},
		"zero timeout":      {genuine, []string{"--timeout", "0s"}, 2, "--timeout"},
		"report not report": {genuine, []string{"--report", f.vcek}, 2, "SNP report: malformed"},
		"missing report":    {genuine, []string{"--report", filepath.Join(f.dir, "nope")}, 2, "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			kds, _ := kdsServer(t, tc.body)
			cache := filepath.Join(t.TempDir(), "vceks")
			args := []string{"attestation", "fetch-vcek", "--report", f.report, "--cache", cache, "--kds-url", kds, "--time", snpTime}
			_, errOut, code := run(append(args, tc.extra...)...)
			if code != tc.code || !strings.Contains(errOut, tc.contains) {
				t.Fatalf("code %d (want %d), stderr %q (want %q)", code, tc.code, errOut, tc.contains)
			}
			if entries := dirEntries(t, cache); len(entries) != 0 {
				t.Errorf("cache holds %v", entries)
			}
		})
	}
	// Required flags and an unusable cache path.
	if _, errOut, code := run("attestation", "fetch-vcek", "--report", f.report); code != 2 || !strings.Contains(errOut, "required flag") {
		t.Errorf("no --cache: code %d, %q", code, errOut)
	}
	if _, errOut, code := run("attestation", "fetch-vcek", "--report", f.report, "--cache", f.report); code != 2 || !strings.Contains(errOut, "--cache") {
		t.Errorf("--cache is a file: code %d, %q", code, errOut)
	}
	// verify-report: a missing cache directory is unusable input; a tampered entry fails verification.
	if _, errOut, code := run("attestation", "verify-report", "--snp-report", f.report, "--vcek-cache", filepath.Join(f.dir, "nope"), "--policy", f.policy); code != 2 || !strings.Contains(errOut, "--vcek-cache") {
		t.Errorf("missing cache: code %d, %q", code, errOut)
	}
	kds, _ := kdsServer(t, genuine)
	cache := filepath.Join(f.dir, "vceks")
	if _, errOut, code := run("attestation", "fetch-vcek", "--report", f.report, "--cache", cache, "--kds-url", kds, "--time", snpTime); code != 0 {
		t.Fatalf("fetch: %q", errOut)
	}
	entry := filepath.Join(cache, dirEntries(t, cache)[0])
	tampered := append([]byte(nil), genuine...)
	tampered[len(tampered)-5] ^= 1
	write(t, entry, tampered)
	if _, errOut, code := run("attestation", "verify-report", "--snp-report", f.report, "--vcek-cache", cache, "--policy", f.policy, "--time", snpTime); code != 1 || !strings.Contains(errOut, "the VCEK from the offline cache") || !strings.Contains(errOut, "not signed by ASK") {
		t.Errorf("tampered entry: code %d, %q", code, errOut)
	}
	// fetch-vcek replaces the tampered entry with a verified one.
	if _, errOut, code := run("attestation", "fetch-vcek", "--report", f.report, "--cache", cache, "--kds-url", kds, "--time", snpTime); code != 0 {
		t.Fatalf("fetch over a tampered entry: %q", errOut)
	}
	if got := readTestFile(t, entry); string(got) != string(genuine) {
		t.Error("tampered entry not replaced")
	}
}
