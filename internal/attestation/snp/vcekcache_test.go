package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// fakeKDS is a local key distribution service that answers VCEK requests as AMD's does: GET
// /vcek/v1/{Milan|Genoa|Turin}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=.. (and fmcSPL for Turin), the
// hardware ID in hexadecimal (64 bytes, 8 on Turin), every SPL a decimal number. A well-formed request for
// a certificate it holds gets the DER certificate; a well-formed request for another chip or TCB gets 404;
// a malformed one gets 400. respond, if set, replaces the answer to well-formed requests it holds.
type fakeKDS struct {
	mu       sync.Mutex
	certs    map[string][]byte // by VCEKKey.FileName
	respond  func(w http.ResponseWriter, der []byte)
	requests []string
}

func (k *fakeKDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.requests = append(k.requests, r.URL.String())
	respond := k.respond
	k.mu.Unlock()
	key, err := parseKDSRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	k.mu.Lock()
	der, ok := k.certs[key.FileName()]
	k.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if respond != nil {
		respond(w, der)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	_, _ = w.Write(der)
}

// parseKDSRequest reads a VCEK request strictly.
func parseKDSRequest(r *http.Request) (VCEKKey, error) {
	if r.Method != http.MethodGet {
		return VCEKKey{}, fmt.Errorf("method %s", r.Method)
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/vcek/v1/"), "/")
	if !strings.HasPrefix(r.URL.Path, "/vcek/v1/") || len(parts) != 2 {
		return VCEKKey{}, fmt.Errorf("path %s", r.URL.Path)
	}
	var k VCEKKey
	for _, p := range Products() {
		if parts[0] == p.String() {
			k.Product = p
		}
	}
	if k.Product == ProductUnknown {
		return VCEKKey{}, fmt.Errorf("product %q", parts[0])
	}
	hwid, err := hex.DecodeString(parts[1])
	want := ChipIDSize
	if k.Product == Turin {
		want = turinHWIDSize
	}
	if err != nil || len(hwid) != want {
		return VCEKKey{}, fmt.Errorf("hwid %q", parts[1])
	}
	k.HWID = hwid
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return VCEKKey{}, err
	}
	params := map[string]*uint8{"blSPL": &k.TCB.Bootloader, "teeSPL": &k.TCB.TEE, "snpSPL": &k.TCB.SNP, "ucodeSPL": &k.TCB.Microcode}
	if k.Product == Turin {
		params["fmcSPL"] = &k.TCB.FMC
	}
	if len(q) != len(params) {
		return VCEKKey{}, fmt.Errorf("query %q", r.URL.RawQuery)
	}
	for name, dst := range params {
		v := q[name]
		if len(v) != 1 {
			return VCEKKey{}, fmt.Errorf("parameter %s", name)
		}
		n, err := strconv.ParseUint(v[0], 10, 8)
		if err != nil {
			return VCEKKey{}, fmt.Errorf("parameter %s=%q", name, v[0])
		}
		*dst = uint8(n)
	}
	return k, nil
}

// startKDS serves kds on loopback and returns its base URL and a client that can reach only loopback.
func startKDS(t *testing.T, kds *fakeKDS) (string, *http.Client) {
	t.Helper()
	srv := httptest.NewServer(kds)
	t.Cleanup(srv.Close)
	return srv.URL, loopbackClient()
}

// loopbackClient refuses to connect anywhere but loopback addresses.
func loopbackClient() *http.Client {
	dialer := &net.Dialer{}
	return &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("test client: refusing to connect to %s, not a loopback address", addr)
			}
			return dialer.DialContext(ctx, network, addr)
		},
	}}
}

// genuineKey returns the genuine report and the name of its VCEK.
func genuineKey(t *testing.T) (*Report, VCEKKey) {
	t.Helper()
	r := mustParse(t, readTestdata(t, "attestation.bin"))
	k, err := VCEKKeyFor(r, Milan)
	if err != nil {
		t.Fatal(err)
	}
	return r, k
}

func genuineKDS(t *testing.T) *fakeKDS {
	t.Helper()
	_, k := genuineKey(t)
	return &fakeKDS{certs: map[string][]byte{k.FileName(): readTestdata(t, "vcek.testcer")}}
}

func emptyCache(t *testing.T) *VCEKCache {
	t.Helper()
	c, err := LoadVCEKCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// cacheFiles lists the names of every file in the cache directory, temporary ones included.
func cacheFiles(t *testing.T, c *VCEKCache) []string {
	t.Helper()
	entries, err := os.ReadDir(c.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func cachedVerifier(t *testing.T, roots *Roots, c *VCEKCache) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{Roots: roots, Now: fixedNow, VCEKCache: c})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVCEKURLAndFileName(t *testing.T) {
	r, k := genuineKey(t)
	hwid := hex.EncodeToString(r.ChipID[:])
	got, err := VCEKURL(DefaultKDSURL, k)
	if want := "https://kdsintf.amd.com/vcek/v1/Milan/" + hwid + "?blSPL=02&teeSPL=00&snpSPL=05&ucodeSPL=68"; err != nil || got != want {
		t.Errorf("VCEKURL = %q, %v\nwant %q", got, err, want)
	}
	if got, want := k.FileName(), "milan-"+hwid+"-bl2-tee0-snp5-ucode68.der"; got != want {
		t.Errorf("FileName = %q, want %q", got, want)
	}
	// Turin: the first 8 bytes of CHIP_ID, and fmcSPL.
	tcb := TCB{FMC: 1, Bootloader: 2, TEE: 3, SNP: 4, Microcode: 82}
	tr := mustParse(t, buildReport(t, reportOptions{product: Turin, tcb: tcb}))
	tk, err := VCEKKeyFor(tr, Turin)
	if err != nil {
		t.Fatal(err)
	}
	got, err = VCEKURL("http://127.0.0.1:8080/kds/", tk)
	if want := "http://127.0.0.1:8080/kds/vcek/v1/Turin/c0c1c2c3c4c5c6c7?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=82"; err != nil || got != want {
		t.Errorf("Turin VCEKURL = %q, %v\nwant %q", got, err, want)
	}
	if got, want := tk.FileName(), "turin-c0c1c2c3c4c5c6c7-fmc1-bl2-tee3-snp4-ucode82.der"; got != want {
		t.Errorf("Turin FileName = %q, want %q", got, want)
	}
	for _, base := range []string{"", "kdsintf.amd.com", "ftp://kds", "https://", "https://user@kds", "https://kds?x=1", "https://kds#f", "https://kds\x00"} {
		if u, err := VCEKURL(base, k); err == nil {
			t.Errorf("base %q accepted: %s", base, u)
		}
	}
	// Reports whose VCEK cannot be named.
	milan := reportOptions{product: Milan, tcb: defaultTestTCB}
	masked := buildReport(t, milan)
	masked[0x48] |= 2
	clear(masked[0x1a0:0x1e0])
	for name, tc := range map[string]struct {
		raw     []byte
		product Product
		want    string
	}{
		"masked chip ID": {masked, Milan, "CHIP_ID is masked"},
		"VLEK":           {buildReport(t, reportOptions{product: Milan, tcb: defaultTestTCB, vlek: true}), Milan, "signed by the VLEK"},
		"other product":  {buildReport(t, reportOptions{product: Genoa, tcb: defaultTestTCB}), Milan, "comes from a Genoa CPU"},
		"no product":     {buildReport(t, milan), ProductUnknown, "unknown SEV-SNP product"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := VCEKKeyFor(mustParse(t, tc.raw), tc.product); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// TestFetchVCEKGenuine fetches the genuine VCEK from a local key distribution service into the cache,
// then verifies the genuine report offline, without certificates in the evidence.
func TestFetchVCEKGenuine(t *testing.T) {
	kds := genuineKDS(t)
	base, client := startKDS(t, kds)
	cache := emptyCache(t)
	r, k := genuineKey(t)
	raw := readTestdata(t, "attestation.bin")

	// Without an entry, verification fails and says how to fill the cache.
	_, err := Validate(cachedVerifier(t, nil, cache), genuinePolicy(t), raw, nil)
	if !errors.Is(err, ErrMissingCertificate) || !errors.Is(err, ErrVCEKNotCached) || !strings.Contains(err.Error(), "fetch-vcek") {
		t.Fatalf("empty cache: %v", err)
	}

	// A version 2 report names no product: Milan is tried first, and the service has it.
	_, cert, err := cache.Fetch(context.Background(), genuineVerifier(t), r, FetchOptions{KDSURL: base, Client: client})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.Raw, readTestdata(t, "vcek.testcer")) {
		t.Error("fetched certificate differs from the served one")
	}
	if files := cacheFiles(t, cache); len(files) != 1 || files[0] != k.FileName() {
		t.Fatalf("cache holds %v", files)
	}
	if stored, err := os.ReadFile(cache.Path(k)); err != nil || !bytes.Equal(stored, readTestdata(t, "vcek.testcer")) {
		t.Fatalf("stored entry: %v", err)
	}
	if len(kds.requests) != 1 || !strings.HasPrefix(kds.requests[0], "/vcek/v1/Milan/"+hex.EncodeToString(r.ChipID[:])+"?blSPL=02&teeSPL=00&snpSPL=05&ucodeSPL=68") {
		t.Errorf("requests %v", kds.requests)
	}

	// Offline: a new verifier with the cache, no certificates in the evidence; with the ASK and ARK in the
	// evidence as well.
	for name, certs := range map[string]*Certificates{"no certificates": nil, "ASK and ARK": {Intermediate: genuineCerts(t).Intermediate, ARK: genuineCerts(t).ARK}} {
		v := cachedVerifier(t, nil, cache)
		vr, err := Validate(v, genuinePolicy(t), raw, certs)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !vr.VCEKFromCache || vr.Product != Milan || !vr.EndorsementKey.Equal(cert) {
			t.Errorf("%s: from cache %v, product %v", name, vr.VCEKFromCache, vr.Product)
		}
	}
	// A VCEK in the evidence takes precedence over the cache.
	vr, err := Validate(cachedVerifier(t, nil, cache), genuinePolicy(t), raw, genuineCerts(t))
	if err != nil || vr.VCEKFromCache {
		t.Errorf("VCEK in the evidence: %v, from cache %v", err, vr != nil && vr.VCEKFromCache)
	}

	// The genuine report as qemu-sev-snp evidence without a certificate table: a validator with the cache
	// verifies it (and refuses it for its REPORT_DATA and DEBUG bit, which the cluster policy rejects).
	doc := &attestation.Document{Version: attestation.DocumentVersion, Variant: attestation.QEMUSEVSNP.Name, SNP: &attestation.SNPEvidence{Report: raw}}
	ev, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := genuinePolicy(t)
	p.ReportData, p.AllowDebug = nil, false
	for name, tc := range map[string]struct {
		v    *Verifier
		want error
	}{"with cache": {cachedVerifier(t, nil, cache), ErrReportData}, "without cache": {genuineVerifier(t), ErrMissingCertificate}} {
		val, err := NewValidator(tc.v, p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := val.Validate(context.Background(), ev, testNonce(1)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}

	// Asking for Genoa: the service has no such VCEK, and nothing is written.
	_, _, err = cache.Fetch(context.Background(), genuineVerifier(t), r, FetchOptions{KDSURL: base, Client: client, Product: Genoa})
	if !errors.Is(err, ErrVCEKNotServed) || len(cacheFiles(t, cache)) != 1 {
		t.Errorf("Genoa: %v, cache %v", err, cacheFiles(t, cache))
	}
}

// TestFetchVCEKRefused checks that a fetched certificate is written only if it verifies the report: every
// wrong answer is refused and leaves the cache as it was.
func TestFetchVCEKRefused(t *testing.T) {
	r, _ := genuineKey(t)
	genuine := readTestdata(t, "vcek.testcer")
	chain := genuineCerts(t)
	otherChip := bytes.Repeat([]byte{0x5a}, ChipIDSize)
	foreignVCEK, _ := getTestPKI(t, Milan).endorsementKey(t, ekOptions{tcb: TCB{Bootloader: 2, SNP: 5, Microcode: 68}, chipID: otherChip})
	sameChipTestVCEK, _ := getTestPKI(t, Milan).endorsementKey(t, ekOptions{tcb: TCB{Bootloader: 2, SNP: 5, Microcode: 68}, chipID: r.ChipID[:]})
	testVLEK, _ := getTestPKI(t, Milan).endorsementKey(t, ekOptions{vlek: true, tcb: TCB{Bootloader: 2, SNP: 5, Microcode: 68}})
	serve := func(body []byte) func(http.ResponseWriter, []byte) {
		return func(w http.ResponseWriter, _ []byte) { _, _ = w.Write(body) }
	}
	status := func(code int) func(http.ResponseWriter, []byte) {
		return func(w http.ResponseWriter, _ []byte) {
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(code)
		}
	}
	for name, tc := range map[string]struct {
		respond func(http.ResponseWriter, []byte)
		want    error
		text    string
	}{
		"the ASK":                          {serve(chain.Intermediate.Raw), ErrMalformedCertificates, "not a VCEK"},
		"the ARK":                          {serve(chain.ARK.Raw), ErrMalformedCertificates, "not a VCEK"},
		"a VLEK":                           {serve(testVLEK.Raw), ErrMalformedCertificates, "not a VCEK"},
		"a VCEK for another chip":          {serve(foreignVCEK.Raw), ErrChain, "not signed by ASK of the embedded Milan root"},
		"a test VCEK for this chip":        {serve(sameChipTestVCEK.Raw), ErrChain, "not signed by ASK of the embedded Milan root"},
		"truncated":                        {serve(genuine[:len(genuine)/2]), ErrMalformedCertificates, "VCEK"},
		"one byte short":                   {serve(genuine[:len(genuine)-1]), ErrMalformedCertificates, "VCEK"},
		"trailing data":                    {serve(append(bytes.Clone(genuine), 0)), ErrMalformedCertificates, "trailing data"},
		"two certificates":                 {serve(append(bytes.Clone(genuine), genuine...)), ErrMalformedCertificates, "trailing data"},
		"garbage":                          {serve([]byte("<html>Service Unavailable</html>")), ErrMalformedCertificates, "VCEK"},
		"empty":                            {serve(nil), ErrMalformedCertificates, "empty VCEK"},
		"too large":                        {serve(make([]byte, MaxVCEKSize+1)), ErrMalformedCertificates, "more than"},
		"PEM with trailing block":          {serve(append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: genuine}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: genuine})...)), ErrMalformedCertificates, "after the VCEK"},
		"a bit flipped in the signature":   {serve(flipByte(genuine, len(genuine)-3)), ErrChain, "VCEK not signed by ASK"},
		"server error":                     {status(http.StatusInternalServerError), nil, "HTTP 500"},
		"rate limited":                     {status(http.StatusTooManyRequests), nil, "limits the request rate"},
		"not found for this chip and TCB":  {status(http.StatusNotFound), ErrVCEKNotServed, "404"},
		"bad request (as for a wrong URL)": {status(http.StatusBadRequest), nil, "HTTP 400"},
	} {
		t.Run(name, func(t *testing.T) {
			kds := genuineKDS(t)
			kds.respond = tc.respond
			base, client := startKDS(t, kds)
			cache := emptyCache(t)
			_, _, err := cache.Fetch(context.Background(), genuineVerifier(t), r, FetchOptions{KDSURL: base, Client: client, Product: Milan})
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %v naming %q", err, tc.want, tc.text)
			}
			if files := cacheFiles(t, cache); len(files) != 0 {
				t.Errorf("refused answer left files in the cache: %v", files)
			}
			if tc.want != nil && tc.want != ErrVCEKNotServed && !strings.Contains(err.Error(), "nothing written") {
				t.Errorf("error does not say that nothing was written: %v", err)
			}
		})
	}

	// A refused answer leaves an existing entry as it was.
	kds := genuineKDS(t)
	kds.respond = serve(foreignVCEK.Raw)
	base, client := startKDS(t, kds)
	cache := emptyCache(t)
	_, k := genuineKey(t)
	if err := os.WriteFile(cache.Path(k), genuine, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cache.Fetch(context.Background(), genuineVerifier(t), r, FetchOptions{KDSURL: base, Client: client}); err == nil {
		t.Fatal("foreign VCEK accepted")
	}
	if stored, _ := os.ReadFile(cache.Path(k)); !bytes.Equal(stored, genuine) {
		t.Error("existing entry changed")
	}
	// An unreachable service is an error, and nothing is written.
	cache = emptyCache(t)
	if _, _, err := cache.Fetch(context.Background(), genuineVerifier(t), r, FetchOptions{KDSURL: "http://127.0.0.1:1", Client: loopbackClient()}); err == nil || len(cacheFiles(t, cache)) != 0 {
		t.Errorf("unreachable service: %v", err)
	}
}

// TestFetchVCEKTestPKI fetches VCEKs of the test PKI (Genoa and Turin, version 3 reports) and checks that a
// VCEK of the right chain but for another chip or TCB is refused.
func TestFetchVCEKTestPKI(t *testing.T) {
	for _, product := range []Product{Genoa, Turin} {
		t.Run(product.String(), func(t *testing.T) {
			tcb := defaultTestTCB
			if product == Turin {
				tcb.FMC = 2
			}
			o := reportOptions{product: product, tcb: tcb}
			pki := getTestPKI(t, product)
			roots := testRoots(t, product)
			cert, key := pki.endorsementKey(t, ekOptions{tcb: tcb})
			r := mustParse(t, signReport(t, buildReport(t, o), key))
			k, err := VCEKKeyFor(r, product)
			if err != nil {
				t.Fatal(err)
			}
			otherChip, _ := pki.endorsementKey(t, ekOptions{tcb: tcb, chipID: bytes.Repeat([]byte{0x11}, len(k.HWID))})
			otherTCB := tcb
			otherTCB.SNP++
			otherTCBCert, _ := pki.endorsementKey(t, ekOptions{tcb: otherTCB})
			kds := &fakeKDS{certs: map[string][]byte{k.FileName(): cert.Raw}}
			base, client := startKDS(t, kds)
			v := testVerifier(t, roots, nil)
			for name, wrong := range map[string]*x509.Certificate{"other chip": otherChip, "other TCB": otherTCBCert} {
				kds.respond = func(w http.ResponseWriter, _ []byte) { _, _ = w.Write(wrong.Raw) }
				cache := emptyCache(t)
				if _, _, err := cache.Fetch(context.Background(), v, r, FetchOptions{KDSURL: base, Client: client}); !errors.Is(err, ErrSignature) && !errors.Is(err, ErrChain) {
					t.Errorf("%s: %v", name, err)
				}
				if files := cacheFiles(t, cache); len(files) != 0 {
					t.Errorf("%s: cache holds %v", name, files)
				}
			}
			kds.respond = nil
			cache := emptyCache(t)
			if _, _, err := cache.Fetch(context.Background(), v, r, FetchOptions{KDSURL: base, Client: client}); err != nil {
				t.Fatal(err)
			}
			if want := "/vcek/v1/" + product.String() + "/" + hex.EncodeToString(k.HWID) + "?"; !strings.HasPrefix(kds.requests[len(kds.requests)-1], want) {
				t.Errorf("request %s, want prefix %s", kds.requests[len(kds.requests)-1], want)
			}
			vr, err := Validate(cachedVerifier(t, roots, cache), testPolicy(o), r.Raw(), nil)
			if err != nil || !vr.VCEKFromCache {
				t.Fatalf("offline verification: %v", err)
			}
		})
	}
}

func flipByte(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// TestVCEKCacheTampered checks that an entry altered on disk is refused at verification: a cached
// certificate is trusted only if it verifies like one from the evidence.
func TestVCEKCacheTampered(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	_, k := genuineKey(t)
	genuine := readTestdata(t, "vcek.testcer")
	chain := genuineCerts(t)
	foreign, _ := getTestPKI(t, Milan).endorsementKey(t, ekOptions{tcb: TCB{Bootloader: 2, SNP: 5, Microcode: 68}, chipID: mustParse(t, raw).ChipID[:]})
	// The genuine VCEK under the name of another TCB does not help a report of that TCB: the name is only a
	// lookup key, the certificate's TCB must match the report.
	hwidAt := bytes.Index(genuine, mustParse(t, raw).ChipID[:])
	if hwidAt < 0 {
		t.Fatal("the genuine VCEK does not hold the chip ID")
	}
	for name, tc := range map[string]struct {
		write func(path string) error
		want  error
		text  string
	}{
		"bit flipped in the signature": {func(p string) error { return os.WriteFile(p, flipByte(genuine, len(genuine)-3), 0o644) }, ErrChain, "VCEK not signed by ASK"},
		"bit flipped in the chip ID":   {func(p string) error { return os.WriteFile(p, flipByte(genuine, hwidAt+5), 0o644) }, ErrChain, "VCEK not signed by ASK"},
		"truncated":                    {func(p string) error { return os.WriteFile(p, genuine[:100], 0o644) }, ErrMalformedCertificates, "VCEK cache entry"},
		"garbage":                      {func(p string) error { return os.WriteFile(p, []byte("not a certificate"), 0o644) }, ErrMalformedCertificates, "VCEK cache entry"},
		"empty":                        {func(p string) error { return os.WriteFile(p, nil, 0o644) }, ErrMalformedCertificates, "empty VCEK"},
		"too large":                    {func(p string) error { return os.WriteFile(p, make([]byte, MaxVCEKSize+10), 0o644) }, ErrMalformedCertificates, "more than"},
		"the ASK":                      {func(p string) error { return os.WriteFile(p, chain.Intermediate.Raw, 0o644) }, ErrMalformedCertificates, "not a VCEK"},
		"a test-PKI VCEK of the chip":  {func(p string) error { return os.WriteFile(p, foreign.Raw, 0o644) }, ErrChain, "not signed by ASK of the embedded Milan root"},
		"a directory":                  {func(p string) error { return os.Mkdir(p, 0o755) }, ErrMalformedCertificates, "not a regular file"},
		"a symbolic link": {func(p string) error {
			target := filepath.Join(filepath.Dir(p), "elsewhere")
			if err := os.WriteFile(target, genuine, 0o644); err != nil {
				return err
			}
			return os.Symlink(target, p)
		}, ErrMalformedCertificates, "not a regular file"},
	} {
		t.Run(name, func(t *testing.T) {
			cache := emptyCache(t)
			if err := tc.write(cache.Path(k)); err != nil {
				t.Fatal(err)
			}
			_, err := Validate(cachedVerifier(t, nil, cache), genuinePolicy(t), raw, nil)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %v naming %q", err, tc.want, tc.text)
			}
		})
	}
	// The untouched entry verifies.
	cache := emptyCache(t)
	if err := os.WriteFile(cache.Path(k), genuine, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Validate(cachedVerifier(t, nil, cache), genuinePolicy(t), raw, nil); err != nil {
		t.Fatal(err)
	}
	// A VLEK-signed report never uses the VCEK cache.
	ev := newTestEvidence(t, reportOptions{vlek: true})
	if _, err := cachedVerifier(t, ev.roots, cache).Verify(mustParse(t, ev.raw), &Certificates{}); !errors.Is(err, ErrMissingCertificate) || !strings.Contains(err.Error(), "no VLEK certificate") {
		t.Errorf("VLEK report: %v", err)
	}
}

func TestLoadVCEKCache(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", filepath.Join(dir, "missing"), file} {
		if _, err := LoadVCEKCache(d); err == nil {
			t.Errorf("%q accepted", d)
		}
	}
}

func TestParseVCEK(t *testing.T) {
	genuine := readTestdata(t, "vcek.testcer")
	for name, data := range map[string][]byte{
		"DER": genuine,
		"PEM": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: genuine}),
	} {
		if c, err := ParseVCEK(data); err != nil || !bytes.Equal(c.Raw, genuine) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, data := range map[string][]byte{
		"PEM of another type": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: genuine}),
		"PEM with headers":    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"a": "b"}, Bytes: genuine}),
		"PEM and text":        append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: genuine}), "x"...),
		"chain":               readTestdata(t, "milan.testcer"),
	} {
		if _, err := ParseVCEK(data); !errors.Is(err, ErrMalformedCertificates) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A cache shipped in memory (as in a cluster's join configuration) holds what the directory held and verifies
// the same way; its names are checked, and a tampered entry fails verification.
func TestVCEKCacheInMemory(t *testing.T) {
	dir := emptyCache(t)
	_, k := genuineKey(t)
	vcek := readTestdata(t, "vcek.testcer")
	if err := os.WriteFile(dir.Path(k), vcek, 0o600); err != nil {
		t.Fatal(err)
	}
	// Not entries: a file with another name, a directory.
	os.WriteFile(filepath.Join(dir.Dir(), "README"), []byte("notes"), 0o600)
	os.Mkdir(filepath.Join(dir.Dir(), "sub.der"), 0o700)
	entries, err := dir.Entries()
	if err != nil || len(entries) != 1 || !bytes.Equal(entries[k.FileName()], vcek) {
		t.Fatalf("Entries() = %d entries, %v", len(entries), err)
	}
	mem, err := NewVCEKCacheFromEntries(entries)
	if err != nil {
		t.Fatal(err)
	}
	raw := readTestdata(t, "attestation.bin")
	vr, err := Validate(cachedVerifier(t, nil, mem), genuinePolicy(t), raw, nil)
	if err != nil || !vr.VCEKFromCache {
		t.Fatalf("offline verification with the cache in memory: %v", err)
	}
	if again, err := mem.Entries(); err != nil || len(again) != 1 {
		t.Fatalf("Entries() of the cache in memory: %v", err)
	}
	if _, _, err := mem.Fetch(context.Background(), genuineVerifier(t), &Report{}, FetchOptions{}); err == nil {
		t.Error("a cache in memory was filled")
	}

	empty, _ := NewVCEKCacheFromEntries(map[string][]byte{})
	if _, err := Validate(cachedVerifier(t, nil, empty), genuinePolicy(t), raw, nil); !errors.Is(err, ErrVCEKNotCached) {
		t.Errorf("empty cache in memory: %v", err)
	}
	tampered := bytes.Clone(vcek)
	tampered[len(tampered)-10] ^= 1 // in the signature
	bad, _ := NewVCEKCacheFromEntries(map[string][]byte{k.FileName(): tampered})
	if _, err := Validate(cachedVerifier(t, nil, bad), genuinePolicy(t), raw, nil); err == nil {
		t.Error("a tampered entry in memory verified")
	}
	for name, entries := range map[string]map[string][]byte{
		"path":      {"../" + k.FileName(): vcek},
		"upper":     {"Milan-00.der": vcek},
		"not der":   {"milan-00.pem": vcek},
		"empty":     {".der": vcek},
		"oversized": {k.FileName(): make([]byte, MaxVCEKSize+1)},
	} {
		if _, err := NewVCEKCacheFromEntries(entries); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	many := map[string][]byte{}
	for i := range MaxVCEKEntries + 1 {
		many[fmt.Sprintf("milan-%04x.der", i)] = vcek
	}
	if _, err := NewVCEKCacheFromEntries(many); err == nil {
		t.Error("more than MaxVCEKEntries entries accepted")
	}
}
