package meshpeers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// LocalSocket is where a control-plane node's WireGuard agent learns the keys of nodes its join service has
// just admitted: such a node reaches this control plane through the tunnel before its kubelet has registered
// and published its key in the cluster. Only processes of the node reach the socket (owner-only).
const LocalSocket = "/run/constellation/mesh.sock"

type admission struct {
	Node      string `json:"node"`
	PublicKey string `json:"publicKey"`
}

// AdmitHandler serves POST /v1/admitted: {"node": name, "publicKey": base64 key}, handed to admit.
func AdmitHandler(admit func(node string, key wgmesh.Key) error, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/admitted", func(w http.ResponseWriter, r *http.Request) {
		var a admission
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&a); err != nil {
			http.Error(w, "request: "+err.Error(), http.StatusBadRequest)
			return
		}
		key, err := wgmesh.ParseKey(a.PublicKey)
		if err != nil || key == (wgmesh.Key{}) || a.Node == "" {
			http.Error(w, "request: a node name and a WireGuard public key are required", http.StatusBadRequest)
			return
		}
		if err := admit(a.Node, key); err != nil {
			log.Error("admitting a node to the mesh failed", "node", a.Node, "error", err)
			http.Error(w, "admitting the node failed", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// AdmitClient tells the node's WireGuard agent about admitted nodes, over LocalSocket.
type AdmitClient struct {
	client *http.Client
}

// NewAdmitClient returns a client of the agent's socket at path.
func NewAdmitClient(path string) *AdmitClient {
	return &AdmitClient{client: agent.SocketClient(path, 0)}
}

// Admit makes node, with key, a peer of this node's mesh until it has published its key in the cluster.
func (c *AdmitClient) Admit(ctx context.Context, node string, key wgmesh.Key) error {
	body, err := json.Marshal(admission{Node: node, PublicKey: key.String()})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://mesh/v1/admitted", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("telling the node's WireGuard agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("the node's WireGuard agent refused: %s", strings.TrimSpace(string(msg)))
	}
	return nil
}
