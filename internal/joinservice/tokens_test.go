package joinservice

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// The request that creates a bootstrap token is what the Kubernetes API expects of a bootstrap token Secret
// (the end-to-end test runs it against the real API server).
func TestAPITokens(t *testing.T) {
	var got struct {
		Kind     string
		Type     string
		Metadata struct{ Name, Namespace string }
		Data     map[string]string `json:"stringData"`
	}
	fail := false
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/namespaces/kube-system/secrets" || r.Header.Get("Authorization") != "Bearer sa-token" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		if fail {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"kind":"Status","message":"secrets is forbidden: User cannot create resource"}`))
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	sa := t.TempDir()
	os.WriteFile(filepath.Join(sa, kubeapi.TokenFile), []byte("sa-token\n"), 0o600)
	os.WriteFile(filepath.Join(sa, kubeapi.CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)

	api, err := kubeapi.FromServiceAccount(srv.URL, sa)
	if err != nil {
		t.Fatal(err)
	}
	tokens := NewAPITokens(api)
	now := time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)
	tokens.nowFunc = func() time.Time { return now }
	token, err := tokens.CreateToken(context.Background(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`).FindStringSubmatch(token)
	if m == nil {
		t.Fatalf("token %q is not a bootstrap token", token)
	}
	if got.Kind != "Secret" || got.Type != "bootstrap.kubernetes.io/token" || got.Metadata.Name != "bootstrap-token-"+m[1] || got.Metadata.Namespace != "kube-system" ||
		got.Data["token-id"] != m[1] || got.Data["token-secret"] != m[2] || got.Data["expiration"] != "2026-11-26T01:10:00Z" ||
		got.Data["usage-bootstrap-authentication"] != "true" || got.Data["usage-bootstrap-signing"] != "true" ||
		got.Data["auth-extra-groups"] != "system:bootstrappers:kubeadm:default-node-token" {
		t.Fatalf("bootstrap token Secret: %+v", got)
	}
	other, _ := tokens.CreateToken(context.Background(), time.Minute)
	if other == token {
		t.Fatal("two tokens are equal")
	}

	fail = true
	if _, err := tokens.CreateToken(context.Background(), time.Minute); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("refused by the API server: %v", err)
	}
	if _, err := kubeapi.FromServiceAccount("http://"+strings.TrimPrefix(srv.URL, "https://"), sa); err == nil {
		t.Fatal("plain HTTP API server accepted")
	}
	if _, err := kubeapi.FromServiceAccount(srv.URL, t.TempDir()); err == nil {
		t.Fatal("missing service account accepted")
	}
}

func TestRandomTokenAlphabet(t *testing.T) {
	seen := map[rune]bool{}
	for range 200 {
		s, err := randomToken(16)
		if err != nil || len(s) != 16 {
			t.Fatalf("randomToken = %q, %v", s, err)
		}
		for _, r := range s {
			if !strings.ContainsRune(tokenAlphabet, r) {
				t.Fatalf("character %q outside the alphabet", r)
			}
			seen[r] = true
		}
	}
	if len(seen) != len(tokenAlphabet) {
		t.Fatalf("only %d of %d characters drawn in 3200 draws", len(seen), len(tokenAlphabet))
	}
}

func TestManifests(t *testing.T) {
	raw, err := Manifests(map[string]string{ClusterIDFile: "00"}, "mini", "http://10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string
		Items []struct{ Kind string }
	}
	if err := json.Unmarshal(raw, &list); err != nil || list.Kind != "List" {
		t.Fatalf("manifests are not a List: %v", err)
	}
	var kinds []string
	for _, it := range list.Items {
		kinds = append(kinds, it.Kind)
	}
	if strings.Join(kinds, ",") != "ConfigMap,ServiceAccount,Role,RoleBinding,ClusterRole,ClusterRoleBinding,Namespace,Role,RoleBinding,DaemonSet" {
		t.Fatalf("kinds %v", kinds)
	}
	s := string(raw)
	for _, want := range []string{`"image": "` + Image() + `"`, `"imagePullPolicy": "Never"`, `"--provider=mini"`, `"--provider-endpoint=http://10.217.0.1:8080"`, `"--node-ip=$(NODE_IP)"`, `"readOnly": true`} {
		if !strings.Contains(s, want) {
			t.Errorf("manifests lack %s", want)
		}
	}
	var compact struct {
		Items []struct {
			Rules []struct{ Resources, Verbs []string }
		}
	}
	json.Unmarshal(raw, &compact)
	// Creating secrets (bootstrap tokens); for the continuous attestation: its Lease and reading its switch.
	var grants []string
	for _, r := range compact.Items[2].Rules {
		grants = append(grants, strings.Join(r.Resources, ",")+":"+strings.Join(r.Verbs, ","))
	}
	if got := strings.Join(grants, " "); got != "secrets:create leases:create leases:get,update configmaps:get" {
		t.Errorf("the join service's role grants %s", got)
	}
	// Nodes: listed for the mesh, followed and marked by the continuous attestation; nothing else.
	if r := compact.Items[4].Rules; len(r) != 1 || strings.Join(r[0].Resources, ",") != "nodes" || strings.Join(r[0].Verbs, ",") != "get,list,watch,update" {
		t.Errorf("the join service's cluster role grants %+v, want only nodes", r)
	}
	// The continuous attestation's records: Leases in their namespace, nothing else.
	if r := compact.Items[7].Rules; len(r) != 1 || strings.Join(r[0].Resources, ",") != "leases" || strings.Join(r[0].Verbs, ",") != "get,list,watch,create,update,delete" {
		t.Errorf("the join service's role on the records grants %+v, want only leases", r)
	}
}
