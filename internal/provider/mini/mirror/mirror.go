// Package mirror is the mini provider's container registry: an OCI distribution registry (go-containerregistry's
// pkg/registry) with its blobs and manifests on disk, so that what users pushed survives a restart of the
// provider (a recovered cluster finds its images again). Users push to it from this machine on loopback; the
// nodes' containerd pulls from it on the node network, as the mirror of the registries the cluster configuration
// names.
//
// containerd asks a mirror with ?ns=<registry> on every request: the mirror serves repository <registry>/<name>
// for it (a push of localhost:5001/docker.io/library/nginx:1.27 is what nodes pull as docker.io/library/nginx:1.27),
// except for a registry on loopback (localhost:<port>), whose images were pushed under their own name
// (localhost:5001/app:v1 is repository app).
//
// The mirror is the host's, and trusted for nothing but availability: containerd on the node verifies every
// blob and manifest it fetches against the digest it asked for. It is the host that says which manifest a tag
// names; integrity for a tag needs a pull by digest. This server does not re-hash blobs when it serves them:
// what is on its disk goes out as it is, and the nodes refuse what does not match.
package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// MaxManifestSize bounds a pushed manifest (registries commonly allow 4 MiB).
const MaxManifestSize = 4 << 20

// Server is the registry in a directory: blobs/sha256/<hex> and manifests/<entry>.json.
type Server struct {
	dir string
	log *slog.Logger
	reg http.Handler

	// mu orders manifest changes with their records on disk, so that the disk holds what memory holds.
	mu sync.Mutex
}

// entry is one manifest reference of a repository, as the registry keeps it: by tag or by digest.
type entry struct {
	Repository  string `json:"repository"`
	Reference   string `json:"reference"`
	ContentType string `json:"contentType"`
	Manifest    []byte `json:"manifest"`
}

// New opens the registry in dir, creating it, and loads the manifests pushed before.
func New(dir string, log *slog.Logger) (*Server, error) {
	for _, d := range []string{filepath.Join(dir, "blobs"), filepath.Join(dir, "manifests")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating the registry's storage: %w", err)
		}
	}
	s := &Server{dir: dir, log: log}
	s.reg = registry.New(
		registry.WithBlobHandler(&diskBlobs{dir: filepath.Join(dir, "blobs")}),
		registry.Logger(slog.NewLogLogger(log.Handler(), slog.LevelInfo)),
	)
	n, err := s.replay()
	if err != nil {
		return nil, err
	}
	log.Info("registry storage opened", "dir", dir, "manifestReferences", n)
	return s, nil
}

// PushHandler serves the whole registry API, pushes included: for this machine's loopback.
func (s *Server) PushHandler() http.Handler { return s.namespaced(http.HandlerFunc(s.serve)) }

// PullHandler serves reads only (GET and HEAD): for the node network, where nothing pushes.
func (s *Server) PullHandler() http.Handler {
	return s.namespaced(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "this address of the registry serves pulls only; push from the host's loopback port", http.StatusMethodNotAllowed)
			return
		}
		s.serve(w, r)
	}))
}

// namespaced maps a request a mirror client made for registry ns (?ns=docker.io) to that registry's repository
// in this one (/v2/docker.io/<name>/...). A loopback registry's images are pushed under their own names.
func (s *Server) namespaced(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ns := q.Get("ns")
		if ns == "" {
			next.ServeHTTP(w, r)
			return
		}
		if err := registrymirror.ValidateRegistry(ns); err != nil {
			http.Error(w, "ns: "+err.Error(), http.StatusBadRequest)
			return
		}
		r2 := r.Clone(r.Context())
		q.Del("ns")
		r2.URL.RawQuery = q.Encode()
		if rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"); ok && rest != "" && !loopbackRegistry(ns) {
			r2.URL.Path = "/v2/" + ns + "/" + rest
			r2.URL.RawPath = ""
		}
		next.ServeHTTP(w, r2)
	})
}

// loopbackRegistry reports whether a registry name is this machine's loopback (localhost:5001): images pushed
// to this registry from the host under that name.
func loopbackRegistry(ns string) bool {
	host, _, _ := strings.Cut(ns, ":")
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// serve passes a request to the registry; manifest changes are recorded on disk once the registry took them.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	repo, ref, isManifest := manifestPath(r.URL.Path)
	if !isManifest || (r.Method != http.MethodPut && r.Method != http.MethodDelete) {
		s.reg.ServeHTTP(w, r)
		return
	}
	var body []byte
	if r.Method == http.MethodPut {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, MaxManifestSize+1))
		if err != nil {
			http.Error(w, "reading the manifest: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(body) > MaxManifestSize {
			http.Error(w, fmt.Sprintf("manifest larger than %d bytes", MaxManifestSize), http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := &recorder{header: http.Header{}}
	s.reg.ServeHTTP(rec, r)
	if err := s.record(r.Method, repo, ref, r.Header.Get("Content-Type"), body, rec.status); err != nil {
		// The registry has it in memory; without its record it would be lost at the next restart. Undo.
		s.log.Error("recording a manifest change failed", "repository", repo, "reference", ref, "error", err)
		if r.Method == http.MethodPut {
			s.unput(repo, ref, body)
		}
		http.Error(w, "storing the manifest: "+err.Error(), http.StatusInternalServerError)
		return
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
	w.Write(rec.body.Bytes())
}

// record writes (PUT) or removes (DELETE) the records of a manifest change the registry accepted.
func (s *Server) record(method, repo, ref, contentType string, body []byte, status int) error {
	switch {
	case method == http.MethodPut && status == http.StatusCreated:
		digest := fmt.Sprintf("sha256:%x", sha256.Sum256(body))
		for _, r := range []string{digest, ref} {
			raw, err := json.Marshal(entry{Repository: repo, Reference: r, ContentType: contentType, Manifest: body})
			if err != nil {
				return err
			}
			if err := atomicfile.Write(s.entryPath(repo, r), raw, 0o600); err != nil {
				return err
			}
		}
		s.log.Info("manifest pushed", "repository", repo, "reference", ref, "digest", digest)
	case method == http.MethodDelete && status == http.StatusAccepted:
		if err := os.Remove(s.entryPath(repo, ref)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		s.log.Info("manifest deleted", "repository", repo, "reference", ref)
	}
	return nil
}

// unput takes back from the registry's memory a manifest whose record could not be written.
func (s *Server) unput(repo, ref string, body []byte) {
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(body))
	for _, r := range []string{ref, digest} {
		if _, err := os.Stat(s.entryPath(repo, r)); err == nil {
			continue // recorded before: keep
		}
		req, _ := http.NewRequest(http.MethodDelete, "/v2/"+repo+"/manifests/"+r, nil)
		s.reg.ServeHTTP(&recorder{header: http.Header{}}, req)
	}
}

// entryPath is the file of a repository's manifest reference: named by a hash, so that no repository or
// reference a client sends becomes a path.
func (s *Server) entryPath(repo, ref string) string {
	sum := sha256.Sum256([]byte(repo + "\x00" + ref))
	return filepath.Join(s.dir, "manifests", hex.EncodeToString(sum[:])+".json")
}

// replay loads the recorded manifests into the registry: images and other manifests first, then indexes (whose
// manifests the registry requires to be there), until nothing more loads. It returns how many loaded.
func (s *Server) replay() (int, error) {
	files, err := filepath.Glob(filepath.Join(s.dir, "manifests", "*.json"))
	if err != nil {
		return 0, err
	}
	var pending []entry
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil || e.Repository == "" || e.Reference == "" || s.entryPath(e.Repository, e.Reference) != f {
			s.log.Warn("ignoring a damaged manifest record", "file", f)
			continue
		}
		pending = append(pending, e)
	}
	// Indexes last.
	isIndex := func(e entry) bool { return types.MediaType(e.ContentType).IsIndex() }
	var loaded int
	for len(pending) > 0 {
		var next []entry
		progress := false
		for _, pass := range []bool{false, true} {
			for _, e := range pending {
				if isIndex(e) != pass {
					continue
				}
				req, err := http.NewRequest(http.MethodPut, "/v2/"+e.Repository+"/manifests/"+e.Reference, bytes.NewReader(e.Manifest))
				if err != nil {
					return loaded, err
				}
				req.Header.Set("Content-Type", e.ContentType)
				rec := &recorder{header: http.Header{}}
				s.reg.ServeHTTP(rec, req)
				if rec.status == http.StatusCreated {
					loaded++
					progress = true
				} else {
					next = append(next, e)
				}
			}
		}
		if !progress {
			for _, e := range next {
				s.log.Warn("a recorded manifest does not load", "repository", e.Repository, "reference", e.Reference)
			}
			break
		}
		pending = next
	}
	return loaded, nil
}

// manifestPath splits /v2/<repo>/manifests/<reference>.
func manifestPath(p string) (repo, ref string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndex(rest, "/manifests/")
	if i <= 0 {
		return "", "", false
	}
	repo, ref = rest[:i], rest[i+len("/manifests/"):]
	if ref == "" || strings.Contains(ref, "/") {
		return "", "", false
	}
	return repo, ref, true
}

// recorder keeps a response of the registry.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

// diskBlobs keeps blobs in dir/<algorithm>/<hex>. It checks a blob's digest when it is pushed (the registry
// verifies the stream); it does not when it serves it: the client checks.
type diskBlobs struct{ dir string }

func (d *diskBlobs) path(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return "", registry.ErrNotFound
	}
	return filepath.Join(d.dir, h.Algorithm, h.Hex), nil
}

func (d *diskBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	p, err := d.path(h)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, registry.ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (d *diskBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	p, err := d.path(h)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, registry.ErrNotFound
	}
	return f, err
}

func (d *diskBlobs) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	p, err := d.path(h)
	if err != nil {
		return fmt.Errorf("only sha256 digests are supported: %s", h)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, there is nothing to remove
	// The registry's reader fails at its end if the content does not match the digest.
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

func (d *diskBlobs) Delete(_ context.Context, _ string, h v1.Hash) error {
	p, err := d.path(h)
	if err != nil {
		return err
	}
	if err := os.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return registry.ErrNotFound
	} else if err != nil {
		return err
	}
	return nil
}
