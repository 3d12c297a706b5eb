package keyservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sync"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// LegacyDiskBindingsFile is where key services before the shared record kept their bindings: on the state disk
// of the first control-plane node, which ran the only key service. A key service that finds it there moves
// its bindings into the shared record ([MigrateDiskBindingsFile]).
const LegacyDiskBindingsFile = "/var/lib/constellation/key-service/disk-bindings.json"

// ErrDiskBound is returned when a disk's key is asked for on behalf of another node than the one the disk
// is bound to.
var ErrDiskBound = errors.New("the disk is bound to another node")

// nodeName is what the key service accepts as a node name: a DNS label or subdomain, as Kubernetes node names
// and the provider's attestation key certificates have them.
var nodeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// diskUUID is the canonical, lower-case form of a disk UUID.
var diskUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// DiskBinder binds state disks (by UUID) to the node that first got their key: a host that gives a copy of
// node A's disk to node B cannot have B get A's key, and so B cannot run with A's identity, etcd data or PKI.
// The node is named by its attestation key certificate (see [atls.AttestedPeerName]): the name the provider
// certified for that vTPM, which the join service has validated, never a name the node asks for.
//
// A binding is never removed: a disk UUID belongs to one node for the life of the cluster. Every key service
// of a cluster uses the same record ([APIDiskBindings]), so that a disk bound by one is bound for all.
type DiskBinder interface {
	// Bind binds the disk to node if it is bound to nobody yet, and checks that it is bound to node otherwise.
	// The first binding wins, also against a concurrent Bind of another key service; a new binding is recorded
	// before Bind returns. It returns an error wrapping [ErrDiskBound] if the disk belongs to another node.
	Bind(ctx context.Context, uuid, node string) error
	// Owner returns the node a disk is bound to.
	Owner(ctx context.Context, uuid string) (node string, bound bool, err error)
}

// checkBinding checks the form of a binding before it is looked up or recorded.
func checkBinding(uuid, node string) error {
	if !diskUUID.MatchString(uuid) {
		return fmt.Errorf("disk UUID %.60q is not a lower-case RFC 4122 UUID", uuid)
	}
	if !nodeName.MatchString(node) {
		return fmt.Errorf("node name %.60q is not a DNS name; disk keys are handed out for named nodes only", node)
	}
	return nil
}

// DiskBindings is a record of disk bindings in memory only, for tests and tools: it forgets everything on
// restart.
type DiskBindings struct {
	mu    sync.Mutex
	disks map[string]string // disk UUID -> node name
}

// NewDiskBindings returns an empty record in memory.
func NewDiskBindings() *DiskBindings { return &DiskBindings{disks: map[string]string{}} }

// Bind implements [DiskBinder].
func (b *DiskBindings) Bind(_ context.Context, uuid, node string) error {
	if err := checkBinding(uuid, node); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if owner, ok := b.disks[uuid]; ok {
		if owner != node {
			return fmt.Errorf("disk %s asked for by node %q: %w (%q)", uuid, node, ErrDiskBound, owner)
		}
		return nil
	}
	b.disks[uuid] = node
	return nil
}

// Owner implements [DiskBinder].
func (b *DiskBindings) Owner(_ context.Context, uuid string) (string, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	node, ok := b.disks[uuid]
	return node, ok, nil
}

// DiskBindingsNamespace is the namespace of the shared record of disk bindings: one immutable ConfigMap per
// disk, named "disk-<UUID>", whose key "node" names the node. Only the key services' service account may
// create objects there (and nobody may change one: immutable, and no role grants update); the kubelets'
// credentials of the nodes may neither read nor write it (the Node authorizer grants a node only objects
// its own pods reference, and no role here names the nodes' group).
const DiskBindingsNamespace = "constellation-disk-bindings"

// bindingKey is the ConfigMap key that names the node a disk is bound to.
const bindingKey = "node"

// APIDiskBindings is the record of disk bindings that every key service of the cluster shares, in the
// Kubernetes API ([DiskBindingsNamespace]). A binding is created, never updated: the API server's create is
// atomic, so of two key services that bind the same disk at once to different nodes exactly one succeeds,
// and the other reads the winner's binding. The record is not secret (disk UUIDs and node names), and
// nothing in it gives a key: it only decides to which node a key service hands the key of a disk.
type APIDiskBindings struct {
	API *kubeapi.Client

	mu    sync.Mutex
	known map[string]string // bindings read or made before; a binding never changes
}

// NewAPIDiskBindings returns the shared record, kept through api.
func NewAPIDiskBindings(api *kubeapi.Client) *APIDiskBindings {
	return &APIDiskBindings{API: api, known: map[string]string{}}
}

func bindingPath(uuid string) string {
	return "/api/v1/namespaces/" + DiskBindingsNamespace + "/configmaps/" + url.PathEscape("disk-"+uuid)
}

// Bind implements [DiskBinder] with create-only semantics.
func (b *APIDiskBindings) Bind(ctx context.Context, uuid, node string) error {
	if err := checkBinding(uuid, node); err != nil {
		return err
	}
	owner, bound, err := b.Owner(ctx, uuid)
	if err != nil {
		return err
	}
	if !bound {
		obj := map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata":  map[string]any{"name": "disk-" + uuid, "namespace": DiskBindingsNamespace, "labels": kubeapi.Labels(Name)},
			"immutable": true,
			"data":      map[string]string{bindingKey: node},
		}
		err := b.API.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+DiskBindingsNamespace+"/configmaps", "", obj, nil)
		switch {
		case err == nil:
			b.remember(uuid, node)
			return nil
		case kubeapi.IsStatus(err, http.StatusConflict):
			// Another key service bound it first: its binding holds.
			if owner, bound, err = b.Owner(ctx, uuid); err != nil {
				return err
			}
			if !bound {
				return fmt.Errorf("disk %s: the API server says it is bound, but has no binding to read; try again", uuid)
			}
		default:
			return fmt.Errorf("recording the binding of disk %s to node %q: %w", uuid, node, err)
		}
	}
	if owner != node {
		return fmt.Errorf("disk %s asked for by node %q: %w (%q)", uuid, node, ErrDiskBound, owner)
	}
	return nil
}

// Owner implements [DiskBinder]: it reads the binding from the API server (once; a binding never changes).
func (b *APIDiskBindings) Owner(ctx context.Context, uuid string) (string, bool, error) {
	if !diskUUID.MatchString(uuid) {
		return "", false, fmt.Errorf("disk UUID %.60q is not a lower-case RFC 4122 UUID", uuid)
	}
	b.mu.Lock()
	node, ok := b.known[uuid]
	b.mu.Unlock()
	if ok {
		return node, true, nil
	}
	var obj struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	err := b.API.Do(ctx, http.MethodGet, bindingPath(uuid), "", nil, &obj)
	if kubeapi.IsStatus(err, http.StatusNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading the binding of disk %s: %w", uuid, err)
	}
	node, err = parseBinding(uuid, obj.Metadata.Name, obj.Data)
	if err != nil {
		return "", false, err
	}
	b.remember(uuid, node)
	return node, true, nil
}

// parseBinding checks a binding object read from the API: its name, exactly one key, a node name. One that
// is not what a key service writes is an error (the disk's key is then refused), never taken for no binding.
func parseBinding(uuid, name string, data map[string]string) (string, error) {
	node, ok := data[bindingKey]
	if name != "disk-"+uuid || len(data) != 1 || !ok || !nodeName.MatchString(node) {
		return "", fmt.Errorf("the binding of disk %s in namespace %s is not what a key service writes (name %.80q, %d keys); "+
			"key services refuse the disk's key until an administrator restores it", uuid, DiskBindingsNamespace, name, len(data))
	}
	return node, nil
}

func (b *APIDiskBindings) remember(uuid, node string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.known[uuid] = node
}

// maxDiskBindings bounds the legacy record (and the file it was kept in).
const maxDiskBindings = 100000

// maxDiskBindingsFile bounds the legacy file: maxDiskBindings entries of a UUID and a node name.
const maxDiskBindingsFile = maxDiskBindings * (36 + 253 + 8)

// diskBindingsJSON is the legacy file's form.
type diskBindingsJSON struct {
	Version int               `json:"version"`
	Disks   map[string]string `json:"disks"`
}

const diskBindingsVersion = 1

// ParseDiskBindings parses the legacy record's file strictly: known fields only, canonical disk UUIDs, valid
// node names.
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
		if err := checkBinding(uuid, node); err != nil {
			return nil, err
		}
		out[uuid] = node
	}
	return out, nil
}

// MigrateDiskBindingsFile moves the bindings of a legacy record file (the first control-plane node's, from
// before the shared record) into b, and renames the file to path+".migrated" once every binding is in b. A
// missing file is nothing to migrate. A binding of the file that b holds for another node is an error: two
// records disagree on whose disk it is, and the key service does not start until an administrator has
// decided (the message names both).
func MigrateDiskBindingsFile(ctx context.Context, path string, b DiskBinder, log *slog.Logger) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the legacy disk bindings: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxDiskBindingsFile+1))
	f.Close()
	if err != nil {
		return fmt.Errorf("reading the legacy disk bindings: %w", err)
	}
	disks, err := ParseDiskBindings(raw)
	if err != nil {
		return fmt.Errorf("the legacy disk bindings in %s: %w; the file is kept on the node's encrypted state disk and was written by the key service only, so restore it from a backup rather than delete it", path, err)
	}
	for uuid, node := range disks {
		if err := b.Bind(ctx, uuid, node); err != nil {
			return fmt.Errorf("moving the binding of disk %s to node %q from %s into the shared record: %w", uuid, node, path, err)
		}
	}
	if err := os.Rename(path, path+".migrated"); err != nil {
		return fmt.Errorf("marking %s migrated: %w", path, err)
	}
	log.Info("disk bindings moved into the shared record", "from", path, "bindings", len(disks), "namespace", DiskBindingsNamespace)
	return nil
}
