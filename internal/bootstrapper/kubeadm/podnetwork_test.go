package kubeadm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The node's CNI configuration, which makes it Ready for pods, is written only once kube-proxy's metrics
// show its first complete sync; a configuration an earlier boot left is removed before.
func TestEnablePodNetworkWaitsForKubeProxy(t *testing.T) {
	dir := t.TempDir()
	d := &Driver{Options: Options{NodeName: "worker-0", PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		cniConfDir: dir, kubeletConf: filepath.Join(dir, "no-kubelet.conf")}
	conf := d.cniConfigFile()
	if err := os.WriteFile(conf, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.disablePodNetwork(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls, early := 0, false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if _, err := os.Stat(conf); err == nil {
			early = true
		}
		switch calls {
		case 1:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		case 2:
			// Registered, not synced: the gauge has no sample yet.
			fmt.Fprintln(w, "# HELP "+kubeProxySyncedMetric+" The last time proxy rules were successfully synced")
			fmt.Fprintln(w, "# TYPE "+kubeProxySyncedMetric+" gauge")
		default:
			fmt.Fprintln(w, kubeProxySyncedMetric+`{ip_family="IPv4"} 1.7966759348e+09`)
		}
	}))
	defer srv.Close()
	d.kubeProxyMetrics = srv.URL
	if err := d.EnablePodNetwork(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if early || calls != 3 {
		t.Fatalf("CNI configuration written before kube-proxy synced: %v (after %d looks at its metrics)", early, calls)
	}
	raw, err := os.ReadFile(conf)
	if err != nil || !strings.Contains(string(raw), "10.244.1.0/24") {
		t.Fatalf("CNI configuration: %v\n%s", err, raw)
	}
}

func TestSyncedIn(t *testing.T) {
	for metrics, want := range map[string]bool{
		"": false,
		kubeProxySyncedMetric + `{ip_family="IPv4"} 1.7e+09`:  true,
		kubeProxySyncedMetric + " 1.7e+09":                    true,
		kubeProxySyncedMetric + `{ip_family="IPv4"} 0`:        false,
		kubeProxySyncedMetric + `_other{ip_family="IPv4"} 12`: false,
		"# TYPE " + kubeProxySyncedMetric + " gauge":          false,
	} {
		if got, _ := syncedIn(strings.NewReader(metrics)); got != want {
			t.Errorf("syncedIn(%q) = %v, want %v", metrics, got, want)
		}
	}
}

// A kube-proxy whose container waits for an image the node lacks cannot run: the node does not wait for it.
// One that is being created may run.
func TestKubeProxyCannotRun(t *testing.T) {
	for raw, want := range map[string]string{
		`{"items":[]}`: "",
		`{"items":[{"metadata":{"name":"kube-proxy-x"},"status":{"containerStatuses":[{"state":{"waiting":{"reason":"ContainerCreating"}}}]}}]}`:                               "",
		`{"items":[{"metadata":{"name":"kube-proxy-x"},"status":{"containerStatuses":[{"state":{"running":{}}}]}}]}`:                                                           "",
		`{"items":[{"metadata":{"name":"kube-proxy-x"},"status":{"containerStatuses":[{"state":{"waiting":{"reason":"ErrImageNeverPull","message":"image not present"}}}]}}]}`: "pod kube-proxy-x: ErrImageNeverPull image not present",
	} {
		var l podList
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatal(err)
		}
		if got := l.cannotRun(); got != want {
			t.Errorf("cannotRun(%s) = %q, want %q", raw, got, want)
		}
	}
}
