package meshpeers

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// waitPeers waits for the watcher to show exactly want (node names with keys).
func waitPeers(ctx context.Context, t *testing.T, w *Watcher, want map[string]wgmesh.Key) {
	t.Helper()
	for {
		peers, _ := w.Peers()
		got := map[string]wgmesh.Key{}
		for _, p := range peers {
			got[p.Node] = p.PublicKey
		}
		if len(got) == len(want) && func() bool {
			for n, k := range want {
				if got[n] != k {
					return false
				}
			}
			return true
		}() {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the watcher shows %v, want %v", peers, want)
		case <-w.Changed():
		}
	}
}

// TestWatchWithNodeCredentials runs the record on a real API server (Node and RBAC authorizers, the
// NodeRestriction admission plugin), read by a node through a watch with a node's credentials: the RBAC
// objects of Manifests let it watch; a key a node publishes reaches the watcher; a deleted node leaves the
// record. The network's attack through the API: a node that publishes its own key on another node's Node
// object (to receive that node's traffic) is refused by the API server, and the record keeps the genuine key.
func TestWatchWithNodeCredentials(t *testing.T) {
	srv := kubeapitest.Start(t)
	ctx := t.Context()
	admin, err := kubeapi.FromKubeconfig(srv.Kubeconfig(t, "admin", "system:masters"))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := Manifests(); err != nil || kubeapitest.Create(ctx, admin, raw) != nil {
		t.Fatalf("creating the record's RBAC objects: %v", err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if err := admin.Do(ctx, http.MethodPost, "/api/v1/nodes", "", map[string]any{"metadata": map[string]any{"name": n}}, nil); err != nil {
			t.Fatalf("creating node %s: %v", n, err)
		}
	}
	nodeClient := func(name string) *kubeapi.Client {
		c, err := kubeapi.FromKubeconfig(srv.Kubeconfig(t, "system:node:"+name, "system:nodes"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	cfg, err := RESTConfig(srv.Kubeconfig(t, "system:node:a", "system:nodes"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	if !w.WaitSynced(ctx) {
		t.Fatal("the watch never synced: may system:nodes list and watch Node objects?")
	}
	if peers, malformed := w.Peers(); len(peers) != 0 || len(malformed) != 0 {
		t.Fatalf("a fresh cluster's record: %v %v, want empty", peers, malformed)
	}

	keyB, keyC := testKey(t), testKey(t)
	if err := Publish(ctx, nodeClient("b"), "b", keyB); err != nil {
		t.Fatal(err)
	}
	if err := Publish(ctx, nodeClient("c"), "c", keyC); err != nil {
		t.Fatal(err)
	}
	waitPeers(ctx, t, w, map[string]wgmesh.Key{"b": keyB, "c": keyC})

	// Node c claims node b's place in the mesh.
	err = Publish(ctx, nodeClient("c"), "b", keyC)
	if !kubeapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("node c publishing its key on node b's object: %v, want 403 Forbidden", err)
	}
	// A malformed key is no peer and is reported.
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]string{KeyAnnotation: "not a key"}}}
	if err := nodeClient("c").Do(ctx, http.MethodPatch, "/api/v1/nodes/c", kubeapi.MergePatch, patch, nil); err != nil {
		t.Fatal(err)
	}
	waitPeers(ctx, t, w, map[string]wgmesh.Key{"b": keyB})
	if _, malformed := w.Peers(); !slices.Equal(malformed, []string{"c"}) {
		t.Fatalf("malformed: %v, want [c]", malformed)
	}

	if err := admin.Do(ctx, http.MethodDelete, "/api/v1/nodes/b", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitPeers(ctx, t, w, map[string]wgmesh.Key{})
	// Every change came through the one watch: it never failed and was never listed again.
	if n := w.Failures(); n != 0 {
		t.Fatalf("the watch failed %d times (may system:nodes watch Node objects?)", n)
	}
}

func testKey(t *testing.T) wgmesh.Key {
	t.Helper()
	_, pub, err := wgmesh.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestQuarantinedNodeIsNoPeer: a node the cluster quarantined (QuarantineLabel, set by an administrator's
// credentials, as the re-attestation controller has) leaves every watcher's peers at once, though its key
// stays on its Node object; the node's attack, removing the label with its own kubelet's credentials, is
// refused by the API server (NodeRestriction), and it stays out of the mesh.
func TestQuarantinedNodeIsNoPeer(t *testing.T) {
	srv := kubeapitest.Start(t)
	ctx := t.Context()
	admin, err := kubeapi.FromKubeconfig(srv.Kubeconfig(t, "admin", "system:masters"))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := Manifests(); err != nil || kubeapitest.Create(ctx, admin, raw) != nil {
		t.Fatalf("creating the record's RBAC objects: %v", err)
	}
	keys := map[string]wgmesh.Key{"a": testKey(t), "b": testKey(t)}
	for n, k := range keys {
		meta := map[string]any{"name": n, "annotations": map[string]string{KeyAnnotation: k.String()}}
		if err := admin.Do(ctx, http.MethodPost, "/api/v1/nodes", "", map[string]any{"metadata": meta}, nil); err != nil {
			t.Fatalf("creating node %s: %v", n, err)
		}
	}
	cfg, err := RESTConfig(srv.Kubeconfig(t, "system:node:a", "system:nodes"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	waitPeers(ctx, t, w, keys)

	quarantine := map[string]any{"metadata": map[string]any{"labels": map[string]any{QuarantineLabel: "measurements"}}}
	if err := admin.Do(ctx, http.MethodPatch, "/api/v1/nodes/b", kubeapi.MergePatch, quarantine, nil); err != nil {
		t.Fatal(err)
	}
	waitPeers(ctx, t, w, map[string]wgmesh.Key{"a": keys["a"]})
	if peers, _, err := List(ctx, admin); err != nil || len(peers) != 1 || peers[0].Node != "a" {
		t.Fatalf("List: %v %v, want only a", peers, err)
	}

	// Node b lifts its own quarantine with its kubelet's credentials.
	b, err := kubeapi.FromKubeconfig(srv.Kubeconfig(t, "system:node:b", "system:nodes"))
	if err != nil {
		t.Fatal(err)
	}
	lift := map[string]any{"metadata": map[string]any{"labels": map[string]any{QuarantineLabel: nil}}}
	if err := b.Do(ctx, http.MethodPatch, "/api/v1/nodes/b", kubeapi.MergePatch, lift, nil); !kubeapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("node b removing its quarantine label: %v, want 403 Forbidden", err)
	}
	// A fresh key published by the quarantined node changes nothing either.
	if err := Publish(ctx, b, "b", testKey(t)); err != nil {
		t.Fatal(err)
	}
	if peers, _, err := List(ctx, admin); err != nil || len(peers) != 1 || peers[0].Node != "a" {
		t.Fatalf("List after node b's new key: %v %v, want only a", peers, err)
	}
}
