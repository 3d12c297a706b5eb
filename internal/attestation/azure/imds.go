package azure

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// metadataCall sends req with client, or a client with timeout, and
// returns the body of a 200 answer of at most limit bytes. what names the request in errors.
func metadataCall(ctx context.Context, client *http.Client, timeout time.Duration, req *http.Request, limit int, what string) ([]byte, error) {
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("requesting the %s from the instance metadata service (%s): %w", what, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("reading the %s response: %w", what, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the instance metadata service answered the %s request with %s: %.200s", what, resp.Status, body)
	}
	if len(body) > limit {
		return nil, fmt.Errorf("the %s response exceeds %d bytes", what, limit)
	}
	return body, nil
}
