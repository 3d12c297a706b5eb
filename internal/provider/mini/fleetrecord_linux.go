package mini

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
)

// The fleet record: the nodes the cluster has now, which after an upgrade or a scaling are not those the
// configuration started with (other names, other addresses, another node image). The provider rewrites it
// whenever a node comes or goes, and a restarted provider (after a crash, or 'apply' on a stopped cluster
// whose state disks remain) boots exactly those nodes again, each in its address slot, from its image, with
// its own TPM and state disk, so that 'constellation recover' finds the control plane where etcd expects it.
// Without the record it would boot the configuration's initial nodes instead: empty disks under new names,
// and the cluster's data on disks no node boots.
//
// The record trusts nothing: it lives on the host, like the node images and disks. A node booted from it
// proves its image by attestation like any other, and an image that is neither the cluster's nor registered
// boots only if its file still has the digest recorded, which the node's TPM then measures.

// fleetRecordName is the fleet record in the provider directory.
const fleetRecordName = "fleet.json"

// fleetRecord is what a restarted provider boots.
type fleetRecord struct {
	Nodes []recordedNode `json:"nodes"`
	// NextSlot and Named are the provider's counters (see [Provider]): names and slots of deleted nodes stay
	// unused after a restart too.
	NextSlot int            `json:"nextSlot"`
	Named    map[string]int `json:"named"`
	// PeerPolicy is the peer policy hint joining nodes read (an upgrade's window), nil if none.
	PeerPolicy json.RawMessage `json:"peerPolicy,omitempty"`
}

// recordedNode is one node of the record.
type recordedNode struct {
	Name string `json:"name"`
	Role string `json:"role"`
	Slot int    `json:"slot"`
	// Image is the digest of the node image the node boots ("sha256:<hex>"), Path the file it was booted from.
	Image string `json:"image"`
	Path  string `json:"path"`
}

// saveFleet writes the fleet record. p.mu is held, or the cluster is booting.
func (p *Provider) saveFleet() error {
	rec := fleetRecord{NextSlot: p.nextSlot, Named: p.named, PeerPolicy: p.peerPolicy}
	for _, nd := range p.nodes {
		rec.Nodes = append(rec.Nodes, recordedNode{Name: nd.name, Role: nd.role, Slot: nd.index, Image: fmt.Sprintf("sha256:%x", nd.digest), Path: nd.image})
	}
	raw, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(p.Dir, fleetRecordName), raw, 0o600); err != nil {
		return fmt.Errorf("recording the cluster's nodes: %w", err)
	}
	return nil
}

// readFleetRecord reads the fleet record of dir. It returns none (nil) when there is no record, or when none
// of its nodes has a state disk left: those nodes would boot empty, and the configuration's nodes are what a
// new cluster starts with.
func readFleetRecord(dir string) (*fleetRecord, error) {
	path := filepath.Join(dir, fleetRecordName)
	raw, err := atomicfile.ReadPrivate(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's node record: %w", err)
	}
	var rec fleetRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("the cluster's node record %s is damaged (%v): restore it, or remove it to boot the configuration's nodes", path, err)
	}
	if err := rec.check(); err != nil {
		return nil, fmt.Errorf("the cluster's node record %s: %w: restore it, or remove it to boot the configuration's nodes", path, err)
	}
	for _, n := range rec.Nodes {
		if _, err := os.Stat(filepath.Join(dir, "nodes", n.Name, stateDiskName)); err == nil {
			return &rec, nil
		}
	}
	return nil, nil
}

// check validates the record before anything of it is used.
func (r *fleetRecord) check() error {
	if len(r.Nodes) > MaxNodes {
		return fmt.Errorf("%d nodes, more than a mini cluster can have (%d)", len(r.Nodes), MaxNodes)
	}
	if r.NextSlot < 0 || r.NextSlot > MaxNodes {
		return fmt.Errorf("next slot %d is out of range", r.NextSlot)
	}
	names, slots, controlPlanes := map[string]bool{}, map[int]bool{}, 0
	for _, n := range r.Nodes {
		if err := provider.CheckRole(n.Role); err != nil {
			return fmt.Errorf("node %q: %w", n.Name, err)
		}
		if nameNumber(n.Name, n.Role) < 0 {
			return fmt.Errorf("node %q: not a name of a %s node", n.Name, n.Role)
		}
		if names[n.Name] {
			return fmt.Errorf("node %q is recorded twice", n.Name)
		}
		if n.Slot < 0 || n.Slot >= MaxNodes || slots[n.Slot] {
			return fmt.Errorf("node %q: slot %d is out of range or taken", n.Name, n.Slot)
		}
		if err := provider.CheckImageDigest(n.Image); err != nil {
			return fmt.Errorf("node %q: %w", n.Name, err)
		}
		if !filepath.IsAbs(n.Path) {
			return fmt.Errorf("node %q: image path %q is not absolute", n.Name, n.Path)
		}
		names[n.Name], slots[n.Slot] = true, true
		if n.Role == metadata.RoleControlPlane {
			controlPlanes++
		}
	}
	if len(r.Nodes) > 0 && controlPlanes == 0 {
		return errors.New("it has no control-plane node")
	}
	for role, next := range r.Named {
		if provider.CheckRole(role) != nil || next < 0 || next > 1<<20 {
			return fmt.Errorf("name counter %q=%d is invalid", role, next)
		}
	}
	return nil
}

// recordedImage returns the file and digest a recorded node boots: a node image the provider knows by that
// digest (the cluster's or a registered one), or else the file the node was booted from, if its content still
// has the recorded digest (the image of the configuration before an upgrade, for instance).
func (p *Provider) recordedImage(n recordedNode) (string, [32]byte, error) {
	var digest [32]byte
	raw, err := hex.DecodeString(strings.TrimPrefix(n.Image, "sha256:"))
	if err != nil || len(raw) != len(digest) {
		return "", digest, fmt.Errorf("node %s: image %q is not a SHA-256 digest", n.Name, n.Image)
	}
	copy(digest[:], raw)
	path, ok := p.images[n.Image]
	if !ok {
		path = n.Path
	}
	if err := checkImage(path, digest); err != nil {
		return "", digest, fmt.Errorf("node %s was booted from node image %s, which the provider cannot find unchanged (%w); "+
			"register that image with 'constellation mini register-image FILE' and start the cluster again", n.Name, n.Image, err)
	}
	return path, digest, nil
}
