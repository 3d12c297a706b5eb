package kubeapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
)

// Watch delivers every change of the object it watches, in order, from the version it starts at, until the
// callback stops it; a deletion is an event too.
func TestWatch(t *testing.T) {
	srv := kubeapitest.New(t, "w")
	api := srv.Client(t)
	ctx := context.Background()
	const path = "/api/v1/namespaces/w/configmaps"
	var cm struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	obj := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "watched"}, "data": map[string]string{"step": "0"}}
	if err := api.Do(ctx, http.MethodPost, path, "", obj, &cm); err != nil {
		t.Fatal(err)
	}
	// Changes made before the watch starts are delivered from the version it starts at.
	for _, step := range []string{"1", "2"} {
		if err := api.Do(ctx, http.MethodPatch, path+"/watched", kubeapi.MergePatch, map[string]any{"data": map[string]string{"step": step}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := api.Do(ctx, http.MethodDelete, path+"/watched", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := api.Watch(ctx, path+"?fieldSelector=metadata.name%3Dwatched&timeoutSeconds=20&resourceVersion="+cm.Metadata.ResourceVersion, func(ev kubeapi.WatchEvent) error {
		var o struct{ Data map[string]string }
		if err := json.Unmarshal(ev.Object, &o); err != nil {
			return err
		}
		got = append(got, ev.Type+" "+o.Data["step"])
		if ev.Type == "DELETED" {
			return kubeapi.ErrStopWatch
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"MODIFIED 1", "MODIFIED 2", "DELETED 2"}; len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("events %v, want %v", got, want)
	}
	// Refused: the API server's status.
	if err := api.Watch(ctx, "/api/v1/namespaces/w/nothings", func(kubeapi.WatchEvent) error { return nil }); !kubeapi.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("watching an unknown collection: %v", err)
	}
}
