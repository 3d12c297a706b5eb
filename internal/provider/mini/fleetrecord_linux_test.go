package mini

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/provider/providers"
)

// After the fleet changed (a node deleted, a node of a registered image created, a peer policy handed out),
// the record holds exactly the nodes that exist, with their slots and images, and the counters, so that a
// restarted provider boots them and no other (names and slots of deleted nodes stay unused).
func TestFleetRecordFollowsTheFleet(t *testing.T) {
	f := newFleetProvider(t)
	ctx := context.Background()
	fleet, err := providers.Fleet(metadata.ProviderName, f.url, f.credential)
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.DeleteNode(ctx, "worker-0"); err != nil {
		t.Fatal(err)
	}
	src := fakeSquashfs(t, filepath.Join(t.TempDir(), "next.squashfs"))
	next, err := f.p.RegisterImage(src)
	if err != nil {
		t.Fatal(err)
	}
	// The node that CreateNode would boot (no sandbox here): its slot and name as CreateNode picks them.
	f.p.mu.Lock()
	slot, err := f.p.freeSlot()
	if err != nil {
		t.Fatal(err)
	}
	name := f.p.newName(metadata.RoleWorker)
	f.p.nodes = append(f.p.nodes, &node{index: slot, name: name, role: metadata.RoleWorker, image: f.p.images[next], digest: digestOf(t, next)})
	if err := f.p.saveFleet(); err != nil {
		t.Fatal(err)
	}
	f.p.mu.Unlock()
	// Before any node has a state disk again, the record counts: the fleet provider gave each node one.
	rec, err := readFleetRecord(f.p.Dir)
	if err != nil || rec == nil {
		t.Fatalf("reading the record: %v (%v)", rec, err)
	}
	var got []string
	for _, n := range rec.Nodes {
		got = append(got, fmt.Sprintf("%s/%s/%d/%s", n.Name, n.Role, n.Slot, n.Image))
	}
	clusterImage := fmt.Sprintf("sha256:%x", f.p.digest)
	want := []string{
		"control-plane-0/control-plane/0/" + clusterImage,
		"worker-1/worker/2/" + clusterImage,
		"worker-2/worker/3/" + next,
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("recorded nodes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rec.NextSlot != 4 || rec.Named[metadata.RoleWorker] != 3 {
		t.Fatalf("recorded counters: next slot %d, next worker %d; want 4 and 3", rec.NextSlot, rec.Named[metadata.RoleWorker])
	}
	for _, n := range rec.Nodes {
		path, _, err := f.p.recordedImage(n)
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		if n.Image == next && path != f.p.images[next] {
			t.Fatalf("%s boots %s, want the registered copy %s", n.Name, path, f.p.images[next])
		}
	}
	// Without any state disk left, the record is no cluster to bring back.
	if err := RemoveStateDisks(f.p.Dir); err != nil {
		t.Fatal(err)
	}
	if rec, err := readFleetRecord(f.p.Dir); rec != nil || err != nil {
		t.Fatalf("after the disks were removed: %v (%v), want no record", rec, err)
	}
	if _, err := os.Stat(filepath.Join(f.p.Dir, fleetRecordName)); !os.IsNotExist(err) {
		t.Fatalf("the record outlived the state disks: %v", err)
	}
}

// The peer policy hint of an upgrade's window is in the record; removing it removes it there too.
func TestFleetRecordKeepsThePeerPolicy(t *testing.T) {
	f := newFleetProvider(t)
	hint := policyupdate.PeerHint{Sets: []measurements.M{{4: {Expected: measurements.Digest{1}}, 8: {Expected: measurements.Digest{2}}}}}
	raw := hint.Marshal()
	stop, err := f.p.serveControl(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := SetPeerPolicy(context.Background(), f.p.Dir, raw); err != nil {
		t.Fatal(err)
	}
	rec, err := readFleetRecord(f.p.Dir)
	if err != nil || rec == nil {
		t.Fatalf("reading the record: %v (%v)", rec, err)
	}
	if got, err := policyupdate.ParsePeerHint(rec.PeerPolicy); err != nil || string(got.Marshal()) != string(raw) {
		t.Fatalf("recorded peer policy %q (%v), want %q", rec.PeerPolicy, err, raw)
	}
	if err := SetPeerPolicy(context.Background(), f.p.Dir, nil); err != nil {
		t.Fatal(err)
	}
	if rec, err := readFleetRecord(f.p.Dir); err != nil || rec.PeerPolicy != nil {
		t.Fatalf("after removing the peer policy: %q (%v)", rec.PeerPolicy, err)
	}
}

// A record changed on the host is checked before anything of it is used; an image the provider does not know
// boots only if its file still has the recorded digest (what the node's TPM measures).
func TestFleetRecordRefusesBadRecordsAndChangedImages(t *testing.T) {
	f := newFleetProvider(t)
	f.p.mu.Lock()
	if err := f.p.saveFleet(); err != nil {
		t.Fatal(err)
	}
	f.p.mu.Unlock()
	path := filepath.Join(f.p.Dir, fleetRecordName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		change func(r map[string]any)
		want   string
	}{
		"twice":         {func(r map[string]any) { r["nodes"] = append(r["nodes"].([]any), r["nodes"].([]any)[1]) }, "recorded twice"},
		"slot taken":    {func(r map[string]any) { recNode(r, 2)["slot"] = 0 }, "slot 0 is out of range or taken"},
		"slot range":    {func(r map[string]any) { recNode(r, 2)["slot"] = MaxNodes }, "out of range"},
		"role":          {func(r map[string]any) { recNode(r, 1)["role"] = "master" }, `node "worker-0"`},
		"name":          {func(r map[string]any) { recNode(r, 1)["name"] = "../../etc" }, "not a name of a worker node"},
		"digest":        {func(r map[string]any) { recNode(r, 1)["image"] = "sha256:00" }, `node "worker-0"`},
		"relative path": {func(r map[string]any) { recNode(r, 1)["path"] = "image.squashfs" }, "not absolute"},
		"no control":    {func(r map[string]any) { r["nodes"] = r["nodes"].([]any)[1:] }, "no control-plane node"},
		"counter":       {func(r map[string]any) { r["named"] = map[string]any{"worker": -1} }, "name counter"},
	} {
		var r map[string]any
		if err := json.Unmarshal(good, &r); err != nil {
			t.Fatal(err)
		}
		tc.change(r)
		raw, _ := json.Marshal(r)
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if rec, err := readFleetRecord(f.p.Dir); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "remove it to boot the configuration's nodes") {
			t.Errorf("%s: %v (%v), want an error naming %q and what to do", name, rec, err, tc.want)
		}
	}
	if err := os.WriteFile(path, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readFleetRecord(f.p.Dir); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a truncated record: %v", err)
	}

	// An image the provider does not know by its digest (the configuration moved on), whose file changed.
	other := fakeSquashfs(t, filepath.Join(t.TempDir(), "old.squashfs"))
	n := recordedNode{Name: "worker-0", Role: metadata.RoleWorker, Slot: 1, Image: fmt.Sprintf("sha256:%x", digestFile(t, other)), Path: other}
	if got, _, err := f.p.recordedImage(n); err != nil || got != other {
		t.Fatalf("an unchanged image from its recorded path: %s (%v)", got, err)
	}
	fd, err := os.OpenFile(other, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd.WriteAt([]byte("X"), 100)
	fd.Close()
	if _, _, err := f.p.recordedImage(n); err == nil || !strings.Contains(err.Error(), "register that image") {
		t.Fatalf("a changed image: %v", err)
	}
}

func recNode(r map[string]any, i int) map[string]any { return r["nodes"].([]any)[i].(map[string]any) }

func digestOf(t *testing.T, digest string) (d [32]byte) {
	t.Helper()
	raw, err := hex.DecodeString(strings.TrimPrefix(digest, "sha256:"))
	if err != nil || len(raw) != len(d) {
		t.Fatalf("digest %q: %v", digest, err)
	}
	copy(d[:], raw)
	return d
}

func digestFile(t *testing.T, path string) [32]byte {
	t.Helper()
	d, err := measuredboot.DigestFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
