package bootstrapper

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// A node this node's join service admitted is a peer before the cluster's record has its key, with its new
// key when it rejoined, until the record has caught up or its admission expired.
func TestMergePeers(t *testing.T) {
	now := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	old, fresh, other := wgmesh.Key{1}, wgmesh.Key{2}, wgmesh.Key{3}
	recorded := []meshpeers.Peer{{Node: "control-plane-0", PublicKey: other}, {Node: "worker-0", PublicKey: old}}
	admitted := map[string]admittedPeer{
		"worker-0": {key: fresh, until: now.Add(time.Minute)}, // rejoined: newer than the record
		"worker-1": {key: other, until: now.Add(time.Minute)}, // joining, not registered yet
		"worker-2": {key: other, until: now.Add(-time.Second)},
	}
	got := map[string]wgmesh.Key{}
	for _, p := range mergePeers(recorded, admitted, now) {
		got[p.Node] = p.PublicKey
	}
	if len(got) != 3 || got["control-plane-0"] != other || got["worker-0"] != fresh || got["worker-1"] != other {
		t.Fatalf("merged peers: %v", got)
	}
	if _, ok := admitted["worker-2"]; ok {
		t.Fatal("an expired admission was kept")
	}
	// The record catches up with worker-0's new key: its admission is done.
	recorded[1].PublicKey = fresh
	mergePeers(recorded, admitted, now)
	if _, ok := admitted["worker-0"]; ok || len(admitted) != 1 {
		t.Fatalf("admissions after the record caught up: %v", admitted)
	}
	// Expired, worker-1 is no peer unless the record has it.
	if peers := mergePeers(recorded, admitted, now.Add(2*time.Minute)); len(peers) != 2 || len(admitted) != 0 {
		t.Fatalf("after expiry: %v, admitted %v", peers, admitted)
	}
}

// The peers a node last knew survive on its state disk; a damaged file is an error, a missing one is none.
func TestKeptRecord(t *testing.T) {
	dir := t.TempDir()
	a := &meshAgent{peersFile: filepath.Join(dir, "wireguard", "peers.json")}
	if err := a.loadRecord(); err != nil || a.recorded != nil {
		t.Fatalf("without a file: %v, %v", err, a.recorded)
	}
	want := []meshpeers.Peer{{Node: "control-plane-1", PublicKey: wgmesh.Key{9}}}
	if err := a.keepRecord(want); err != nil {
		t.Fatal(err)
	}
	b := &meshAgent{peersFile: a.peersFile}
	if err := b.loadRecord(); err != nil || !slices.Equal(b.recorded, want) {
		t.Fatalf("loaded %v, %v; want %v", b.recorded, err, want)
	}
	os.WriteFile(a.peersFile, []byte(`[{"node":"x","publicKey":"short"}]`), 0o600)
	if err := (&meshAgent{peersFile: a.peersFile}).loadRecord(); err == nil {
		t.Fatal("a damaged record was loaded")
	}
}
