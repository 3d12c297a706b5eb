package meshpeers

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
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

func TestRegisterAndList(t *testing.T) {
	f := &fakeNodes{nodes: map[string]map[string]string{"control-plane-0": {"other": "kept"}}, taint: map[string]bool{}}
	api := client(t, f)
	ctx := context.Background()
	_, k1, _ := wgmesh.GenerateKey()
	_, k2, _ := wgmesh.GenerateKey()
	_, k3, _ := wgmesh.GenerateKey()

	// An existing Node gets the annotation, its other annotations stay.
	if err := Register(ctx, api, "control-plane-0", k1); err != nil {
		t.Fatal(err)
	}
	if a := f.nodes["control-plane-0"]; a[KeyAnnotation] != k1.String() || a["other"] != "kept" {
		t.Fatalf("annotations after registering: %v", a)
	}
	// A node whose kubelet has not registered yet gets a Node object, tainted not-ready.
	if err := Register(ctx, api, "worker-0", k2); err != nil {
		t.Fatal(err)
	}
	if f.nodes["worker-0"][KeyAnnotation] != k2.String() || !f.taint["worker-0"] {
		t.Fatalf("created node: %v, tainted %v", f.nodes["worker-0"], f.taint["worker-0"])
	}
	// The kubelet registers between the failed patch and the create: the key still lands.
	f.raceCreate = true
	if err := Register(ctx, api, "worker-1", k3); err != nil {
		t.Fatal(err)
	}
	if f.nodes["worker-1"][KeyAnnotation] != k3.String() {
		t.Fatalf("after the race: %v", f.nodes["worker-1"])
	}
	// A rejoin replaces the key.
	if err := Register(ctx, api, "worker-0", k3); err != nil || f.nodes["worker-0"][KeyAnnotation] != k3.String() {
		t.Fatalf("re-registering: %v %v", err, f.nodes["worker-0"])
	}
	if err := Register(ctx, api, "", k1); err == nil {
		t.Fatal("registered a key without a node name")
	}
	if err := Register(ctx, api, "worker-2", wgmesh.Key{}); err == nil {
		t.Fatal("registered an empty key")
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
	if strings.Join(names, ",") != "control-plane-0,worker-0,worker-1" || peers[0].PublicKey != k1 || strings.Join(malformed, ",") != "broken" {
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

func TestManifestsGrantOnlyListingNodes(t *testing.T) {
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
	if list.Items[0].Kind != "ClusterRole" || len(r) != 1 || strings.Join(r[0].Resources, ",") != "nodes" || strings.Join(r[0].Verbs, ",") != "list" {
		t.Fatalf("the role grants %+v, want only listing nodes", r)
	}
	if s := list.Items[1].Subjects; len(s) != 1 || s[0].Kind != "Group" || s[0].Name != "system:nodes" {
		t.Fatalf("bound to %+v, want the group system:nodes", s)
	}
}
