package snp

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/atomicfile"
)

// DefaultKDSURL is the base URL of AMD's key distribution service.
const DefaultKDSURL = "https://kdsintf.amd.com"

// ErrVCEKNotServed is returned by [VCEKCache.Fetch] when the key distribution service has no VCEK for the
// report's chip and TCB.
var ErrVCEKNotServed = errors.New("the key distribution service has no such VCEK")

// VCEKURL returns the URL of k's VCEK at the key distribution service at base (for instance
// [DefaultKDSURL]): {base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=.. with the
// hardware ID in lower-case hexadecimal and the TCB components as two-digit decimal numbers; for Turin the
// hardware ID is the first 8 bytes of CHIP_ID and fmcSPL comes first.
func VCEKURL(base string, k VCEKKey) (string, error) {
	b, err := parseKDSURL(base)
	if err != nil {
		return "", err
	}
	if err := k.check(); err != nil {
		return "", err
	}
	var q []string
	for _, p := range k.tcbParams() {
		q = append(q, fmt.Sprintf("%s=%02d", p.name, p.val))
	}
	return fmt.Sprintf("%s/vcek/v1/%s/%x?%s", b, k.Product, k.HWID, strings.Join(q, "&")), nil
}

// CheckKDSURL checks a base URL of a key distribution service: http or https, a host, an optional path, and
// no user, query or fragment.
func CheckKDSURL(base string) error {
	_, err := parseKDSURL(base)
	return err
}

// parseKDSURL checks a base URL of a key distribution service and returns it without a trailing slash.
func parseKDSURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("key distribution service URL: %w", err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("key distribution service URL %q: want http(s)://host[:port][/path], without user, query or fragment", base)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// FetchOptions configure [VCEKCache.Fetch].
type FetchOptions struct {
	// KDSURL is the base URL of the key distribution service; empty means [DefaultKDSURL].
	KDSURL string
	// Client makes the request; nil means a client with a 30-second timeout.
	Client *http.Client
	// Product is the product of the report; ProductUnknown means the product of a version 3 report's
	// CPUID, or, for a version 2 report, Milan and then Genoa until the service has the VCEK.
	Product Product
}

// Fetch obtains the VCEK that signed r from a key distribution service and stores it in the cache. Before
// it writes anything, it verifies the fetched certificate with v exactly as a verification would: it must
// be one VCEK certificate of the requested product that chains to the embedded ASK and ARK, matches the
// report's chip ID and TCB, and verifies the report's signature. The entry is written atomically. An
// entry that exists already is replaced only by a certificate that verified.
func (c *VCEKCache) Fetch(ctx context.Context, v *Verifier, r *Report, opts FetchOptions) (VCEKKey, *x509.Certificate, error) {
	if c == nil || v == nil || r == nil {
		return VCEKKey{}, nil, errors.New("VCEK fetch: a cache, a verifier and a report are required")
	}
	if c.entries != nil {
		return VCEKKey{}, nil, errors.New("VCEK fetch: the cache is held in memory; fetch into a cache directory")
	}
	base := opts.KDSURL
	if base == "" {
		base = DefaultKDSURL
	}
	if err := CheckKDSURL(base); err != nil {
		return VCEKKey{}, nil, err
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{Timeout: defaultFetchTimeout}
	}
	keys, err := VCEKKeys(r, opts.Product)
	if err != nil {
		return VCEKKey{}, nil, err
	}
	var notServed []string
	for _, k := range keys {
		cert, err := fetchVCEK(ctx, client, base, k)
		if errors.Is(err, ErrVCEKNotServed) {
			notServed = append(notServed, err.Error())
			continue
		}
		if err != nil {
			return k, nil, err
		}
		verified, err := v.Verify(r, &Certificates{VCEK: cert})
		if err != nil {
			return k, nil, fmt.Errorf("refused the VCEK the key distribution service sent for %v, nothing written: %w", k, err)
		}
		if verified.Product != k.Product {
			return k, nil, fmt.Errorf("%w: refused the VCEK the key distribution service sent for %v: it is for %v, nothing written", ErrChain, k, verified.Product)
		}
		if err := atomicfile.Write(c.Path(k), cert.Raw, 0o644); err != nil {
			return k, nil, fmt.Errorf("VCEK cache: %w", err)
		}
		return k, cert, nil
	}
	return VCEKKey{}, nil, fmt.Errorf("%w: %s", ErrVCEKNotServed, strings.Join(notServed, "; "))
}

const defaultFetchTimeout = 30 * time.Second

// fetchVCEK requests k's VCEK and parses the answer.
func fetchVCEK(ctx context.Context, client *http.Client, base string, k VCEKKey) (*x509.Certificate, error) {
	u, err := VCEKURL(base, k)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("VCEK request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("VCEK request for %v: %w", k, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%w for %v (HTTP 404 from %s)", ErrVCEKNotServed, k, u)
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, fmt.Errorf("VCEK request for %v: the key distribution service limits the request rate (HTTP 429, retry after %q); try again later", k, resp.Header.Get("Retry-After"))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("VCEK request for %v: HTTP %s from %s", k, resp.Status, u)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxVCEKSize+1))
	if err != nil {
		return nil, fmt.Errorf("VCEK request for %v: reading the answer: %w", k, err)
	}
	cert, err := ParseVCEK(data)
	if err != nil {
		return nil, fmt.Errorf("refused the answer of the key distribution service for %v, nothing written: %w", k, err)
	}
	return cert, nil
}
