package cli

import (
	"encoding/json"
	"testing"
)

// status calls the cluster's services healthy only when each is deployed, has nodes to run on, and all its
// pods are ready.
func TestServicesFromList(t *testing.T) {
	var list daemonSetList
	if err := json.Unmarshal([]byte(`{"items": [
		{"metadata": {"name": "join-service"}, "status": {"desiredNumberScheduled": 2, "numberReady": 2}},
		{"metadata": {"name": "verification-service"}, "status": {"desiredNumberScheduled": 3, "numberReady": 2}},
		{"metadata": {"name": "someone-elses"}, "status": {"desiredNumberScheduled": 1, "numberReady": 1}}
	]}`), &list); err != nil {
		t.Fatal(err)
	}
	got := servicesFromList(list)
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
	list.Items = list.Items[:1]
	list.Items[0].Status.DesiredNumberScheduled, list.Items[0].Status.NumberReady = 0, 0
	if s := servicesFromList(list)[0]; s.Healthy || s.State != "no node to run on" {
		t.Fatalf("a service scheduled nowhere: %+v", s)
	}
}
