// Package kubeapitest is an API server for tests of this project's clients of the Kubernetes API: ConfigMaps
// in memory, with the API server's create-only semantics (a second create of a name answers 409 Conflict,
// atomically), reads, and immutable ConfigMaps that no update changes (422). The end-to-end tests run the
// same clients against the real API server.
package kubeapitest

import (
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// Server is the API server.
type Server struct {
	srv *httptest.Server

	mu         sync.Mutex
	configMaps map[string]map[string]any // "<namespace>/<name>" -> object
	creates    int
}

// ConfigMap is the part of a ConfigMap the server looks at.
type ConfigMap struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Immutable bool              `json:"immutable"`
	Data      map[string]string `json:"data"`
}

// New starts a server that ends with the test.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{configMaps: map[string]map[string]any{}}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// Client returns a client of the server, authenticated as a service account would be.
func (s *Server) Client(t testing.TB) *kubeapi.Client {
	t.Helper()
	sa := t.TempDir()
	if err := os.WriteFile(filepath.Join(sa, kubeapi.TokenFile), []byte("token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(sa, kubeapi.CAFile), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := kubeapi.FromServiceAccount(s.srv.URL, sa)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ConfigMap returns a stored ConfigMap.
func (s *Server) ConfigMap(namespace, name string) (ConfigMap, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	obj, ok := s.configMaps[namespace+"/"+name]
	if !ok {
		return ConfigMap{}, false
	}
	raw, _ := json.Marshal(obj)
	var cm ConfigMap
	json.Unmarshal(raw, &cm)
	return cm, true
}

// Put stores a ConfigMap as an administrator would, replacing one of the same name.
func (s *Server) Put(namespace, name string, data map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.configMaps[namespace+"/"+name] = map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": name, "namespace": namespace}, "data": data,
	}
}

// Creates counts the ConfigMaps created through the API.
func (s *Server) Creates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creates
}

func status(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "code": code, "message": msg})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer token" {
		status(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	// /api/v1/namespaces/<ns>/configmaps[/<name>]
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/"), "/")
	if !strings.HasPrefix(r.URL.Path, "/api/v1/namespaces/") || len(parts) < 2 || parts[1] != "configmaps" || len(parts) > 3 {
		status(w, http.StatusNotFound, "the server could not find the requested resource")
		return
	}
	ns := parts[0]
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && len(parts) == 2:
		var obj map[string]any
		if err := json.NewDecoder(r.Body).Decode(&obj); err != nil {
			status(w, http.StatusBadRequest, err.Error())
			return
		}
		meta, _ := obj["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		if name == "" || (meta["namespace"] != nil && meta["namespace"] != ns) {
			status(w, http.StatusBadRequest, "the object's name or namespace is wrong")
			return
		}
		if _, ok := s.configMaps[ns+"/"+name]; ok {
			status(w, http.StatusConflict, `configmaps "`+name+`" already exists`)
			return
		}
		meta["namespace"] = ns
		s.configMaps[ns+"/"+name] = obj
		s.creates++
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(obj)
	case r.Method == http.MethodGet && len(parts) == 3:
		obj, ok := s.configMaps[ns+"/"+parts[2]]
		if !ok {
			status(w, http.StatusNotFound, `configmaps "`+parts[2]+`" not found`)
			return
		}
		json.NewEncoder(w).Encode(obj)
	case (r.Method == http.MethodPut || r.Method == http.MethodPatch) && len(parts) == 3:
		obj, ok := s.configMaps[ns+"/"+parts[2]]
		if !ok {
			status(w, http.StatusNotFound, `configmaps "`+parts[2]+`" not found`)
			return
		}
		if obj["immutable"] == true {
			status(w, http.StatusUnprocessableEntity, "field is immutable when `immutable` is set")
			return
		}
		status(w, http.StatusMethodNotAllowed, "updates are not served here")
	default:
		status(w, http.StatusMethodNotAllowed, "not served here")
	}
}
