package cli

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

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
	// A Node left in Kubernetes whose machine the provider no longer has (its pod not ready): the service runs
	// on every node there is.
	nodes = nodes[:2]
	list.Items[0].Status.DesiredNumberScheduled, list.Items[0].Status.NumberReady = 3, 2
	if s := servicesFromList(list, expectedPods(nodes))[0]; !s.Healthy || s.State != "2/3" {
		t.Fatalf("a service on every node the provider has, and a Node left behind: %+v", s)
	}
	list.Items = list.Items[:1]
	list.Items[0].Status.DesiredNumberScheduled, list.Items[0].Status.NumberReady = 0, 0
	if s := servicesFromList(list, expectedPods(nodes))[0]; s.Healthy || s.State != "no node to run on" {
		t.Fatalf("a service scheduled nowhere: %+v", s)
	}
}

// TestContinuousState: status shows the quarantine by the Node's label, and otherwise only the record of the
// node's current Node object (its UID); no record, an outdated or another node's record, or unreadable
// records: pending, never trusted.
func TestContinuousState(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	const uid = types.UID("6a1e2c44-0000-4000-8000-000000000001")
	record := func(uid types.UID, state string, verified time.Time, alert string) *coordinationv1.Lease {
		validity := int32(30)
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "worker-0", Annotations: map[string]string{
			reattestation.NodeUIDAnnotation: string(uid), reattestation.StateAnnotation: state}}}
		l.Spec.LeaseDurationSeconds = &validity
		if !verified.IsZero() {
			l.Spec.RenewTime = &metav1.MicroTime{Time: verified}
		}
		if alert != "" {
			l.Annotations[reattestation.AlertAnnotation] = alert
		}
		return l
	}
	quarantined := map[string]string{meshpeers.QuarantineLabel: "measurements"}
	for _, tc := range []struct {
		labels map[string]string
		record *coordinationv1.Lease
		err    error
		want   string
	}{
		{nil, nil, nil, "pending (no record)"},
		{nil, record(uid, "trusted", now.Add(-3*time.Second), ""), nil, "trusted (verified 3s ago)"},
		{nil, record(uid, "trusted", now.Add(-31*time.Second), ""), nil, "pending (record outdated: verified 31s ago)"},
		{nil, record("another-uid", "trusted", now.Add(-3*time.Second), ""), nil, "pending (no record)"},
		{nil, record(uid, "trusted", now.Add(-3*time.Second), ""), errors.New("forbidden"), "pending (records unreadable)"},
		{quarantined, record(uid, "trusted", now, ""), nil, "QUARANTINED: measurements"},
		{quarantined, nil, errors.New("forbidden"), "QUARANTINED: measurements"},
		{nil, record(uid, "failed measurements", time.Time{}, "enforcement paused: not quarantined"), nil, "failed measurements; enforcement paused: not quarantined"},
	} {
		records := map[string]*coordinationv1.Lease{}
		if tc.record != nil {
			records["worker-0"] = tc.record
		}
		if got := continuousState("worker-0", uid, tc.labels, records, tc.err, now); got != tc.want {
			t.Errorf("continuousState(%v, %+v, %v) = %q, want %q", tc.labels, tc.record, tc.err, got, tc.want)
		}
	}
}
