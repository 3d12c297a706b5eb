// Package agent lets the node's own services attest through the node's TPM without opening it themselves.
//
// The bootstrapper is the only process that talks to the node's TPM. It serves this agent on a Unix socket
// ([SocketPath]) that only processes on the node reach: the in-cluster services (the join service and the key
// service on the control plane, the verification service on every node) mount it and use [Client] as their
// [attestation.Issuer].
// The agent also measures components the node loads at runtime into a PCR ([Measurer]), as firmware measures
// the boot: such a measurement can only change what the node's evidence shows, never make it more trusted.
// The agent issues evidence for any nonce and user data, so whoever can reach the socket can speak for the
// node: the socket is owner-only and never exposed over the network.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// SocketPath is where the bootstrapper serves the agent on every node.
const SocketPath = "/run/constellation/attest.sock"

// maxRequest bounds a request body: a nonce and user data, base64-encoded in JSON.
const maxRequest = 4 * (attestation.MaxNonceSize + attestation.MaxUserDataSize)

// request is the body of POST /v1/evidence.
type request struct {
	Nonce    []byte `json:"nonce"`
	UserData []byte `json:"userData"`
}

// Measurer extends a PCR with an event and records it in the event log the node's evidence carries.
type Measurer interface {
	Measure(pcr uint32, typ eventlog.EventType, data []byte) error
}

// measureRequest is the body of POST /v1/measure.
type measureRequest struct {
	PCR   uint32 `json:"pcr"`
	Event string `json:"event"`
}

// maxEvent bounds the description of a runtime measurement.
const maxEvent = 1024

// Handler serves POST /v1/evidence: evidence from issuer for the request's nonce and user data; and, if
// issuer is a [Measurer], POST /v1/measure: {"pcr": N, "event": "what was loaded"} extends PCR N (0 to 23)
// with that event.
func Handler(issuer attestation.Issuer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	if m, ok := issuer.(Measurer); ok {
		mux.HandleFunc("POST /v1/measure", func(w http.ResponseWriter, r *http.Request) {
			const usage = "request must be JSON {\"pcr\": 0-23, \"event\": text}: "
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 2*maxEvent))
			if err != nil {
				http.Error(w, usage+err.Error(), http.StatusBadRequest)
				return
			}
			var req measureRequest
			if err := strictjson.Decode(body, &req, 2*maxEvent); err != nil {
				http.Error(w, usage+err.Error(), http.StatusBadRequest)
				return
			}
			if req.PCR > 23 || req.Event == "" || len(req.Event) > maxEvent {
				http.Error(w, usage+"PCR out of range, or event empty or longer than 1024 bytes", http.StatusBadRequest)
				return
			}
			if err := m.Measure(req.PCR, eventlog.IPL, []byte(req.Event)); err != nil {
				log.Error("a runtime measurement failed", "pcr", req.PCR, "error", err)
				http.Error(w, "measuring failed", http.StatusInternalServerError)
				return
			}
			log.Warn("runtime measurement extended a PCR", "pcr", req.PCR, "event", req.Event)
			w.WriteHeader(http.StatusNoContent)
		})
	}
	mux.HandleFunc("POST /v1/evidence", func(w http.ResponseWriter, r *http.Request) {
		const usage = "request must be JSON {\"nonce\": base64, \"userData\": base64}: "
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequest))
		if err != nil {
			http.Error(w, usage+err.Error(), http.StatusBadRequest)
			return
		}
		var req request
		if err := strictjson.Decode(body, &req, maxRequest); err != nil {
			http.Error(w, usage+err.Error(), http.StatusBadRequest)
			return
		}
		if err := attestation.CheckNonce(req.Nonce); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if len(req.UserData) > attestation.MaxUserDataSize {
			http.Error(w, fmt.Sprintf("user data of %d bytes exceeds the limit of %d", len(req.UserData), attestation.MaxUserDataSize), http.StatusBadRequest)
			return
		}
		ev, err := issuer.Issue(r.Context(), req.Nonce, req.UserData)
		if err != nil {
			log.Error("issuing evidence for a local service failed", "error", err)
			http.Error(w, "issuing evidence failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(ev)
	})
	return mux
}

// Listen creates the agent's socket at path, readable and writable by its owner only, replacing a stale one.
// The socket is created in a private directory and moved into place once its mode is set, so nobody can
// connect in between.
func Listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale agent socket: %w", err)
	}
	private, err := os.MkdirTemp(filepath.Dir(path), ".agent-")
	if err != nil {
		return nil, fmt.Errorf("attestation agent: %w", err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "sock")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("attestation agent: %w", err)
	}
	// The listener must not remove the socket by its temporary name when it closes.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("attestation agent: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("attestation agent: %w", err)
	}
	return &removeOnClose{Listener: ln, path: path}, nil
}

// removeOnClose removes the socket file when the listener closes.
type removeOnClose struct {
	net.Listener
	path string
}

func (l *removeOnClose) Close() error {
	err := l.Listener.Close()
	os.Remove(l.path)
	return err
}

// Client is an [attestation.Issuer] that asks the agent on the node's socket.
type Client struct {
	variant attestation.Variant
	http    *http.Client
}

// NewClient returns an issuer of the given variant that reaches the agent at socketPath.
func NewClient(socketPath string, variant attestation.Variant) *Client {
	return &Client{variant: variant, http: SocketClient(socketPath, 30*time.Second)}
}

// SocketClient returns an HTTP client whose every request goes to the Unix socket at path (made with
// [Listen]), whatever the URL's host, and times out after timeout (0: no limit but the request's context).
func SocketClient(path string, timeout time.Duration) *http.Client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial}, Timeout: timeout}
}

// Variant is the kind of evidence the node's agent issues.
func (c *Client) Variant() attestation.Variant { return c.variant }

// Issue asks the agent for evidence bound to nonce and userData.
func (c *Client) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	body, err := json.Marshal(request{Nonce: nonce, UserData: userData})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/evidence", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the node's attestation agent: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, attestation.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the attestation agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the node's attestation agent refused: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	if len(raw) > attestation.MaxDocumentSize {
		return nil, errors.New("the attestation agent's answer exceeds the evidence size limit")
	}
	return raw, nil
}
