package kubeadm

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
)

func TestPlanJoin(t *testing.T) {
	for _, tc := range []struct {
		cluster, own string
		controlPlane bool
		upgrade      bool
		refused      string // a part of the error, "" if the node joins
	}{
		{"v1.37.2", "v1.37.2", true, false, ""},
		{"v1.37.2", "v1.37.2", false, false, ""},
		// The first control-plane node of the next minor version upgrades the cluster after it joined.
		{"v1.36.3", "v1.37.2", true, true, ""},
		{"v1.37.1", "v1.37.2", true, true, ""},
		// A worker never runs a newer kubelet than the API server.
		{"v1.36.3", "v1.37.2", false, false, "newer than the cluster's control plane"},
		{"v1.37.1", "v1.37.2", false, false, "newer than the cluster's control plane"},
		// kubeadm upgrades one minor version at a time and never downgrades by a join.
		{"v1.35.4", "v1.37.2", true, false, "one minor version at a time"},
		{"v0.37.2", "v1.37.2", true, false, "one minor version at a time"},
		{"v1.37.2", "v1.36.3", true, false, "does not downgrade"},
		// An older kubelet is left to kubeadm's own skew check.
		{"v1.37.2", "v1.36.3", false, false, ""},
		{"v1.37.2", "", true, false, "Kubernetes version"},
		{"latest", "v1.37.2", true, false, "Kubernetes version"},
	} {
		upgrade, err := PlanJoin(tc.cluster, tc.own, tc.controlPlane)
		if tc.refused == "" && (err != nil || upgrade != tc.upgrade) || tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused) || upgrade) {
			t.Errorf("PlanJoin(cluster %s, own %s, control plane %v) = %v, %v; want upgrade %v, refusal %q", tc.cluster, tc.own, tc.controlPlane, upgrade, err, tc.upgrade, tc.refused)
		}
	}
}

func TestControlPlanePatches(t *testing.T) {
	patches := ControlPlanePatches("v1.37.2")
	if len(patches) != 3 {
		t.Fatalf("%d patches, want one per control-plane component", len(patches))
	}
	for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		var ops []map[string]string
		if err := json.Unmarshal(patches[c+"+json.json"], &ops); err != nil || len(ops) != 1 {
			t.Fatalf("patch of %s: %v %s", c, err, patches[c+"+json.json"])
		}
		if op := ops[0]; op["op"] != "replace" || op["path"] != "/spec/containers/0/image" || op["value"] != "registry.k8s.io/"+c+":v1.37.2" {
			t.Errorf("patch of %s: %v", c, op)
		}
	}
}

func TestClusterConfigVersion(t *testing.T) {
	v, err := ClusterConfigVersion("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.36.3\n")
	if err != nil || v != "v1.36.3" {
		t.Errorf("version %q, %v", v, err)
	}
	if _, err := ClusterConfigVersion("kind: ClusterConfiguration\n"); err == nil {
		t.Error("a configuration without a version accepted")
	}
}

// kubeadmEnv is a real API server with the cluster's kubeadm configuration at clusterVersion, the kubeadm role
// that lets every node read it, and a kubelet kubeconfig of node (system:node:<node>, as the join service
// issues it). kubeadm is a script that logs its arguments and fails on the command failOn ("join",
// "upgrade") with kubeadm's message.
type kubeadmEnv struct {
	srv    *kubeapitest.Server
	admin  *kubeapi.Client
	driver *Driver
	calls  string
}

func newKubeadmEnv(t *testing.T, clusterVersion, node, failOn string) *kubeadmEnv {
	t.Helper()
	srv := kubeapitest.New(t)
	admin := srv.Client(t)
	do := func(method, path string, obj any) {
		t.Helper()
		if err := admin.Do(t.Context(), method, path, "", obj, nil); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	do(http.MethodPost, "/api/v1/namespaces/kube-system/configmaps", map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "kubeadm-config", "namespace": "kube-system"},
		"data": map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: " + clusterVersion + "\n"},
	})
	// What kubeadm init sets up (phases/uploadconfig): nodes and bootstrap tokens may read the configuration.
	do(http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles", map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": map[string]any{"name": "kubeadm:nodes-kubeadm-config", "namespace": "kube-system"},
		"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"configmaps"}, "resourceNames": []string{"kubeadm-config"}, "verbs": []string{"get"}}},
	})
	do(http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings", map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": map[string]any{"name": "kubeadm:nodes-kubeadm-config", "namespace": "kube-system"},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeadm:nodes-kubeadm-config"},
		"subjects": []map[string]any{{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}},
	})
	dir := t.TempDir()
	e := &kubeadmEnv{srv: srv, admin: admin, calls: filepath.Join(dir, "calls")}
	script := "#!/bin/sh\necho \"$*\" >> " + e.calls + "\n"
	if failOn != "" {
		script += "case \"$1\" in " + failOn + ") echo '[upgrade/preflight] Running preflight checks'; echo 'error: [preflight] Some fatal errors occurred:' >&2; echo '\t[ERROR CoreDNSUnsupportedPlugins]: CoreDNS cannot migrate the Corefile' >&2; exit 1;; esac\n"
	}
	kubeadmBin := filepath.Join(dir, "kubeadm")
	if err := os.WriteFile(kubeadmBin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	o := opts
	o.NodeName, o.KubernetesVersion = node, "v1.37.2"
	e.driver = &Driver{
		Options: o, kubeadmBin: kubeadmBin, kubeadmConf: filepath.Join(dir, "kubeadm.yaml"), patches: filepath.Join(dir, "patches"),
		kubeletConf: srv.Kubeconfig(t, "system:node:"+node, "system:nodes"), nodeReadyTimeout: time.Minute,
		addonsRequested: make(chan struct{}, 1),
	}
	return e
}

// registerReady registers the node, Ready, as its kubelet would after kubeadm join.
func (e *kubeadmEnv) registerReady(t *testing.T, node string) {
	t.Helper()
	if err := e.admin.Do(t.Context(), http.MethodPost, "/api/v1/nodes", "", map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": node}}, nil); err != nil {
		t.Fatal(err)
	}
	status := map[string]any{"status": map[string]any{"conditions": []map[string]any{{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}}}}
	if err := e.admin.Do(t.Context(), http.MethodPatch, "/api/v1/nodes/"+node+"/status", kubeapi.MergePatch, status, nil); err != nil {
		t.Fatal(err)
	}
}

// report is the kubeadm failure the node reported on its Node object ("" if none; false if there is no Node).
func (e *kubeadmEnv) report(t *testing.T, node string) (string, bool) {
	t.Helper()
	var n struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	err := e.admin.Do(t.Context(), http.MethodGet, "/api/v1/nodes/"+node, "", nil, &n)
	if kubeapi.IsStatus(err, http.StatusNotFound) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return n.Metadata.Annotations[KubeadmErrorAnnotation], true
}

func (e *kubeadmEnv) kubeadmCalls() []string {
	raw, _ := os.ReadFile(e.calls)
	return strings.Split(strings.TrimSpace(string(raw)), "\n")
}

// The first control-plane node of a newer version joins, then upgrades the cluster with kubeadm upgrade apply
// to its own version, with its patches, after it is Ready.
func TestJoinUpgradesTheCluster(t *testing.T) {
	e := newKubeadmEnv(t, "v1.36.3", "control-plane-1", "")
	e.registerReady(t, "control-plane-1") // as if kubeadm join registered it
	if err := e.driver.joinKubeadm(t.Context(), []byte("kind: JoinConfiguration\n"), []string{"join", "--config", e.driver.kubeadmConf}, true, ""); err != nil {
		t.Fatal(err)
	}
	calls := e.kubeadmCalls()
	if len(calls) != 2 || !strings.HasPrefix(calls[0], "join ") || !strings.HasPrefix(calls[1], "upgrade apply v1.37.2 --yes --patches "+e.driver.patches+" --etcd-upgrade=false --skip-phases=kubeconfig") {
		t.Errorf("kubeadm calls:\n%s", strings.Join(calls, "\n"))
	}
	if r, _ := e.report(t, "control-plane-1"); r != "" {
		t.Errorf("a failure reported after a successful upgrade: %q", r)
	}
	if len(e.driver.addonsRequested) != 1 {
		t.Error("the addons' upgrade was not started")
	}
	// At the cluster's own version, kubeadm join is all.
	same := newKubeadmEnv(t, "v1.37.2", "control-plane-2", "")
	if err := same.driver.joinKubeadm(t.Context(), nil, []string{"join"}, true, ""); err != nil {
		t.Fatal(err)
	}
	if calls := same.kubeadmCalls(); len(calls) != 1 || calls[0] != "join" {
		t.Errorf("kubeadm calls at the cluster's version: %v", calls)
	}
}

// A kubeadm upgrade apply that fails stops the join with kubeadm's error, and the node reports it on its Node
// object, where the upgrade controller reads it.
func TestJoinReportsFailedKubeadmUpgrade(t *testing.T) {
	e := newKubeadmEnv(t, "v1.36.3", "control-plane-1", "upgrade")
	e.registerReady(t, "control-plane-1")
	err := e.driver.joinKubeadm(t.Context(), nil, []string{"join"}, true, "")
	if err == nil || !strings.Contains(err.Error(), "kubeadm upgrade apply v1.37.2") || !strings.Contains(err.Error(), "[ERROR CoreDNSUnsupportedPlugins]") {
		t.Fatalf("error %v, want kubeadm's", err)
	}
	if r, _ := e.report(t, "control-plane-1"); !strings.Contains(r, "[ERROR CoreDNSUnsupportedPlugins]: CoreDNS cannot migrate the Corefile") || !strings.Contains(r, "v1.36.3") {
		t.Errorf("reported on the Node: %q", r)
	}
}

// A kubeadm join that fails before the kubelet registered the node is reported on a Node object the node
// creates for it.
func TestJoinReportsFailedKubeadmJoin(t *testing.T) {
	e := newKubeadmEnv(t, "v1.36.3", "control-plane-1", "join")
	err := e.driver.joinKubeadm(t.Context(), nil, []string{"join"}, true, "")
	if err == nil || !strings.Contains(err.Error(), "kubeadm join") || !strings.Contains(err.Error(), "[ERROR CoreDNSUnsupportedPlugins]") {
		t.Fatalf("error %v, want kubeadm's", err)
	}
	if calls := e.kubeadmCalls(); len(calls) != 1 {
		t.Errorf("kubeadm ran on after join failed: %v", calls)
	}
	if r, ok := e.report(t, "control-plane-1"); !ok || !strings.Contains(r, "[ERROR CoreDNSUnsupportedPlugins]") {
		t.Errorf("reported on the Node: %q (Node there: %v)", r, ok)
	}
}

// A worker of a newer Kubernetes than the control plane never runs kubeadm: it would run a kubelet newer than
// the API server. It reports why.
func TestJoinRefusesNewerWorker(t *testing.T) {
	e := newKubeadmEnv(t, "v1.36.3", "worker-1", "")
	err := e.driver.joinKubeadm(t.Context(), nil, []string{"join"}, false, "")
	if err == nil || !strings.Contains(err.Error(), "newer than the cluster's control plane v1.36.3") {
		t.Fatalf("error %v", err)
	}
	if _, err := os.Stat(e.calls); err == nil {
		t.Errorf("kubeadm ran: %v", e.kubeadmCalls())
	}
	if r, _ := e.report(t, "worker-1"); !strings.Contains(r, "newer than the cluster's control plane") {
		t.Errorf("reported on the Node: %q", r)
	}
}

// A node may report only on its own Node object: another node's report is refused by the API server
// (NodeRestriction), so no node can stop the replacement of another.
func TestReportOnlyOnOwnNode(t *testing.T) {
	e := newKubeadmEnv(t, "v1.36.3", "worker-1", "")
	e.registerReady(t, "control-plane-1")
	c, err := e.driver.kubeletClient()
	if err != nil {
		t.Fatal(err)
	}
	if err := reportFailure(t.Context(), c, "control-plane-1", os.ErrInvalid); err == nil {
		t.Fatal("worker-1 reported a failure on control-plane-1's Node")
	}
	if r, _ := e.report(t, "control-plane-1"); r != "" {
		t.Errorf("control-plane-1 carries %q", r)
	}
}

// The addons move once kubeadm no longer skips them (the old control-plane nodes are gone); a failure of
// kubeadm there is reported on the node's Node object.
func TestUpgradeAddons(t *testing.T) {
	e := newKubeadmEnv(t, "v1.37.2", "control-plane-1", "")
	e.registerReady(t, "control-plane-1")
	// The first run skips the addons, the second moves them.
	script := "#!/bin/sh\necho \"$*\" >> " + e.calls + "\nif [ ! -e " + e.calls + ".once ]; then touch " + e.calls + ".once; echo '[upgrade/addon] Skipping upgrade of addons because control plane instances [control-plane-0] have not been upgraded'; fi\n"
	if err := os.WriteFile(e.driver.kubeadmBin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.driver.upgradeAddons(t.Context(), time.Millisecond)
	if calls := e.kubeadmCalls(); len(calls) != 2 || calls[1] != "upgrade node phase addon all" {
		t.Errorf("kubeadm calls: %v", calls)
	}
	if r, _ := e.report(t, "control-plane-1"); r != "" {
		t.Errorf("reported %q", r)
	}

	failing := newKubeadmEnv(t, "v1.37.2", "control-plane-2", "upgrade")
	failing.registerReady(t, "control-plane-2")
	failing.driver.upgradeAddons(t.Context(), time.Millisecond)
	if r, _ := failing.report(t, "control-plane-2"); !strings.Contains(r, "kubeadm upgrade node phase addon all (to v1.37.2)") || !strings.Contains(r, "[ERROR CoreDNSUnsupportedPlugins]") {
		t.Errorf("reported on the Node: %q", r)
	}
}
