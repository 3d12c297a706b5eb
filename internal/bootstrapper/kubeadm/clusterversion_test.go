package kubeadm

import (
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
)

// A joining node reads the cluster's Kubernetes version through its own endpoint of the API, which resets
// connections while no API server behind it answers yet: the node waits for one rather than giving up (and
// reporting a kubeadm failure that stops the cluster's upgrade). An answer of the API server is final.
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
	// A refusal of the API server is final.
	nobody, err := kubeapi.FromKubeconfig(s.Kubeconfig(t, "nobody"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clusterVersion(t.Context(), nobody); !kubeapi.IsStatus(err, 403) {
		t.Fatalf("an API server's refusal: %v, want it at once (403)", err)
	}
}
