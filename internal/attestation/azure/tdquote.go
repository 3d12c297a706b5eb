package azure

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// TDQuoteURL is the endpoint of the instance metadata service through which an Azure TDX confidential VM
// obtains a quote for the TD report of its HCL report: the host's quoting enclave signs it. It is reachable
// only from inside the VM.
const TDQuoteURL = "http://169.254.169.254/acc/tdquote"

// maxTDQuoteResponseSize bounds the response of the quote endpoint (a quote is about 5 KiB).
const maxTDQuoteResponseSize = 1 << 20

// TDQuoteRequest is the JSON body of a quote request.
type TDQuoteRequest struct {
	// Report is the 1024-byte TD report, base64url-encoded with padding.
	Report string `json:"report"`
}

// TDQuoteResponse is the JSON body of the answer.
type TDQuoteResponse struct {
	// Quote is the quote, base64url-encoded without padding. The service returns it in a zero-filled
	// buffer: the quote's own length fields say where it ends.
	Quote string `json:"quote"`
}

// TDQuoteClient obtains TD quotes from the instance metadata service. The zero value uses [TDQuoteURL] and
// a client with a 30-second timeout.
type TDQuoteClient struct {
	// URL overrides TDQuoteURL (tests).
	URL string
	// Client overrides the HTTP client.
	Client *http.Client
}

// GetTDQuote posts tdReport (a TDREPORT_STRUCT, TDReportSize bytes) and returns the decoded quote as the
// service sent it, zero padding included. It checks nothing in the quote: the caller trims and parses it
// and checks that it is the quote of tdReport.
func (c *TDQuoteClient) GetTDQuote(ctx context.Context, tdReport []byte) ([]byte, error) {
	if len(tdReport) != TDReportSize {
		return nil, fmt.Errorf("a TD report has %d bytes, not %d", TDReportSize, len(tdReport))
	}
	url := TDQuoteURL
	if c != nil && c.URL != "" {
		url = c.URL
	}
	var client *http.Client
	if c != nil {
		client = c.Client
	}
	body, err := json.Marshal(TDQuoteRequest{Report: base64.URLEncoding.EncodeToString(tdReport)})
	if err != nil {
		return nil, fmt.Errorf("TD quote request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("TD quote request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	raw, err := metadataCall(ctx, client, 30*time.Second, req, maxTDQuoteResponseSize, "TD quote")
	if err != nil {
		return nil, err
	}
	var out TDQuoteResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("the TD quote response is not the expected JSON: %w", err)
	}
	if out.Quote == "" {
		return nil, errors.New("the TD quote response has no quote")
	}
	quote, err := base64.RawURLEncoding.Strict().DecodeString(strings.TrimRight(out.Quote, "="))
	if err != nil {
		return nil, fmt.Errorf("the TD quote in the response is not base64url: %w", err)
	}
	return quote, nil
}
