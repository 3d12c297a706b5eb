package azure_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/google/go-tpm-tools/simulator"

	"github.com/constellation-dev/constellation/internal/attestation/azure"
	"github.com/constellation-dev/constellation/internal/attestation/azure/azuretest"
)

func TestNVReaderWithTPMSimulator(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	r := azure.NewNVReader(sim)
	if _, err := r.ReadHCLReport(t.Context()); err == nil {
		t.Fatal("read an HCL report from a TPM without one")
	}
	genuine := readFile(t, "hcl-report-snp-preview.bin") // 2048 bytes, as the NV index holds them
	if err := azuretest.WriteHCLReportNV(sim, genuine); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadHCLReport(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(genuine) {
		t.Fatal("the NV index returned other bytes than written")
	}
	if _, err := azure.ParseHCLReport(got); err != nil {
		t.Fatal(err)
	}
	if _, err := (*azure.NVReader)(nil).ReadHCLReport(t.Context()); err == nil {
		t.Error("nil reader")
	}
}

func TestTHIMClient(t *testing.T) {
	vcek, chain := readFile(t, "vcek.pem"), readFile(t, "thim-chain.pem")
	srv := azuretest.NewTHIMServer(vcek, chain)
	defer srv.Close()
	c := &azure.THIMClient{URL: srv.URL + azuretest.THIMPath}
	certs, err := c.FetchCertificates(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if certs.VCEK != string(vcek) || certs.Chain != string(chain) || certs.TCBM == "" {
		t.Error("certificates differ from the served ones")
	}
	if pem := certs.PEM(); len(pem) < len(vcek)+len(chain) {
		t.Error("PEM lacks certificates")
	}
	for name, url := range map[string]string{
		"not found":   srv.URL + "/metadata/other",
		"unreachable": "http://127.0.0.1:1/metadata/THIM/amd/certification",
	} {
		if _, err := (&azure.THIMClient{URL: url}).FetchCertificates(t.Context()); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	for name, body := range map[string]string{
		"not JSON": "<html>",
		"no VCEK":  `{"certificateChain":"x"}`,
		"no chain": `{"vcekCert":"x"}`,
	} {
		bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
		if _, err := (&azure.THIMClient{URL: bad.URL}).FetchCertificates(t.Context()); err == nil {
			t.Errorf("%s: no error", name)
		}
		bad.Close()
	}
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
