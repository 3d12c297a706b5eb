package meshagent

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider"
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
	a := &Agent{peersFile: filepath.Join(dir, "wireguard", "peers.json")}
	if err := a.loadRecord(); err != nil || a.recorded != nil {
		t.Fatalf("without a file: %v, %v", err, a.recorded)
	}
	want := []meshpeers.Peer{{Node: "control-plane-1", PublicKey: wgmesh.Key{9}}}
	if err := a.keepRecord(want); err != nil {
		t.Fatal(err)
	}
	b := &Agent{peersFile: a.peersFile}
	if err := b.loadRecord(); err != nil || !slices.Equal(b.recorded, want) {
		t.Fatalf("loaded %v, %v; want %v", b.recorded, err, want)
	}
	os.WriteFile(a.peersFile, []byte(`[{"node":"x","publicKey":"short"}]`), 0o600)
	if err := (&Agent{peersFile: a.peersFile}).loadRecord(); err == nil {
		t.Fatal("a damaged record was loaded")
	}
}

// Every peer gets the pair's preshared key from the mesh's root key; without the root no peer is configured
// at all (fail closed), while an empty mesh needs none.
func TestMeshPeersHavePresharedKeys(t *testing.T) {
	_, self, _ := wgmesh.GenerateKey()
	_, k1, _ := wgmesh.GenerateKey()
	_, k2, _ := wgmesh.GenerateKey()
	recorded := []meshpeers.Peer{{Node: "control-plane-0", PublicKey: k1}, {Node: "worker-0", PublicKey: self}, {Node: "worker-1", PublicKey: k2}}
	instances := []provider.Instance{
		{Name: "control-plane-0", IP: "10.217.0.10", PodCIDR: "10.244.0.0/24"},
		{Name: "worker-0", IP: "10.217.0.11", PodCIDR: "10.244.1.0/24"},
		{Name: "worker-1", IP: "10.217.0.12", PodCIDR: "10.244.2.0/24"},
	}
	log := slog.New(slog.DiscardHandler)
	root := wgmesh.Key{0x42}
	peers, _, err := meshPeers(recorded, instances, "worker-0", root, self, log)
	if err != nil || len(peers) != 2 {
		t.Fatalf("meshPeers = %v, %v", peers, err)
	}
	for _, p := range peers {
		want, _ := wgmesh.PairKey(root, p.PublicKey, self)
		if p.PresharedKey == (wgmesh.Key{}) || p.PresharedKey != want {
			t.Errorf("peer %s has the preshared key %s, want the pair's %s", p.PublicKey, p.PresharedKey, want)
		}
	}
	if peers[0].PresharedKey == peers[1].PresharedKey {
		t.Error("two pairs share a preshared key")
	}
	if peers, _, err := meshPeers(recorded, instances, "worker-0", wgmesh.Key{}, self, log); err == nil || len(peers) != 0 {
		t.Fatalf("without the root key: %v, %v; want no peer and an error", peers, err)
	}
	if _, _, err := meshPeers(recorded[1:2], instances, "worker-0", wgmesh.Key{}, self, log); err != nil {
		t.Fatalf("a node alone needs no root key: %v", err)
	}
}

// The root key survives on the state disk; a wrong-sized one is refused.
func TestKeptRoot(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	a := &Agent{rootFile: filepath.Join(dir, "wireguard", "psk-root.key"), log: log}
	if err := a.SetRoot(make([]byte, 31)); err == nil {
		t.Fatal("a 31-byte root was taken")
	}
	if err := a.SetRoot(make([]byte, 32)); err == nil {
		t.Fatal("a zero root was taken")
	}
	root := wgmesh.Key{7, 7}
	if err := a.SetRoot(root[:]); err != nil {
		t.Fatal(err)
	}
	b := &Agent{rootFile: a.rootFile, log: log}
	if err := b.loadRoot(); err != nil || b.root != root {
		t.Fatalf("loaded %s, %v; want %s", b.root, err, root)
	}
	if st, err := os.Stat(a.rootFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the root key file: %v, %v", st, err)
	}
}

// A peer answers a probe whether its port accepts or refuses the connection: either way the packets crossed
// both ways.
func TestProbePeers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	// 127.0.0.2 is loopback too, where nothing listens on port: refused.
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}
	if silent := probePeers(context.Background(), addrs, port, time.Now()); len(silent) != 0 {
		t.Fatalf("peers that answered counted as silent: %v", silent)
	}
}

// WaitPeers waits for the cluster's record to be applied before it probes anyone.
func TestWaitPeersWaitsForTheRecord(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.WaitPeers(ctx, 1, time.Minute) }()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("WaitPeers returned without the record having been applied")
	}
	a.followedOnce.Do(func() { close(a.followedChan()) })
	if err := a.WaitPeers(context.Background(), 1, time.Minute); err == nil {
		t.Fatal("WaitPeers without a WireGuard interface said every peer answers")
	}
}
