package mini

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
)

// The fleet: the cluster's upgrade controller asks the provider, through the metadata service and with the
// controller credential (package metadata checks it), to create a node from a node image and to delete one.
// The provider boots only node images the operator made known to it: the cluster's own, and those registered
// with 'constellation mini register-image'. It copies a registered image into its directory, names it by the
// digest of the bytes it copied (never by a digest someone claims), and checks that digest again before every
// node it creates from it.

// The provider is the fleet the metadata service serves.
var _ provider.Fleet = (*Provider)(nil)

// NodeImagesDir is where the provider keeps the registered node images, as <hex digest>.squashfs.
func NodeImagesDir(dir string) string { return filepath.Join(dir, "node-images") }

// MaxNodeImageSize bounds a registered node image.
const MaxNodeImageSize = 8 << 30

// loadImages knows the cluster's node image and those registered before (in NodeImagesDir). Their content is
// checked when a node is created from them.
func (p *Provider) loadImages() error {
	p.images = map[string]string{fmt.Sprintf("sha256:%x", p.digest): p.spec.Image}
	entries, err := os.ReadDir(NodeImagesDir(p.Dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the registered node images: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(NodeImagesDir(p.Dir), e.Name())
		if strings.HasPrefix(e.Name(), ".incoming-") {
			os.Remove(path) // a registration that did not finish
			continue
		}
		hexDigest, ok := strings.CutSuffix(e.Name(), ".squashfs")
		if digest := "sha256:" + hexDigest; ok && e.Type().IsRegular() && provider.CheckImageDigest(digest) == nil {
			p.images[digest] = path
		}
	}
	return nil
}

// RegisterImage makes the node image at src (an absolute path) known to the provider and returns its digest,
// "sha256:<hex>": the provider copies the image into its directory and computes the digest of the copy, which
// is what it boots.
func (p *Provider) RegisterImage(src string) (string, error) {
	if !filepath.IsAbs(src) {
		return "", fmt.Errorf("%s: not an absolute path", src)
	}
	dir := NodeImagesDir(p.Dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return "", err
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", src)
	}
	if info.Size() > MaxNodeImageSize {
		return "", fmt.Errorf("%s: %d bytes, more than a node image may have (%d)", src, info.Size(), int64(MaxNodeImageSize))
	}
	tmp, err := os.CreateTemp(dir, ".incoming-*")
	if err != nil {
		return "", err
	}
	defer func() { tmp.Close(); os.Remove(tmp.Name()) }() // once renamed, the name is gone and this removes nothing
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(in, MaxNodeImageSize+1))
	if err != nil {
		return "", fmt.Errorf("copying %s: %w", src, err)
	}
	if n > MaxNodeImageSize {
		return "", fmt.Errorf("%s grew beyond %d bytes while it was copied", src, int64(MaxNodeImageSize))
	}
	magic := make([]byte, 4)
	if _, err := tmp.ReadAt(magic, 0); err != nil || string(magic) != "hsqs" {
		return "", fmt.Errorf("%s is not a node image (a squashfs file system)", src)
	}
	if err := tmp.Chmod(0o400); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	final := filepath.Join(dir, sum+".squashfs")
	// Registered again: the new copy replaces the old one (a node that runs from it keeps what it mounted).
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", err
	}
	if err := syncDir(dir); err != nil {
		return "", err
	}
	digest := "sha256:" + sum
	p.mu.Lock()
	if p.images == nil {
		p.images = map[string]string{}
	}
	p.images[digest] = final
	p.mu.Unlock()
	p.Log.Info("node image registered", "image", digest, "source", src)
	return digest, nil
}

// CreateNode boots a new node of role from the node image imageDigest, which the operator registered (or the
// cluster's), once it has checked that the image's content still has that digest. The node joins by itself
// through the join service, which admits it only if its measurements match the cluster's.
func (p *Provider) CreateNode(ctx context.Context, role, imageDigest string) (string, error) {
	if err := provider.CheckRole(role); err != nil {
		return "", err
	}
	if err := provider.CheckImageDigest(imageDigest); err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state.Phase != PhaseRunning {
		return "", fmt.Errorf("the cluster is %s, not running", p.state.Phase)
	}
	path, ok := p.images[imageDigest]
	if !ok {
		return "", fmt.Errorf("node image %s is not registered with the provider; the operator registers a node image with 'constellation mini register-image FILE'", imageDigest)
	}
	digest, err := measuredboot.DigestFile(path)
	if err != nil {
		return "", fmt.Errorf("reading node image %s: %w", imageDigest, err)
	}
	// The node's TPM measures this digest: it must be the registered one, and the bytes the node boots.
	if got := fmt.Sprintf("sha256:%x", digest); got != imageDigest {
		p.Log.Error("a registered node image changed: refusing to boot it", "image", imageDigest, "path", path, "digest", got)
		return "", fmt.Errorf("node image %s changed since it was registered (%s now has digest %s): refusing to boot it; register the image again", imageDigest, path, got)
	}
	nd, err := p.bootNode(ctx, role, path, digest)
	if err != nil {
		return "", err
	}
	p.Log.Info("node created", "node", nd.name, "role", role, "image", imageDigest)
	return nd.name, nil
}

// DeleteNode powers the node off and removes it, as a cloud deletes an instance: its processes end, the
// metadata service no longer lists it, the other nodes no longer route its pods, and its directory (state
// disk, TPM) goes. The last running control-plane node cannot be deleted.
func (p *Provider) DeleteNode(_ context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state.Phase != PhaseRunning {
		return fmt.Errorf("the cluster is %s, not running", p.state.Phase)
	}
	i := slices.IndexFunc(p.nodes, func(n *node) bool { return n.name == name })
	if i < 0 {
		names := make([]string, len(p.nodes))
		for i, n := range p.nodes {
			names[i] = n.name
		}
		return fmt.Errorf("no node %q; nodes: %s", name, strings.Join(names, ", "))
	}
	nd := p.nodes[i]
	if nd.role == metadata.RoleControlPlane && !slices.ContainsFunc(p.nodes, func(n *node) bool {
		return n != nd && n.role == metadata.RoleControlPlane && !n.stopped
	}) {
		return fmt.Errorf("%s is the cluster's last running control-plane node: deleting it would leave the cluster without a control plane; create its replacement first", name)
	}
	p.Log.Info("deleting node", "node", name)
	if err := p.removeNode(nd); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	p.state.Progress = append(p.state.Progress, name+" deleted")
	return p.save()
}

// removeNode ends a node and forgets it: its processes, TPM, metadata record, the routes to its pods, its
// record in the state and its directory. p.mu is held.
func (p *Provider) removeNode(nd *node) error {
	var errs []error
	if nd.sb != nil {
		if err := nd.sb.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stopping it: %w", err))
		}
	}
	if nd.tpm != nil {
		if err := nd.tpm.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("stopping its TPM: %w", err))
		}
	}
	p.md.RemoveInstance(nd.addr.String())
	for _, other := range p.nodes {
		if other != nd && other.sb != nil && !other.stopped && other.sb.Exited() == nil {
			// The route is there unless the node booted after nd failed to: nothing to undo then.
			other.sb.IPInNode("route", "del", PodCIDR(nd.index).String())
		}
	}
	p.nodes = slices.DeleteFunc(p.nodes, func(n *node) bool { return n == nd })
	p.state.Nodes = slices.DeleteFunc(p.state.Nodes, func(n NodeState) bool { return n.Name == nd.name })
	if err := p.save(); err != nil {
		errs = append(errs, err)
	}
	if err := p.saveFleet(); err != nil {
		errs = append(errs, err)
	}
	if err := Remove(nd.dir); err != nil {
		errs = append(errs, fmt.Errorf("removing its state disk and TPM: %w", err))
	}
	return errors.Join(errs...)
}

// checkImage checks that the node image at path still has the digest want, which a node's TPM measures when
// it boots from it.
func checkImage(path string, want [32]byte) error {
	got, err := measuredboot.DigestFile(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("node image %s changed: its digest is now sha256:%x, the node was created from sha256:%x; refusing to boot it", path, got, want)
	}
	return nil
}

// serveRegisterImage answers POST /v1/node-images {"path": absolute path} with {"digest": "sha256:<hex>"}.
func (p *Provider) serveRegisterImage(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Path string `json:"path"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, "request: "+err.Error(), http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	phase := p.state.Phase
	p.mu.Unlock()
	if phase != PhaseRunning {
		http.Error(w, fmt.Sprintf("the cluster is %s, not running", phase), http.StatusConflict)
		return
	}
	digest, err := p.RegisterImage(req.Path)
	if err != nil {
		http.Error(w, "registering the node image: "+err.Error(), http.StatusConflict)
		return
	}
	json.NewEncoder(w).Encode(map[string]string{"digest": digest})
}

// RegisterNodeImage asks the provider daemon of the cluster in dir to register the node image at image (a
// path on this machine) and returns the digest the provider computed, "sha256:<hex>": the cluster's upgrade
// controller can then have nodes created from it.
func RegisterNodeImage(ctx context.Context, dir, image string) (string, error) {
	abs, err := filepath.Abs(image)
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(map[string]string{"path": abs})
	if err != nil {
		return "", err
	}
	var out struct{ Digest string }
	if err := control(ctx, dir, "/v1/node-images", body, &out); err != nil {
		return "", err
	}
	if err := provider.CheckImageDigest(out.Digest); err != nil {
		return "", fmt.Errorf("the provider's answer: %w", err)
	}
	return out.Digest, nil
}
