package kubeadm

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
)

// A joining node reads the cluster's Kubernetes version through its own endpoint of the API, which resets
// connections while no API server behind it answers yet: the node waits for one rather than giving up (and
// reporting a kubeadm failure that stops the cluster's upgrade), and through the refusals of an API server whose
// authorizers have not caught up yet; a refusal that lasts is final.
func TestClusterVersionWaitsForAnAPIServer(t *testing.T) {
	s := kubeapitest.New(t)
	s.Put(t, "kube-system", "kubeadm-config", map[string]string{"ClusterConfiguration": "kind: ClusterConfiguration\nkubernetesVersion: v1.37.2\n"})
	direct := s.Client(t)
	target := strings.TrimPrefix(direct.Server(), "https://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if accepted.Add(1) <= 3 {
				c.(*net.TCPConn).SetLinger(0) // a reset, as the endpoint without a backend answers
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	raw, err := os.ReadFile(s.Kubeconfig(t, "kubeapitest-admin", "system:masters"))
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/through-endpoint.conf"
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(raw), target, ln.Addr().String())), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := kubeapi.FromKubeconfig(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := clusterVersion(t.Context(), c)
	if err != nil || v != "v1.37.2" {
		t.Fatalf("the cluster's version through an endpoint that resets the first connections: %q, %v", v, err)
	}
	if accepted.Load() < 4 {
		t.Fatalf("%d connections: the resets were not retried", accepted.Load())
	}
	// An API server that has just started refuses (403) until its authorizers have caught up: the node waits,
	// and reads the version once the refusal ends (here: once a binding grants it).
	late, err := kubeapi.FromKubeconfig(s.Kubeconfig(t, "late-node"))
	if err != nil {
		t.Fatal(err)
	}
	granted := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		granted <- grant(t.Context(), direct, "late-node")
	}()
	if v, err := clusterVersion(t.Context(), late); err != nil || v != "v1.37.2" {
		t.Fatalf("the version after a refusal that ended: %q, %v", v, err)
	}
	if err := <-granted; err != nil {
		t.Fatal(err)
	}
	// A refusal that lasts until the wait ends is final, and says so.
	nobody, err := kubeapi.FromKubeconfig(s.Kubeconfig(t, "nobody"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := clusterVersion(ctx, nobody); !kubeapi.IsStatus(err, 403) || !Permanent(err) || !strings.Contains(err.Error(), "still refused") {
		t.Fatalf("an API server's lasting refusal: %v, want a final 403", err)
	}
}

// grant lets user read kube-system/kubeadm-config, as the cluster's RBAC lets a joining node.
func grant(ctx context.Context, admin *kubeapi.Client, user string) error {
	role := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
		"metadata": map[string]any{"name": "read-kubeadm-config", "namespace": "kube-system"},
		"rules":    []map[string]any{{"apiGroups": []string{""}, "resources": []string{"configmaps"}, "resourceNames": []string{"kubeadm-config"}, "verbs": []string{"get"}}},
	}
	binding := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"name": "read-kubeadm-config", "namespace": "kube-system"},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-kubeadm-config"},
		"subjects": []map[string]any{{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}},
	}
	if err := admin.Do(ctx, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles", "", role, nil); err != nil {
		return err
	}
	return admin.Do(ctx, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings", "", binding, nil)
}
