package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// echoIssuer records what the handler asks for; the handler's request parsing is under test.
type echoIssuer struct{ nonce, userData []byte }

func (*echoIssuer) Variant() attestation.Variant { return attestation.MiniVTPM }
func (e *echoIssuer) Issue(_ context.Context, nonce, userData []byte) ([]byte, error) {
	e.nonce, e.userData = nonce, userData
	return []byte("evidence"), nil
}

// FuzzHandler: whatever a local process sends, the agent asks for evidence only with a nonce and user data
// within bounds, and answers every other request with 400.
func FuzzHandler(f *testing.F) {
	f.Add([]byte(`{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","userData":"aGFzaA=="}`))
	f.Add([]byte(`{"nonce":"AAAA"}`))
	f.Add([]byte(`{"nonce":null,"userData":null}`))
	f.Add([]byte(`{} {}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		iss := &echoIssuer{}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/evidence", bytes.NewReader(body))
		Handler(iss, slog.New(slog.DiscardHandler)).ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
			if attestation.CheckNonce(iss.nonce) != nil || len(iss.userData) > attestation.MaxUserDataSize {
				t.Fatalf("evidence issued for nonce %x, user data of %d bytes", iss.nonce, len(iss.userData))
			}
		case http.StatusBadRequest:
			if iss.nonce != nil {
				t.Fatal("evidence issued for a refused request")
			}
		default:
			t.Fatalf("status %d", rec.Code)
		}
	})
}
