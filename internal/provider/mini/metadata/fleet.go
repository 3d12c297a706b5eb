package metadata

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// The fleet API: the cluster's upgrade controller asks the provider to create and delete nodes. Only a caller
// that presents the controller credential (Authorization: Bearer <hex>) gets anything done; the server keeps
// only the credential's SHA-256, as the CLI handed it to the provider, and checks the credential before it
// reads anything else of the request. Which machine sends the request does not matter: a node (recognised by
// its address, as for the other endpoints) is no more entitled than anyone else.
//
//	POST   /v1/fleet/nodes         {"role": "worker", "imageDigest": "sha256:..."} -> {"name": "worker-3"}
//	DELETE /v1/fleet/nodes/{name}  -> 204

// SetFleet makes the server answer the fleet API with fleet, for callers that present the credential whose
// SHA-256 is credentialHash. Without it, the server refuses every fleet request.
func (s *Server) SetFleet(fleet provider.Fleet, credentialHash []byte) error {
	if fleet == nil {
		return errors.New("no fleet to serve")
	}
	if len(credentialHash) != sha256.Size {
		return fmt.Errorf("the controller credential's hash has %d bytes, want a SHA-256 (%d bytes)", len(credentialHash), sha256.Size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fleet, s.fleetCredentialHash = fleet, bytes.Clone(credentialHash)
	return nil
}

// fleetAuth returns the fleet if r carries the controller credential; otherwise it answers 401 and returns
// nil. It neither logs nor echoes what the caller presented.
func (s *Server) fleetAuth(w http.ResponseWriter, r *http.Request) provider.Fleet {
	s.mu.RLock()
	fleet, want := s.fleet, s.fleetCredentialHash
	s.mu.RUnlock()
	refuse := func(reason string) provider.Fleet {
		s.log.Warn("fleet request refused", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", reason)
		w.Header().Set("WWW-Authenticate", `Bearer realm="constellation-provider"`)
		http.Error(w, "unauthorized: "+reason, http.StatusUnauthorized)
		return nil
	}
	if fleet == nil {
		return refuse("this provider changes no nodes: it was given no controller credential")
	}
	headers := r.Header.Values("Authorization")
	if len(headers) != 1 {
		return refuse("the request must carry the controller credential in one Authorization header")
	}
	token, ok := strings.CutPrefix(headers[0], "Bearer ")
	if !ok {
		return refuse("the request must carry the controller credential as a bearer token")
	}
	cred, err := hex.DecodeString(token)
	if err != nil || len(cred) != provider.FleetCredentialSize {
		return refuse("the bearer token is not a controller credential")
	}
	got := sha256.Sum256(cred)
	if subtle.ConstantTimeCompare(got[:], want) != 1 {
		return refuse("wrong controller credential")
	}
	return fleet
}

// createNodeRequest is the body of POST /v1/fleet/nodes.
type createNodeRequest struct {
	Role        string `json:"role"`
	ImageDigest string `json:"imageDigest"`
}

// createNodeResponse is its answer.
type createNodeResponse struct {
	Name string `json:"name"`
}

// maxFleetMessage bounds the fleet API's requests and answers.
const maxFleetMessage = 4096

// parseCreateNodeRequest parses a create request strictly: exactly the two fields, a role and an image digest.
func parseCreateNodeRequest(raw []byte) (createNodeRequest, error) {
	var req createNodeRequest
	if err := strictjson.Decode(raw, &req, maxFleetMessage); err != nil {
		return createNodeRequest{}, fmt.Errorf("malformed request: %w", err)
	}
	if err := provider.CheckRole(req.Role); err != nil {
		return createNodeRequest{}, err
	}
	if err := provider.CheckImageDigest(req.ImageDigest); err != nil {
		return createNodeRequest{}, err
	}
	return req, nil
}

// parseCreateNodeResponse parses the provider's answer to a create request: the new node's name, a DNS label.
func parseCreateNodeResponse(raw []byte) (string, error) {
	var resp createNodeResponse
	if err := strictjson.Decode(raw, &resp, maxFleetMessage); err != nil {
		return "", fmt.Errorf("the provider's answer: %w", err)
	}
	if err := provider.CheckNodeName(resp.Name); err != nil {
		return "", fmt.Errorf("the provider's answer: %w", err)
	}
	return resp.Name, nil
}

func (s *Server) createNode(w http.ResponseWriter, r *http.Request) {
	fleet := s.fleetAuth(w, r)
	if fleet == nil {
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxFleetMessage+1))
	if err != nil {
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	req, err := parseCreateNodeRequest(raw)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.log.Info("fleet: creating a node", "remote", r.RemoteAddr, "role", req.Role, "image", req.ImageDigest)
	name, err := fleet.CreateNode(r.Context(), req.Role, req.ImageDigest)
	if err != nil {
		s.log.Warn("fleet: node not created", "remote", r.RemoteAddr, "role", req.Role, "image", req.ImageDigest, "reason", err.Error())
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	s.log.Info("fleet: node created", "remote", r.RemoteAddr, "node", name, "role", req.Role, "image", req.ImageDigest)
	writeJSON(w, createNodeResponse{Name: name})
}

func (s *Server) deleteNode(w http.ResponseWriter, r *http.Request) {
	fleet := s.fleetAuth(w, r)
	if fleet == nil {
		return
	}
	name := r.PathValue("name")
	if err := provider.CheckNodeName(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := fleet.DeleteNode(r.Context(), name); err != nil {
		s.log.Warn("fleet: node not deleted", "remote", r.RemoteAddr, "node", name, "reason", err.Error())
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	s.log.Info("fleet: node deleted", "remote", r.RemoteAddr, "node", name)
	w.WriteHeader(http.StatusNoContent)
}

// FleetClient is the upgrade controller's side of the fleet API: a [provider.Fleet] that presents the
// controller credential.
type FleetClient struct {
	base       string
	credential string // hex; never logged, never in an error
	http       *http.Client
}

var _ provider.Fleet = (*FleetClient)(nil)

// NewFleetClient returns a client of the fleet API of the metadata server at base, presenting credential (the
// FleetCredentialSize bytes the CLI generated).
func NewFleetClient(base string, credential []byte) (*FleetClient, error) {
	if len(credential) != provider.FleetCredentialSize {
		return nil, fmt.Errorf("the controller credential has %d bytes, want %d", len(credential), provider.FleetCredentialSize)
	}
	// Creating a node boots it: no fixed timeout, the caller's context decides how long to wait.
	return &FleetClient{base: base, credential: hex.EncodeToString(credential), http: &http.Client{}}, nil
}

func (c *FleetClient) do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.credential)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The error names the URL, never the request's headers.
		return nil, fmt.Errorf("provider fleet API: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxFleetMessage))
	if err != nil {
		return nil, fmt.Errorf("provider fleet API: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("provider fleet API %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	return raw, nil
}

// CreateNode asks the provider to boot a new node of role from the registered node image imageDigest.
func (c *FleetClient) CreateNode(ctx context.Context, role, imageDigest string) (string, error) {
	if err := provider.CheckRole(role); err != nil {
		return "", err
	}
	if err := provider.CheckImageDigest(imageDigest); err != nil {
		return "", err
	}
	body, err := json.Marshal(createNodeRequest{Role: role, ImageDigest: imageDigest})
	if err != nil {
		return "", err
	}
	raw, err := c.do(ctx, http.MethodPost, "/v1/fleet/nodes", body)
	if err != nil {
		return "", err
	}
	return parseCreateNodeResponse(raw)
}

// DeleteNode asks the provider to power the node off and remove it with its state disk and TPM.
func (c *FleetClient) DeleteNode(ctx context.Context, name string) error {
	if err := provider.CheckNodeName(name); err != nil {
		return err
	}
	_, err := c.do(ctx, http.MethodDelete, "/v1/fleet/nodes/"+url.PathEscape(name), nil)
	return err
}
