package meshpeers

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// fakeNodes is the Node objects of an API server: PATCH (merge of annotations), POST, GET list.
type fakeNodes struct {
	mu    sync.Mutex
	nodes map[string]map[string]string // name -> annotations
	taint map[string]bool              // created with the not-ready taint
	// raceCreate makes the next POST fail with 409 after creating the node (a kubelet registered in between).
	raceCreate bool
}

func (f *fakeNodes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer t" {
		http.Error(w, `{"message":"no token"}`, http.StatusUnauthorized)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var obj struct {
		Metadata struct {
			Name        string
			Annotations map[string]string
		}
		Spec struct {
			Taints []struct{ Key, Effect string }
		}
	}
	json.Unmarshal(body, &obj)
	switch {
	case r.Method == http.MethodPatch && strings.HasPrefix(r.URL.Path, "/api/v1/nodes/"):
		name := strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")
		if r.Header.Get("Content-Type") != kubeapi.MergePatch {
			http.Error(w, "want a merge patch", http.StatusUnsupportedMediaType)
			return
		}
		a, ok := f.nodes[name]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"message":"nodes \"` + name + `\" not found"}`))
			return
		}
		for k, v := range obj.Metadata.Annotations {
			a[k] = v
		}
		w.Write([]byte(`{}`))
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/nodes":
		if _, ok := f.nodes[obj.Metadata.Name]; ok || f.raceCreate {
			if f.raceCreate {
				f.nodes[obj.Metadata.Name] = map[string]string{}
				f.raceCreate = false
			}
			http.Error(w, `{"message":"already exists"}`, http.StatusConflict)
			return
		}
		f.nodes[obj.Metadata.Name] = obj.Metadata.Annotations
		f.taint[obj.Metadata.Name] = len(obj.Spec.Taints) == 1 && obj.Spec.Taints[0].Key == "node.kubernetes.io/not-ready" && obj.Spec.Taints[0].Effect == "NoSchedule"
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{}`))
	case r.Method == http.MethodGet && r.URL.Path == "/api/v1/nodes":
		var list struct {
			Items []map[string]any `json:"items"`
		}
		for name, a := range f.nodes {
			list.Items = append(list.Items, map[string]any{"metadata": map[string]any{"name": name, "annotations": a}})
		}
		json.NewEncoder(w).Encode(list)
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
	}
}

func client(t *testing.T, h http.Handler) *kubeapi.Client {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	sa := t.TempDir()
	os.WriteFile(filepath.Join(sa, kubeapi.TokenFile), []byte("t\n"), 0o600)
	os.WriteFile(filepath.Join(sa, kubeapi.CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	c, err := kubeapi.FromServiceAccount(srv.URL, sa)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPublishAndList(t *testing.T) {
	f := &fakeNodes{nodes: map[string]map[string]string{"control-plane-0": {"other": "kept"}, "worker-0": {}}, taint: map[string]bool{}}
	api := client(t, f)
	ctx := context.Background()
	_, k1, _ := wgmesh.GenerateKey()
	_, k2, _ := wgmesh.GenerateKey()

	// A registered node's key lands on its Node object; its other annotations stay.
	if err := Publish(ctx, api, "control-plane-0", k1); err != nil {
		t.Fatal(err)
	}
	if a := f.nodes["control-plane-0"]; a[KeyAnnotation] != k1.String() || a["other"] != "kept" {
		t.Fatalf("annotations after publishing: %v", a)
	}
	if err := Publish(ctx, api, "worker-0", k2); err != nil {
		t.Fatal(err)
	}
	// A node whose kubelet has not registered: nothing is created (the kubelet owns its Node object).
	if err := Publish(ctx, api, "worker-1", k2); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("publishing before the kubelet registered = %v, want ErrNotRegistered", err)
	}
	if _, ok := f.nodes["worker-1"]; ok {
		t.Fatal("publishing created a Node object")
	}
	// A rejoin replaces the key.
	if err := Publish(ctx, api, "worker-0", k1); err != nil || f.nodes["worker-0"][KeyAnnotation] != k1.String() {
		t.Fatalf("publishing again: %v %v", err, f.nodes["worker-0"])
	}
	if err := Publish(ctx, api, "", k1); err == nil {
		t.Fatal("published a key without a node name")
	}
	if err := Publish(ctx, api, "worker-0", wgmesh.Key{}); err == nil {
		t.Fatal("published an empty key")
	}

	// Nodes without a key are no peers; a malformed key is reported, and no peer either.
	f.nodes["no-key"] = map[string]string{}
	f.nodes["broken"] = map[string]string{KeyAnnotation: "not a key"}
	peers, malformed, err := List(ctx, api)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range peers {
		names = append(names, p.Node)
	}
	if strings.Join(names, ",") != "control-plane-0,worker-0" || peers[0].PublicKey != k1 || strings.Join(malformed, ",") != "broken" {
		t.Fatalf("List = %v, malformed %v", peers, malformed)
	}

	// The API server's refusal is reported with its message.
	denied := client(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"kind":"Status","message":"nodes is forbidden: User cannot list resource"}`))
	}))
	if _, _, err := List(ctx, denied); !kubeapi.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "nodes is forbidden") {
		t.Fatalf("List against a refusing API server = %v", err)
	}
}

func TestManifestsGrantOnlyReadingNodes(t *testing.T) {
	raw, err := Manifests()
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Kind     string
			Rules    []struct{ Resources, Verbs []string }
			Subjects []struct{ Kind, Name string }
		}
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Items) != 2 {
		t.Fatalf("manifests: %v\n%s", err, raw)
	}
	r := list.Items[0].Rules
	if list.Items[0].Kind != "ClusterRole" || len(r) != 1 || strings.Join(r[0].Resources, ",") != "nodes" || strings.Join(r[0].Verbs, ",") != "list,watch" {
		t.Fatalf("the role grants %+v, want only listing and watching nodes", r)
	}
	if s := list.Items[1].Subjects; len(s) != 1 || s[0].Kind != "Group" || s[0].Name != "system:nodes" {
		t.Fatalf("bound to %+v, want the group system:nodes", s)
	}
}

// The local admission socket takes a node name and a key, and refuses anything else without calling admit.
func TestAdmitSocket(t *testing.T) {
	got := map[string]wgmesh.Key{}
	h := AdmitHandler(func(node string, key wgmesh.Key) error {
		if node == "fails" {
			return errors.New("interface down")
		}
		got[node] = key
		return nil
	}, slog.New(slog.DiscardHandler))
	sock := filepath.Join(t.TempDir(), "mesh.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	defer srv.Close()
	c := NewAdmitClient(sock)
	_, key, _ := wgmesh.GenerateKey()
	if err := c.Admit(context.Background(), "worker-3", key); err != nil || got["worker-3"] != key {
		t.Fatalf("Admit = %v, recorded %v", err, got)
	}
	if err := c.Admit(context.Background(), "fails", key); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Admit when the agent fails = %v", err)
	}
	for _, body := range []string{``, `{}`, `{"node":"x"}`, `{"node":"x","publicKey":"short"}`, `{"node":"","publicKey":"` + key.String() + `"}`, `[1,2]`} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/admitted", strings.NewReader(body)))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("body %q: status %d, want 400", body, rec.Code)
		}
	}
	if len(got) != 1 {
		t.Fatalf("bad requests reached admit: %v", got)
	}
}
