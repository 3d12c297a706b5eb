package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
)

// echoIssuer records what the handler asks for; the handler's request parsing is under test.
type echoIssuer struct {
	nonce, userData []byte
	measured        bool
	pcr             uint32
	event           []byte
}

func (e *echoIssuer) Measure(pcr uint32, _ eventlog.EventType, data []byte) error {
	e.measured, e.pcr, e.event = true, pcr, data
	return nil
}

func (*echoIssuer) Variant() attestation.Variant { return attestation.MiniVTPM }
func (e *echoIssuer) Issue(_ context.Context, nonce, userData []byte) ([]byte, error) {
	e.nonce, e.userData = nonce, userData
	return []byte("evidence"), nil
}

// FuzzHandler: whatever a local process sends, the agent asks for evidence only with a nonce and user data
// within bounds, measures only an event within bounds into a PCR that exists, and answers every other request
// with 400.
func FuzzHandler(f *testing.F) {
	f.Add([]byte(`{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","userData":"aGFzaA=="}`))
	f.Add([]byte(`{"nonce":"AAAA"}`))
	f.Add([]byte(`{"nonce":null,"userData":null}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`{"pcr": 4, "event": "a component"}`))
	f.Add([]byte(`{"pcr": 24, "event": "x"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m := &echoIssuer{}
		mrec := httptest.NewRecorder()
		Handler(m, slog.New(slog.DiscardHandler)).ServeHTTP(mrec, httptest.NewRequest(http.MethodPost, "/v1/measure", bytes.NewReader(body)))
		switch mrec.Code {
		case http.StatusNoContent:
			if !m.measured || m.pcr > 23 || len(m.event) == 0 || len(m.event) > maxEvent {
				t.Fatalf("measured PCR %d with an event of %d bytes", m.pcr, len(m.event))
			}
		case http.StatusBadRequest:
			if m.measured {
				t.Fatal("measured for a refused request")
			}
		default:
			t.Fatalf("measure: status %d", mrec.Code)
		}

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
