package cli

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/reattestation"
)

// status shows each node's kubelet version and the node image its continuous attestation proved, from its
// record (which only the join service writes), never from what the node writes on its Node object: a node
// without a record, with the record of an earlier Node object of its name, or with a stale record shows none.
func TestStatusShowsAttestedImage(t *testing.T) {
	srv := kubeapitest.New(t, reattestation.RecordNamespace)
	api := srv.Client(t)
	ctx := t.Context()
	const (
		attested = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
		claimed  = "sha256:9999999999999999999999999999999999999999999999999999999999999999"
	)
	now := time.Now()
	uids := map[string]string{}
	for _, name := range []string{"worker-0", "worker-1", "worker-2", "worker-3"} {
		var created struct{ Metadata struct{ UID string } }
		node := map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{
			"name": name, "annotations": map[string]string{"constellation.dev/image-digest": claimed, reattestation.AttestedImageAnnotation: claimed},
		}}
		if err := api.Do(ctx, http.MethodPost, "/api/v1/nodes", "", node, &created); err != nil {
			t.Fatal(err)
		}
		uids[name] = created.Metadata.UID
		st := map[string]any{"status": map[string]any{"nodeInfo": map[string]any{"kubeletVersion": "v1.37.2"}, "conditions": []map[string]any{{"type": "Ready", "status": "True"}}}}
		if err := api.Do(ctx, http.MethodPatch, "/api/v1/nodes/"+name+"/status", kubeapi.MergePatch, st, nil); err != nil {
			t.Fatal(err)
		}
	}
	record := func(name, uid string, verified time.Time) {
		lease := map[string]any{
			"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
			"metadata": map[string]any{"name": name, "namespace": reattestation.RecordNamespace, "annotations": map[string]string{
				reattestation.StateAnnotation: string(reattestation.Trusted), reattestation.NodeUIDAnnotation: uid, reattestation.AttestedImageAnnotation: attested,
			}},
			"spec": map[string]any{"renewTime": verified.UTC().Format("2006-01-02T15:04:05.000000Z07:00"), "leaseDurationSeconds": 60},
		}
		if err := api.Do(ctx, http.MethodPost, "/apis/coordination.k8s.io/v1/namespaces/"+reattestation.RecordNamespace+"/leases", "", lease, nil); err != nil {
			t.Fatal(err)
		}
	}
	record("worker-0", uids["worker-0"], now)
	record("worker-1", "an-earlier-node", now)
	record("worker-2", uids["worker-2"], now.Add(-time.Hour))
	// worker-3 has no record.

	nodes, err := nodeReadiness(ctx, api, now)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"worker-0": "sha256:222222222222", "worker-1": "-", "worker-2": "-", "worker-3": "-"} {
		if got := nodes[name]; got.Image != want || got.Kubelet != "v1.37.2" || got.Ready != "Ready" {
			t.Errorf("%s: %+v, want image %s, kubelet v1.37.2", name, got, want)
		}
	}
	h := clusterHealth{Initialised: true, State: clusterState{ClusterID: strings.Repeat("ab", 32)}}
	for _, name := range []string{"worker-0", "worker-3"} {
		kn := nodes[name]
		h.Nodes = append(h.Nodes, nodeHealth{Name: name, Role: "worker", Attestation: "member", Attested: true, Kubernetes: kn.Ready, Continuous: kn.Continuous, Image: kn.Image, Kubelet: kn.Kubelet})
	}
	var out bytes.Buffer
	h.print(&out)
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 4 || strings.Join(strings.Fields(lines[1]), " ") != "NODE ROLE ADDRESS ATTESTATION KUBERNETES KUBELET IMAGE CONTINUOUS" ||
		!strings.Contains(lines[2], "v1.37.2  sha256:222222222222  trusted") || strings.Contains(out.String(), "sha256:9999") {
		t.Fatalf("status:\n%s", out.String())
	}
}
