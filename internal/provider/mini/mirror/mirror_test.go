package mirror

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func start(t *testing.T, dir string) (push, pull *httptest.Server) {
	t.Helper()
	s, err := New(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	push, pull = httptest.NewServer(s.PushHandler()), httptest.NewServer(s.PullHandler())
	t.Cleanup(push.Close)
	t.Cleanup(pull.Close)
	return push, pull
}

func pushImage(t *testing.T, srv *httptest.Server, repoTag string) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return img
}

// get asks the registry as containerd asks a mirror: with ?ns=<registry>.
func get(t *testing.T, srv *httptest.Server, method, path string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// Images pushed from the host are served to containerd's mirror requests: localhost:5001/app:v1 as app (ns is the
// loopback registry), localhost:5001/docker.io/library/nginx:1.27 as docker.io's library/nginx. After a restart
// of the provider, everything pushed is still there.
func TestNamespacesAndRestart(t *testing.T) {
	dir := t.TempDir()
	push, pull := start(t, dir)
	app := pushImage(t, push, "app:v1")
	nginx := pushImage(t, push, "docker.io/library/nginx:1.27")
	appDigest, _ := app.Digest()
	nginxDigest, _ := nginx.Digest()
	check := func(pull *httptest.Server) {
		t.Helper()
		for path, want := range map[string]string{
			"/v2/app/manifests/v1?ns=localhost:5001":                         appDigest.String(),
			"/v2/app/manifests/" + appDigest.String() + "?ns=localhost:5001": appDigest.String(),
			"/v2/library/nginx/manifests/1.27?ns=docker.io":                  nginxDigest.String(),
			"/v2/docker.io/library/nginx/manifests/1.27":                     nginxDigest.String(),
		} {
			resp, body := get(t, pull, http.MethodGet, path)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want {
				t.Errorf("GET %s: %d %s %s, want %s", path, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), body, want)
			}
		}
		for _, path := range []string{
			"/v2/library/nginx/manifests/1.27",                        // no ns: not docker.io's
			"/v2/library/nginx/manifests/1.27?ns=ghcr.io",             // another registry's namespace
			"/v2/app/manifests/v1?ns=docker.io",                       // not pushed as docker.io/app
			"/v2/docker.io/library/nginx/manifests/1.27?ns=docker.io", // not docker.io/docker.io/...
		} {
			if resp, _ := get(t, pull, http.MethodGet, path); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
			}
		}
		layers, _ := nginx.Layers()
		ld, _ := layers[0].Digest()
		if resp, _ := get(t, pull, http.MethodGet, "/v2/library/nginx/blobs/"+ld.String()+"?ns=docker.io"); resp.StatusCode != http.StatusOK {
			t.Errorf("layer: %d", resp.StatusCode)
		}
	}
	check(pull)
	// The provider restarts: a new server on the same directory.
	push.Close()
	pull.Close()
	_, pull = start(t, dir)
	check(pull)
	// A whole pull, through the client library that verifies every digest.
	ref, _ := name.ParseReference(strings.TrimPrefix(pull.URL, "http://")+"/docker.io/library/nginx:1.27", name.Insecure)
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := got.Digest(); d != nginxDigest {
		t.Fatalf("pulled %s, want %s", d, nginxDigest)
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Fatalf("a layer after the restart: %v", err)
		}
	}
}

// An index (a multi-platform image) is restored after its manifests.
func TestIndexSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	push, _ := start(t, dir)
	img, _ := random.Image(256, 1)
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img})
	ref, _ := name.ParseReference(strings.TrimPrefix(push.URL, "http://")+"/multi:v1", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	push.Close()
	_, pull := start(t, dir)
	if resp, body := get(t, pull, http.MethodHead, "/v2/multi/manifests/v1?ns=localhost:5001"); resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("index after restart: %d %s %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), body)
	}
}

// The node network's address serves pulls only; a namespace that is no registry name is refused.
func TestPullHandlerIsReadOnly(t *testing.T) {
	_, pull := start(t, t.TempDir())
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		if resp, _ := get(t, pull, m, "/v2/app/blobs/uploads/"); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: %d, want 405", m, resp.StatusCode)
		}
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(pull.URL, "http://")+"/app:v1", name.Insecure)
	img, _ := random.Image(16, 1)
	if err := remote.Write(ref, img); err == nil {
		t.Fatal("a push to the node network's address succeeded")
	}
	for _, ns := range []string{"..", "docker.io%2F..%2F..", "Docker.io", "a b"} {
		if resp, _ := get(t, pull, http.MethodGet, "/v2/app/manifests/v1?ns="+ns); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("ns=%s: %d, want 400", ns, resp.StatusCode)
		}
	}
}

// The registry serves a blob as its storage holds it, without checking it: the client checks every digest (here
// go-containerregistry's; on the nodes containerd, which the end-to-end test shows). A blob whose storage was
// altered reaches no client as the image's layer.
func TestAlteredBlobIsRefusedByTheClient(t *testing.T) {
	dir := t.TempDir()
	push, pull := start(t, dir)
	img := pushImage(t, push, "app:v1")
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	path := filepath.Join(dir, "blobs", "sha256", ld.Hex)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(pull.URL, "http://")+"/app:v1", name.Insecure)
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	gl, _ := got.Layers()
	rc, err := gl[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err == nil || !strings.Contains(err.Error(), ld.String()) {
		t.Fatalf("the altered layer was read without an error naming its digest: %v", err)
	}
}
