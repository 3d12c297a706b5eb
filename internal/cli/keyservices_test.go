package cli

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/provider"
)

// createNode creates a Node object with the control-plane label if controlPlane, and addresses as its kubelet
// reports them (type → address).
func createNode(t *testing.T, api *kubeapi.Client, name string, controlPlane bool, addrs ...[2]string) {
	t.Helper()
	meta := map[string]any{"name": name}
	if controlPlane {
		meta["labels"] = map[string]string{"node-role.kubernetes.io/control-plane": ""}
	}
	if err := api.Do(t.Context(), http.MethodPost, "/api/v1/nodes", "", map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": meta}, nil); err != nil {
		t.Fatal(err)
	}
	var list []map[string]string
	for _, a := range addrs {
		list = append(list, map[string]string{"type": a[0], "address": a[1]})
	}
	if err := api.Do(t.Context(), http.MethodPatch, "/api/v1/nodes/"+name+"/status", kubeapi.MergePatch, map[string]any{"status": map[string]any{"addresses": list}}, nil); err != nil {
		t.Fatal(err)
	}
}

// The key services that take the measurement policy are those of every control-plane node: the provider's and
// those the cluster's API has control-plane Node objects of, each once. A control-plane node the provider does
// not list is not missed; a worker's Node is no key service's; a control-plane Node whose key service cannot be
// addressed, or an API that cannot be read, fails the narrowing rather than leaving a key service out.
func TestKeyServicesOfControlPlane(t *testing.T) {
	srv := kubeapitest.New(t)
	api := srv.Client(t)
	createNode(t, api, "control-plane-0", true, [2]string{"InternalIP", "10.217.0.10"}, [2]string{"Hostname", "control-plane-0"})
	// Not in the provider's list (it lost track of it, or lists it only later).
	createNode(t, api, "control-plane-3", true, [2]string{"Hostname", "control-plane-3"}, [2]string{"InternalIP", "10.217.0.23"})
	createNode(t, api, "worker-0", false, [2]string{"InternalIP", "10.217.0.12"})
	provider := []clusterNode{
		{Name: "control-plane-0", Role: provider.RoleControlPlane, IP: "10.217.0.10"},
		{Name: "control-plane-1", Role: provider.RoleControlPlane, IP: "10.217.0.11"}, // no Node object yet
		{Name: "worker-0", Role: provider.RoleWorker, IP: "10.217.0.12"},
	}
	got, err := keyServicesOfControlPlane(t.Context(), api, provider)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.217.0.10:9003", "10.217.0.11:9003", "10.217.0.23:9003"}; !slices.Equal(got, want) {
		t.Errorf("key services %v, want %v", got, want)
	}

	// A control-plane Node without an address to reach its key service at.
	createNode(t, api, "control-plane-4", true, [2]string{"Hostname", "control-plane-4"})
	if _, err := keyServicesOfControlPlane(t.Context(), api, provider); err == nil || !strings.Contains(err.Error(), "control-plane-4 has no InternalIP") {
		t.Errorf("a control-plane Node without an InternalIP: %v", err)
	}
	// The API cannot be read.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := keyServicesOfControlPlane(ctx, api, provider); err == nil || !strings.Contains(err.Error(), "listing the control-plane nodes") {
		t.Errorf("an API that cannot be read: %v", err)
	}
}
