// Package verifyservice runs on every node and answers a verifier's nonce with fresh attestation evidence, so
// that anyone can check at any time what a node runs (`constellation verify`). Evidence protects itself: it
// is bound to the caller's nonce and signed by the node's certified attestation key, so plain HTTP suffices.
package verifyservice

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// Port is the verification service's port on every node.
const Port = 9090

// Handler serves GET /v1/attest?nonce=<hex>.
func Handler(issuer attestation.Issuer, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/attest", func(w http.ResponseWriter, r *http.Request) {
		nonce, err := hex.DecodeString(r.URL.Query().Get("nonce"))
		if err != nil {
			http.Error(w, "nonce must be hex", http.StatusBadRequest)
			return
		}
		if err := attestation.CheckNonce(nonce); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ev, err := issuer.Issue(r.Context(), nonce, nil)
		if err != nil {
			log.Error("issuing evidence failed", "remote", r.RemoteAddr, "error", err)
			http.Error(w, "issuing evidence failed", http.StatusInternalServerError)
			return
		}
		log.Info("evidence issued", "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "application/json")
		w.Write(ev)
	})
	return mux
}

// Fetch asks the verification service at endpoint (host:port) for evidence bound to nonce.
func Fetch(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/v1/attest?nonce=%s", endpoint, hex.EncodeToString(nonce))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking %s for evidence: %w", endpoint, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, attestation.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading evidence from %s: %w", endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("verification service at %s: %s: %s", endpoint, resp.Status, raw)
	}
	return raw, nil
}
