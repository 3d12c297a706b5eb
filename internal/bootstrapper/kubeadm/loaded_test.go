package kubeadm

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/imagearchive"
	"github.com/constellation-dev/constellation/internal/imagearchive/archivetest"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

// nodeImageArchives writes archives as the node image holds them and returns the directory.
func writeNodeImageArchives(t *testing.T, refs ...string) string {
	t.Helper()
	dir := t.TempDir()
	for i, ref := range refs {
		ci := nodeimage.ContainerImage{Ref: ref, Files: []nodeimage.File{{Path: "/bin/x", Data: []byte(ref), Mode: 0o755}}}
		if _, err := ci.WriteArchive(filepath.Join(dir, string(rune('a'+i))+".tar")); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// hostOCIArchive writes an OCI layout archive of an image named by annotations, as a host could.
func hostOCIArchive(t *testing.T, path string, annotations map[string]string) {
	t.Helper()
	img, err := nodeimage.ContainerImage{Ref: "example.com/x:y", Files: []nodeimage.File{{Path: "/evil", Data: []byte("host"), Mode: 0o755}}}.Image()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, archivetest.OCI(t, img, annotations), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The host puts archives into the loaded images directory that name images of the measured node image (the
// sandbox image, the API server), in both archive formats and spelled differently: the node refuses each
// before containerd sees it, and would import an archive of other names.
func TestLoadedArchiveClaimingNodeImageRefused(t *testing.T) {
	own := writeNodeImageArchives(t, "registry.k8s.io/pause:3.10.2", "registry.k8s.io/kube-apiserver:v1.37.2", "ghcr.io/constellation-dev/join-service:v0")
	d := &Driver{ImagesDir: own}
	archives, err := d.nodeImageArchives()
	if err != nil {
		t.Fatal(err)
	}
	protected, err := archiveNames(archives)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(protected)
	if !slices.Equal(protected, []string{"ghcr.io/constellation-dev/join-service:v0", "registry.k8s.io/kube-apiserver:v1.37.2", "registry.k8s.io/pause:3.10.2"}) {
		t.Fatalf("the node image's names: %v", protected)
	}
	loadScratchDir = t.TempDir()
	host := t.TempDir()
	attacks := map[string]func(path string){
		"docker archive tagged as the sandbox image": func(path string) {
			if _, err := (nodeimage.ContainerImage{Ref: "registry.k8s.io/pause:3.10.2", Files: []nodeimage.File{{Path: "/evil", Data: []byte("host")}}}).WriteArchive(path); err != nil {
				t.Fatal(err)
			}
		},
		"docker archive with the join service's name and another": func(path string) {
			writeDockerArchive(t, path, `[{"Config":"c","RepoTags":["example.com/app:v1","ghcr.io/constellation-dev/join-service:v0"]}]`)
		},
		"OCI archive with the API server's containerd name": func(path string) {
			hostOCIArchive(t, path, map[string]string{"io.containerd.image.name": "registry.k8s.io/kube-apiserver:v1.37.2"})
		},
		"OCI archive with the sandbox image as reference name": func(path string) {
			hostOCIArchive(t, path, map[string]string{"org.opencontainers.image.ref.name": "registry.k8s.io/pause:3.10.2"})
		},
	}
	for name, write := range attacks {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(host, strings.ReplaceAll(name, " ", "-")+".tar")
			write(path)
			images, err := d.importLoadedArchive(context.Background(), path, protected)
			if err == nil || !strings.Contains(err.Error(), "only the node image provides") {
				t.Fatalf("imported %v (%v)", images, err)
			}
		})
	}
	// The node's copy is gone, whatever the decision.
	if left, _ := os.ReadDir(loadScratchDir); len(left) != 0 {
		t.Fatalf("copies left: %v", left)
	}
}

func writeDockerArchive(t *testing.T, path, manifest string) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(manifest)), Typeflag: tar.TypeReg})
	tw.Write([]byte(manifest))
	tw.Close()
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadDecision(t *testing.T) {
	protected := []string{"registry.k8s.io/pause:3.10.2"}
	for _, tc := range []struct {
		x    imagearchive.Index
		want string // "" to import
	}{
		{imagearchive.Index{Images: []imagearchive.Image{{Name: "example.com/app:v1"}}}, ""},
		{imagearchive.Index{Images: []imagearchive.Image{{Name: "example.com/app:v1"}, {Name: "registry.k8s.io/pause:3.10.2"}}}, "only the node image provides"},
		{imagearchive.Index{Images: []imagearchive.Image{{Name: "example.com/app:v1"}, {Tag: "v2", Digest: "sha256:ab"}}}, "without its repository"},
		{imagearchive.Index{Images: []imagearchive.Image{{Digest: "sha256:ab"}}}, "no name"},
		{imagearchive.Index{}, "no image"},
	} {
		err := loadDecision(&tc.x, protected)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.x.Images, err, tc.want)
		}
	}
}

func TestChangedImages(t *testing.T) {
	before := map[string]string{"a": "sha256:1", "b": "sha256:2"}
	if got := changedImages(before, map[string]string{"a": "sha256:1", "b": "sha256:2", "c": "sha256:3"}); len(got) != 0 {
		t.Fatalf("changed: %v", got)
	}
	if got := changedImages(before, map[string]string{"a": "sha256:9"}); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("changed: %v", got)
	}
}

func TestLoadOrder(t *testing.T) {
	dir := t.TempDir()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, name := range []string{"c.tar", "a.tar", "b.tar", "d.txt"} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, nil, 0o644)
		os.Chtimes(p, base, base.Add(time.Duration(i)*time.Second))
	}
	os.Mkdir(filepath.Join(dir, "e.tar"), 0o755)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := loadOrder(entries); !slices.Equal(got, []string{"c.tar", "a.tar", "b.tar"}) {
		t.Fatalf("order %v", got)
	}
}

// Without the directory (every provider but mini), nothing happens.
func TestImportLoadedWithoutDirectory(t *testing.T) {
	d := &Driver{LoadedImagesDir: filepath.Join(t.TempDir(), "none")}
	if err := d.importLoaded(context.Background()); err != nil {
		t.Fatal(err)
	}
}
