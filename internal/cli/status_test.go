package cli

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/reattestation"
)

// status calls the cluster's services healthy only when each is deployed, is scheduled on the nodes it must run
// on (a control-plane node that registered a moment ago is not counted by the DaemonSet yet), and all its pods
// are ready.
func TestServicesFromList(t *testing.T) {
	var list daemonSetList
	if err := json.Unmarshal([]byte(`{"items": [
		{"metadata": {"name": "join-service"}, "status": {"desiredNumberScheduled": 2, "numberReady": 2}},
		{"metadata": {"name": "verification-service"}, "status": {"desiredNumberScheduled": 3, "numberReady": 2}},
		{"metadata": {"name": "someone-elses"}, "status": {"desiredNumberScheduled": 1, "numberReady": 1}}
	]}`), &list); err != nil {
		t.Fatal(err)
	}
	nodes := []clusterNode{{Name: "control-plane-0", Role: "control-plane"}, {Name: "control-plane-1", Role: "control-plane"}, {Name: "worker-0", Role: "worker"}}
	got := servicesFromList(list, expectedPods(nodes))
	want := []serviceStatus{
		{"join-service", "2/2", true},
		{"key-service", "not deployed", false},
		{"verification-service", "2/3", false},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("service %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// A third control-plane node registered, the DaemonSet does not count it yet: not healthy.
	nodes = append(nodes, clusterNode{Name: "control-plane-2", Role: "control-plane"})
	if s := servicesFromList(list, expectedPods(nodes))[0]; s.Healthy || s.State != "2/2 (scheduled on 2 nodes, 3 expected)" {
		t.Fatalf("a service not yet scheduled on a new control-plane node: %+v", s)
	}
	list.Items = list.Items[:1]
	list.Items[0].Status.DesiredNumberScheduled, list.Items[0].Status.NumberReady = 0, 0
	if s := servicesFromList(list, expectedPods(nodes))[0]; s.Healthy || s.State != "no node to run on" {
		t.Fatalf("a service scheduled nowhere: %+v", s)
	}
}

func TestContinuousState(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	for _, tc := range []struct {
		labels, annotations map[string]string
		want                string
	}{
		{nil, nil, "-"},
		{nil, map[string]string{reattestation.StateAnnotation: "trusted", reattestation.VerifiedAnnotation: "2026-01-01T00:00:07Z"}, "trusted (verified 3s ago)"},
		{map[string]string{meshpeers.QuarantineLabel: "measurements"}, map[string]string{reattestation.StateAnnotation: "trusted"}, "QUARANTINED: measurements"},
		{nil, map[string]string{reattestation.StateAnnotation: "failed measurements", reattestation.AlertAnnotation: "enforcement paused: not quarantined"}, "failed measurements; enforcement paused: not quarantined"},
	} {
		if got := continuousState(tc.labels, tc.annotations, now); got != tc.want {
			t.Errorf("continuousState(%v, %v) = %q, want %q", tc.labels, tc.annotations, got, tc.want)
		}
	}
}
