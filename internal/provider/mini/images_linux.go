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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/imagearchive"
)

// Loaded images: container image archives the user loads into the running cluster (`constellation mini
// load`), as `kind load image-archive` does. The provider keeps each in its directory, imports it into every
// running node's containerd, and shows the directory read-only to every node it boots, whose bootstrapper
// imports the archives there (a node that joins or reboots later gets them too).

// NodeLoadedImages is where a node finds the loaded image archives (the bootstrapper's LoadedImagesDir).
const NodeLoadedImages = "/run/constellation/images"

// MaxArchiveSize bounds a loaded archive.
const MaxArchiveSize = 4 << 30

// LoadedImagesDir is the directory of loaded image archives in a provider directory.
func LoadedImagesDir(dir string) string { return filepath.Join(dir, "images") }

// StoredArchive is a loaded archive in the provider directory.
type StoredArchive struct {
	Source string   `json:"source"` // the file the user loaded
	Path   string   `json:"path"`   // <sha256 of the file>.tar in the loaded images directory
	Names  []string `json:"names"`  // the names of its images
	Stored bool     `json:"stored"` // false: the same file was loaded before
}

// LoadedImage is an image a node holds after a load.
type LoadedImage struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
}

// NodeLoad is what a load did on one node.
type NodeLoad struct {
	Node   string        `json:"node"`
	Images []LoadedImage `json:"images,omitempty"`
	// Pending: the node's container runtime is not running yet (the node boots, or waits for recovery); it
	// imports the archives when it starts.
	Pending bool   `json:"pending,omitempty"`
	Error   string `json:"error,omitempty"`
}

// LoadResult is the answer to a load.
type LoadResult struct {
	Archives []StoredArchive `json:"archives"`
	Nodes    []NodeLoad      `json:"nodes"`
}

// ProtectedImages returns the images of the node image at image (from its manifest, node-image.json beside
// it): a loaded archive may not name one of them.
func ProtectedImages(image string) ([]string, error) {
	path := filepath.Join(filepath.Dir(image), "node-image.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the node image's manifest (the images it holds): %w", err)
	}
	var m struct {
		Images map[string]string `json:"images"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(m.Images) == 0 {
		return nil, fmt.Errorf("%s lists no container images", path)
	}
	refs := make([]string, 0, len(m.Images))
	for r := range m.Images {
		refs = append(refs, r)
	}
	return refs, nil
}

// CheckArchive reads the archive at path and checks that it can be loaded next to a node image holding
// protected: a plain file of at most MaxArchiveSize bytes, a docker or OCI layout archive whose every image has
// a full name, none of protected.
func CheckArchive(path string, protected []string) (*imagearchive.Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return checkArchive(f, protected)
}

func checkArchive(f *os.File, protected []string) (*imagearchive.Index, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if info.Size() > MaxArchiveSize {
		return nil, fmt.Errorf("%d bytes, more than a loaded archive may have (%d)", info.Size(), int64(MaxArchiveSize))
	}
	x, err := imagearchive.Read(f)
	if err != nil {
		return nil, fmt.Errorf("not a container image archive as `docker save` or `crane pull --format=oci` write them: %w", err)
	}
	if err := x.Loadable(protected); err != nil {
		return nil, err
	}
	return x, nil
}

// stageArchive copies the archive at src into dir under a temporary name and checks the copy (the file the
// user named may change meanwhile; the copy is what nodes import). commit moves it to its final name,
// <sha256 of the file>.tar, atomically; abort removes it.
func stageArchive(dir, src string, protected []string) (a StoredArchive, commit func() (stored bool, err error), abort func(), err error) {
	in, err := os.Open(src)
	if err != nil {
		return a, nil, nil, err
	}
	defer in.Close()
	if info, err := in.Stat(); err != nil || !info.Mode().IsRegular() {
		return a, nil, nil, fmt.Errorf("not a regular file (%v)", err)
	}
	tmp, err := os.CreateTemp(dir, ".incoming-*.tar")
	if err != nil {
		return a, nil, nil, err
	}
	abort = func() { tmp.Close(); os.Remove(tmp.Name()) }
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(in, MaxArchiveSize+1)); err != nil {
		abort()
		return a, nil, nil, fmt.Errorf("copying: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		abort()
		return a, nil, nil, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		abort()
		return a, nil, nil, err
	}
	x, err := checkArchive(tmp, protected)
	if err != nil {
		abort()
		return a, nil, nil, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		abort()
		return a, nil, nil, err
	}
	a = StoredArchive{Source: src, Path: filepath.Join(dir, hex.EncodeToString(h.Sum(nil))+".tar"), Names: x.Names()}
	final := a.Path
	commit = func() (bool, error) {
		defer abort() // the temporary file, if it is still there
		now := time.Now()
		if _, err := os.Stat(final); err == nil {
			// Loaded before: stored once. Its time says it was loaded last, so that a node imports it after
			// archives loaded in between (the last load of a name wins).
			return false, os.Chtimes(final, now, now)
		}
		if err := os.Rename(tmp.Name(), final); err != nil {
			return false, err
		}
		return true, syncDir(dir)
	}
	return a, commit, abort, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// storeArchives stages every archive and commits them only if all are good: a load that fails changes
// nothing.
func storeArchives(dir string, paths []string, protected []string) ([]StoredArchive, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var staged []StoredArchive
	var commits []func() (bool, error)
	var aborts []func()
	defer func() {
		for _, a := range aborts {
			a()
		}
	}()
	for _, p := range paths {
		a, commit, abort, err := stageArchive(dir, p, protected)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		staged, commits, aborts = append(staged, a), append(commits, commit), append(aborts, abort)
	}
	for i, c := range commits {
		stored, err := c()
		if err != nil {
			return nil, fmt.Errorf("storing %s: %w", paths[i], err)
		}
		staged[i].Stored = stored
	}
	return staged, nil
}

// Load stores archives (paths on this machine) in the provider directory and imports them into every running
// node. A node whose container runtime is not up yet imports them when it starts, as does every node booted
// later.
func (p *Provider) Load(ctx context.Context, paths []string) (LoadResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state.Phase != PhaseRunning {
		return LoadResult{}, fmt.Errorf("the cluster is %s, not running", p.state.Phase)
	}
	if len(paths) == 0 {
		return LoadResult{}, errors.New("no archives to load")
	}
	protected, err := ProtectedImages(p.spec.Image)
	if err != nil {
		return LoadResult{}, err
	}
	stored, err := storeArchives(LoadedImagesDir(p.Dir), paths, protected)
	if err != nil {
		return LoadResult{}, err
	}
	res := LoadResult{Archives: stored}
	for _, nd := range p.nodes {
		res.Nodes = append(res.Nodes, p.loadInto(ctx, nd, stored))
	}
	p.Log.Info("images loaded", "archives", len(stored))
	return res, nil
}

// loadInto imports archives into a running node's containerd, in the node's mount namespace with the node's
// own ctr.
func (p *Provider) loadInto(ctx context.Context, nd *node, archives []StoredArchive) NodeLoad {
	res := NodeLoad{Node: nd.name}
	if nd.sb == nil || nd.sb.Exited() != nil {
		res.Error = "not running"
		return res
	}
	pid := strconv.Itoa(nd.sb.PID)
	// The provider puts an archive into the directory before it looks at the node's runtime, and a node lists
	// the directory only after its runtime has started: a node is either here or finds the archive itself.
	if _, err := os.Stat(filepath.Join("/proc", pid, "root", strings.TrimPrefix(nodeContainerdSocket, "/"))); err != nil {
		res.Pending = true
		return res
	}
	ctr := func(stdin io.Reader, args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", pid, "-m", "--", "ctr", "-a", nodeContainerdSocket, "-n", "k8s.io"}, args...)...)
		cmd.Stdin = stdin
		// The output is the standard output only: ctr writes warnings (cgroup v1 is deprecated) to its
		// standard error, which an error shows.
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	for _, a := range archives {
		f, err := os.Open(a.Path)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		_, err = ctr(f, "images", "import", "-")
		f.Close()
		if err != nil {
			res.Error = fmt.Sprintf("importing %s: %v", filepath.Base(a.Source), err)
			return res
		}
	}
	out, err := ctr(nil, "images", "ls")
	if err != nil {
		res.Error = fmt.Sprintf("listing the images: %v", err)
		return res
	}
	digests, err := imagearchive.ParseImageList(out)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	for _, a := range archives {
		for _, n := range a.Names {
			if digests[n] == "" {
				res.Error = fmt.Sprintf("%s is not among the node's images after the import", n)
				return res
			}
			res.Images = append(res.Images, LoadedImage{Name: n, Digest: digests[n]})
		}
	}
	return res
}

// nodeContainerdSocket is containerd's socket on a node.
const nodeContainerdSocket = "/run/containerd/containerd.sock"

// serveLoad answers POST /v1/images {"archives": [paths]} with a LoadResult.
func (p *Provider) serveLoad(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Archives []string `json:"archives"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "request: "+err.Error(), http.StatusBadRequest)
		return
	}
	res, err := p.Load(r.Context(), req.Archives)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	json.NewEncoder(w).Encode(res)
}

// LoadImages asks the provider daemon of the cluster in dir to load image archives (absolute paths) into
// every node, and returns what it did on each.
func LoadImages(ctx context.Context, dir string, archives []string) (LoadResult, error) {
	for _, a := range archives {
		if !filepath.IsAbs(a) {
			return LoadResult{}, fmt.Errorf("%s: not an absolute path", a)
		}
	}
	body, err := json.Marshal(map[string][]string{"archives": archives})
	if err != nil {
		return LoadResult{}, err
	}
	var res LoadResult
	if err := control(ctx, dir, "/v1/images", body, &res); err != nil {
		return LoadResult{}, err
	}
	return res, nil
}

// prepareLoadedImages creates the loaded images directory, which every node sees.
func prepareLoadedImages(dir string) (string, error) {
	d := LoadedImagesDir(dir)
	if err := os.MkdirAll(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("creating the loaded images directory: %w", err)
	}
	return d, nil
}

// bindReadOnly mounts the host directory src read-only (and without devices, set-user-ID programs or
// executables) at dst.
func bindReadOnly(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	return unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
}
