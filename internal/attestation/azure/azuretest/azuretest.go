// Package azuretest provides faithful fakes of the parts of an Azure confidential VM that tests need: the
// paravisor's HCL report in a vTPM NV index and the instance metadata service's VCEK endpoint. The fakes
// run only on this machine: a TPM simulator or swtpm, and an HTTP server on loopback.
package azuretest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/constellation-dev/constellation/internal/attestation/azure"
)

// WriteHCLReportNV does what the Azure paravisor does at boot: it defines NV index 0x01400001 with the
// size of report, readable with owner authorization, and writes report into it.
func WriteHCLReportNV(rw io.ReadWriter, report []byte) error {
	idx := tpmutil.Handle(azure.NVIndexHCLReport)
	attrs := tpm2.AttrOwnerWrite | tpm2.AttrOwnerRead | tpm2.AttrAuthRead | tpm2.AttrNoDA
	if err := tpm2.NVDefineSpace(rw, tpm2.HandleOwner, idx, "", "", nil, attrs, uint16(len(report))); err != nil {
		return fmt.Errorf("defining NV index 0x%08x: %w", azure.NVIndexHCLReport, err)
	}
	const chunk = 512
	for off := 0; off < len(report); off += chunk {
		end := min(off+chunk, len(report))
		if err := tpm2.NVWrite(rw, tpm2.HandleOwner, idx, "", report[off:end], uint16(off)); err != nil {
			return fmt.Errorf("writing NV index 0x%08x: %w", azure.NVIndexHCLReport, err)
		}
	}
	return nil
}

// THIMPath is the path of the certification endpoint.
const THIMPath = "/metadata/THIM/amd/certification"

// NewTHIMServer starts a loopback server that answers the certification endpoint as the instance metadata
// service does: GET with the header "Metadata: true", a JSON object with the PEM VCEK and chain. The
// caller closes it; its URL plus THIMPath is the endpoint.
func NewTHIMServer(vcekPEM, chainPEM []byte) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != THIMPath || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Metadata") != "true" {
			http.Error(w, `{"error":"Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(azure.THIMCertificates{VCEK: string(vcekPEM), Chain: string(chainPEM), TCBM: "5D00000000000602", CacheControl: "86400"})
	}))
}

// TDQuotePath is the path of the TD quote endpoint.
const TDQuotePath = "/acc/tdquote"

// NewTDQuoteServer starts a loopback server that answers the TD quote endpoint as the instance metadata
// service does: POST of JSON {"report": base64url TD report}, answered with {"quote": base64url quote}
// (no padding). quote plays the host's quoting enclave; an error from it is answered with 400. The caller
// closes the server; its URL plus TDQuotePath is the endpoint.
func NewTDQuoteServer(quote func(tdReport []byte) ([]byte, error)) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != TDQuotePath || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		var req azure.TDQuoteRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, `{"error":"invalid request body"}`, http.StatusBadRequest)
			return
		}
		report, err := base64.URLEncoding.DecodeString(req.Report)
		if err != nil {
			report, err = base64.RawURLEncoding.DecodeString(req.Report)
		}
		if err != nil || len(report) != azure.TDReportSize {
			http.Error(w, `{"error":"invalid report"}`, http.StatusBadRequest)
			return
		}
		q, err := quote(report)
		if err != nil {
			http.Error(w, fmt.Sprintf(`{"error":%q}`, err.Error()), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(azure.TDQuoteResponse{Quote: base64.RawURLEncoding.EncodeToString(q)})
	}))
}
