package keyservice

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// DiskBindingsFile is where the key service keeps its record of which node each state disk belongs to: a
// directory on the state disk of the control-plane node that runs it (encrypted with that node's disk key),
// mounted into the key service's pod only.
const DiskBindingsFile = "/var/lib/constellation/key-service/disk-bindings.json"

// ErrDiskBound is returned when a disk's key is asked for on behalf of another node than the one the disk
// is bound to.
var ErrDiskBound = errors.New("the disk is bound to another node")

// nodeName is what the key service accepts as a node name: a DNS label or subdomain, as Kubernetes node names
// and the provider's attestation key certificates have them.
var nodeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// maxDiskBindings bounds the record (and the file it is kept in).
const maxDiskBindings = 100000

// DiskBindings binds state disks (by UUID) to the node that first got their key: a host that gives a copy
// of node A's disk to node B cannot have B get A's key, and so B cannot run with A's identity, etcd data or
// PKI. The node is named by its attestation key certificate (see [atls.AttestedPeerName]): the name the
// provider certified for that vTPM, which the join service has validated, never a name the node asks for.
//
// A binding is never removed: a disk UUID belongs to one node for the life of the cluster.
type DiskBindings struct {
	path string // "" for a record in memory only

	mu    sync.Mutex
	disks map[string]string // disk UUID -> node name
}

// diskBindingsJSON is the file's form.
type diskBindingsJSON struct {
	Version int               `json:"version"`
	Disks   map[string]string `json:"disks"`
}

const diskBindingsVersion = 1

// NewDiskBindings returns a record kept in memory only, for tests and tools: it forgets everything on
// restart.
func NewDiskBindings() *DiskBindings { return &DiskBindings{disks: map[string]string{}} }

// OpenDiskBindings reads the record kept at path, or starts an empty one if the file does not exist yet. A
// file that cannot be parsed is an error: the key service then refuses to start rather than forget bindings.
func OpenDiskBindings(path string) (*DiskBindings, error) {
	b := &DiskBindings{path: path, disks: map[string]string{}}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("creating the directory of the disk bindings: %w", err)
		}
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the disk bindings: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxDiskBindingsFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading the disk bindings: %w", err)
	}
	disks, err := ParseDiskBindings(raw)
	if err != nil {
		return nil, fmt.Errorf("the disk bindings in %s: %w; the file is kept on the node's encrypted state disk and written by the key service only, so restore it from a backup rather than delete it", path, err)
	}
	b.disks = disks
	return b, nil
}

// maxDiskBindingsFile bounds the file: maxDiskBindings entries of a UUID and a node name.
const maxDiskBindingsFile = maxDiskBindings * (36 + 253 + 8)

// ParseDiskBindings parses the record's file strictly: known fields only, canonical disk UUIDs, valid node
// names.
func ParseDiskBindings(raw []byte) (map[string]string, error) {
	if len(raw) > maxDiskBindingsFile {
		return nil, fmt.Errorf("larger than %d bytes", maxDiskBindingsFile)
	}
	var in diskBindingsJSON
	if err := strictjson.Decode(raw, &in, maxDiskBindingsFile); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if in.Version != diskBindingsVersion {
		return nil, fmt.Errorf("version %d, this key service reads version %d", in.Version, diskBindingsVersion)
	}
	if len(in.Disks) > maxDiskBindings {
		return nil, fmt.Errorf("%d bindings, at most %d", len(in.Disks), maxDiskBindings)
	}
	out := make(map[string]string, len(in.Disks))
	for uuid, node := range in.Disks {
		if !diskUUID.MatchString(uuid) {
			return nil, fmt.Errorf("disk UUID %.60q is not a lower-case RFC 4122 UUID", uuid)
		}
		if !nodeName.MatchString(node) {
			return nil, fmt.Errorf("disk %s: node name %.60q is not a DNS name", uuid, node)
		}
		out[uuid] = node
	}
	return out, nil
}

// diskUUID is the canonical, lower-case form of a disk UUID.
var diskUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Bind binds the disk to node if it is bound to nobody yet, and checks that it is bound to node otherwise.
// A new binding is on disk before Bind returns, so a key is never handed out for a binding that a restart
// could forget. It returns an error wrapping [ErrDiskBound] if the disk belongs to another node.
func (b *DiskBindings) Bind(uuid, node string) error {
	if !diskUUID.MatchString(uuid) {
		return fmt.Errorf("disk UUID %.60q is not a lower-case RFC 4122 UUID", uuid)
	}
	if !nodeName.MatchString(node) {
		return fmt.Errorf("node name %.60q is not a DNS name; disk keys are handed out for named nodes only", node)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if owner, ok := b.disks[uuid]; ok {
		if owner != node {
			return fmt.Errorf("disk %s asked for by node %q: %w (%q)", uuid, node, ErrDiskBound, owner)
		}
		return nil
	}
	if len(b.disks) >= maxDiskBindings {
		return fmt.Errorf("the key service has bound %d disks, its limit; no new disk can be bound", len(b.disks))
	}
	b.disks[uuid] = node
	if err := b.save(); err != nil {
		delete(b.disks, uuid)
		return err
	}
	return nil
}

// Owner returns the node a disk is bound to.
func (b *DiskBindings) Owner(uuid string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	node, ok := b.disks[uuid]
	return node, ok
}

// save writes the record; b.mu is held.
func (b *DiskBindings) save() error {
	if b.path == "" {
		return nil
	}
	raw, err := json.Marshal(diskBindingsJSON{Version: diskBindingsVersion, Disks: b.disks})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(b.path, raw, 0o600); err != nil {
		return fmt.Errorf("recording the disk binding: %w", err)
	}
	return nil
}
