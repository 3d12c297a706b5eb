package joinservice

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/reattestation"
)

// TestRecordPermissions applies the join service's manifests to a real API server (Node and RBAC authorizers,
// NodeRestriction) and checks who may keep the continuous attestation's records: the join service's service
// account may create, update, list and delete Leases in their namespace; a node's kubelet may do none of it.
func TestRecordPermissions(t *testing.T) {
	srv := kubeapitest.Start(t)
	admin := srv.Client(t)
	raw, err := Manifests(map[string]string{ClusterIDFile: "00"}, "mini", "http://10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	// The objects of the API alone (the test server runs no workloads).
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	var objects []map[string]any
	for _, it := range list.Items {
		if it["kind"] != "DaemonSet" {
			objects = append(objects, it)
		}
	}
	apiObjects, err := kubeapi.List(objects...)
	if err != nil {
		t.Fatal(err)
	}
	if err := kubeapitest.Create(t.Context(), admin, apiObjects); err != nil {
		t.Fatal(err)
	}
	client := func(user string, groups ...string) *kubeapi.Client {
		c, err := kubeapi.FromKubeconfig(srv.Kubeconfig(t, user, groups...))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	service := client("system:serviceaccount:kube-system:"+Name, "system:serviceaccounts", "system:serviceaccounts:kube-system")
	kubelet := client("system:node:worker-0", "system:nodes")
	other := client("system:serviceaccount:kube-system:default", "system:serviceaccounts", "system:serviceaccounts:kube-system")

	ctx := t.Context()
	leases := "/apis/coordination.k8s.io/v1/namespaces/" + reattestation.RecordNamespace + "/leases"
	lease := map[string]any{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": map[string]any{"name": "worker-0",
		"annotations": map[string]string{reattestation.StateAnnotation: "trusted"}}}
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]string{reattestation.StateAnnotation: "trusted"}}}
	for name, c := range map[string]*kubeapi.Client{"a node's kubelet": kubelet, "another service account": other} {
		for what, err := range map[string]error{
			"create": c.Do(ctx, http.MethodPost, leases, "", lease, nil),
			"list":   c.Do(ctx, http.MethodGet, leases, "", nil, nil),
		} {
			if !kubeapi.IsStatus(err, http.StatusForbidden) {
				t.Errorf("%s tries to %s a record: %v, want 403 Forbidden", name, what, err)
			}
		}
	}
	if err := service.Do(ctx, http.MethodPost, leases, "", lease, nil); err != nil {
		t.Fatalf("the join service creates a record: %v", err)
	}
	for name, c := range map[string]*kubeapi.Client{"a node's kubelet": kubelet, "another service account": other} {
		for what, err := range map[string]error{
			"patch":  c.Do(ctx, http.MethodPatch, leases+"/worker-0", kubeapi.MergePatch, patch, nil),
			"delete": c.Do(ctx, http.MethodDelete, leases+"/worker-0", "", nil, nil),
		} {
			if !kubeapi.IsStatus(err, http.StatusForbidden) {
				t.Errorf("%s tries to %s a record: %v, want 403 Forbidden", name, what, err)
			}
		}
	}
	var got map[string]any
	if err := service.Do(ctx, http.MethodGet, leases+"/worker-0", "", nil, &got); err != nil {
		t.Fatalf("the join service reads a record: %v", err)
	}
	if err := service.Do(ctx, http.MethodPut, leases+"/worker-0", "", got, nil); err != nil {
		t.Fatalf("the join service updates a record: %v", err)
	}
	if err := service.Do(ctx, http.MethodGet, leases+"?watch=false", "", nil, nil); err != nil {
		t.Fatalf("the join service lists the records: %v", err)
	}
	if err := service.Do(ctx, http.MethodDelete, leases+"/worker-0", "", nil, nil); err != nil {
		t.Fatalf("the join service deletes a record: %v", err)
	}
}

// The DaemonSet's pods are ready only as the readiness endpoint says (Readiness), which the service serves on
// the node's loopback address only, where the kubelet (on the node's network, as the pod) probes it.
func TestDaemonSetReadiness(t *testing.T) {
	raw, err := Manifests(map[string]string{ClusterIDFile: "00"}, "mini", "http://10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						HostNetwork bool
						Containers  []struct {
							Args           []string
							ReadinessProbe *struct {
								HTTPGet *struct {
									Host string
									Port int
									Path string
								}
								PeriodSeconds, TimeoutSeconds int
							}
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, it := range list.Items {
		if it.Kind != "DaemonSet" {
			continue
		}
		found = true
		pod := it.Spec.Template.Spec
		c := pod.Containers[0]
		p := c.ReadinessProbe
		if !pod.HostNetwork || p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "127.0.0.1" || p.HTTPGet.Port != HealthPort || p.HTTPGet.Path != ReadyPath || p.TimeoutSeconds < 2 {
			t.Errorf("readiness probe %+v, want GET http://127.0.0.1:%d%s on the host network", p, HealthPort, ReadyPath)
		}
		if !slices.Contains(c.Args, "--health-listen=127.0.0.1:"+strconv.Itoa(HealthPort)) {
			t.Errorf("args %v, want the readiness endpoint on the loopback address", c.Args)
		}
	}
	if !found {
		t.Fatal("no DaemonSet")
	}
}
