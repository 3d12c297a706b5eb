package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// THIMURL is the endpoint of the instance metadata service through which an Azure confidential VM obtains
// the VCEK certificate of its host's processor and the AMD certificate chain, served from Azure's Trusted
// Hardware Identity Management (THIM) cache. It is reachable only from inside the VM.
const THIMURL = "http://169.254.169.254/metadata/THIM/amd/certification"

// maxTHIMResponseSize bounds the response of the certification endpoint.
const maxTHIMResponseSize = 1 << 20

// THIMCertificates are the certificates the certification endpoint returns. They are candidates for a
// verifier to check against the AMD roots it embeds, never anchors.
type THIMCertificates struct {
	// VCEK is the PEM VCEK certificate of the host's processor at its current TCB.
	VCEK string `json:"vcekCert"`
	// Chain is the PEM chain above the VCEK (ASK, ARK).
	Chain string `json:"certificateChain"`
	// TCBM is the TCB version, as hex, the VCEK was issued for.
	TCBM string `json:"tcbm"`
	// CacheControl is the cache lifetime the service suggests.
	CacheControl string `json:"cacheControl"`
}

// PEM returns the VCEK followed by the chain.
func (c *THIMCertificates) PEM() []byte {
	return []byte(strings.TrimSpace(c.VCEK) + "\n" + strings.TrimSpace(c.Chain) + "\n")
}

// THIMClient obtains the VCEK chain from the certification endpoint. The zero value uses [THIMURL] and a
// client with a 10-second timeout.
type THIMClient struct {
	// URL overrides THIMURL (tests).
	URL string
	// Client overrides the HTTP client.
	Client *http.Client
}

// FetchCertificates requests the VCEK and its chain.
func (c *THIMClient) FetchCertificates(ctx context.Context) (*THIMCertificates, error) {
	url := THIMURL
	if c != nil && c.URL != "" {
		url = c.URL
	}
	var client *http.Client
	if c != nil {
		client = c.Client
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("VCEK request: %w", err)
	}
	req.Header.Set("Metadata", "true")
	body, err := metadataCall(ctx, client, 10*time.Second, req, maxTHIMResponseSize, "VCEK")
	if err != nil {
		return nil, err
	}
	var certs THIMCertificates
	if err := json.Unmarshal(body, &certs); err != nil {
		return nil, fmt.Errorf("the VCEK response is not the expected JSON: %w", err)
	}
	if strings.TrimSpace(certs.VCEK) == "" {
		return nil, errors.New("the VCEK response has no vcekCert")
	}
	if strings.TrimSpace(certs.Chain) == "" {
		return nil, errors.New("the VCEK response has no certificateChain")
	}
	return &certs, nil
}
