package mini

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/imagearchive/archivetest"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

var protectedRefs = []string{"registry.k8s.io/pause:3.10.2", "registry.k8s.io/kube-apiserver:v1.37.2"}

func image(ref, content string) nodeimage.ContainerImage {
	return nodeimage.ContainerImage{Ref: ref, Files: []nodeimage.File{{Path: "/app", Data: []byte(content), Mode: 0o755}}}
}

func writeDocker(t *testing.T, dir, ref, content string) string {
	t.Helper()
	path := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if _, err := image(ref, content).WriteArchive(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeOCI writes an OCI layout archive (a tar of the layout directory, as a user makes one of `crane pull
// --format=oci`'s output).
func writeOCI(t *testing.T, dir, refName string) string {
	t.Helper()
	img, err := image("example.com/x:y", "oci").Image()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "oci-"+strings.NewReplacer("/", "_", ":", "_").Replace(refName)+".tar")
	if err := os.WriteFile(path, archivetest.OCI(t, img, map[string]string{"org.opencontainers.image.ref.name": refName}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckArchive(t *testing.T) {
	dir := t.TempDir()
	docker := writeDocker(t, dir, "example.com/app:v1", "app")
	raw, _ := os.ReadFile(docker)
	truncated := filepath.Join(dir, "truncated.tar")
	os.WriteFile(truncated, raw[:len(raw)/2+100], 0o644)
	text := filepath.Join(dir, "text.tar")
	os.WriteFile(text, []byte(strings.Repeat("not a tar archive\n", 100)), 0o644)
	for _, tc := range []struct {
		path, want string // want "": accepted
	}{
		{docker, ""},
		{writeOCI(t, dir, "example.com/app:v2"), ""},
		{writeOCI(t, dir, "v3"), "without its repository"},
		{truncated, "not a container image archive"},
		{text, "not a container image archive"},
		{dir, "not a regular file"},
		{filepath.Join(dir, "missing.tar"), "no such file"},
		{writeDocker(t, dir, "registry.k8s.io/pause:3.10.2", "evil"), "only the node image provides"},
		{writeOCI(t, dir, "registry.k8s.io/kube-apiserver:v1.37.2"), "only the node image provides"},
	} {
		_, err := CheckArchive(tc.path, protectedRefs)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", filepath.Base(tc.path), err, tc.want)
		}
	}
}

func TestStoreArchives(t *testing.T) {
	src := t.TempDir()
	store := filepath.Join(t.TempDir(), "images")
	a := writeDocker(t, src, "example.com/app:v1", "one")
	b := writeDocker(t, src, "example.com/other:v1", "two")
	got, err := storeArchives(store, []string{a, b}, protectedRefs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Stored || !got[1].Stored || !slices.Equal(got[0].Names, []string{"example.com/app:v1"}) {
		t.Fatalf("stored %+v", got)
	}
	for _, s := range got {
		if filepath.Dir(s.Path) != store || len(filepath.Base(s.Path)) != 64+len(".tar") {
			t.Fatalf("stored at %s", s.Path)
		}
	}
	// The same file, loaded again (under another name): stored once, its time renewed (it was loaded last).
	old := time.Now().Add(-time.Hour)
	os.Chtimes(got[0].Path, old, old)
	again := filepath.Join(src, "copy.tar")
	raw, _ := os.ReadFile(a)
	os.WriteFile(again, raw, 0o644)
	got2, err := storeArchives(store, []string{again}, protectedRefs)
	if err != nil {
		t.Fatal(err)
	}
	if got2[0].Stored || got2[0].Path != got[0].Path {
		t.Fatalf("loaded again: %+v, first %+v", got2, got)
	}
	if info, _ := os.Stat(got[0].Path); !info.ModTime().After(old) {
		t.Fatal("the time of an archive loaded again was not renewed")
	}
	// One bad archive among good ones: nothing is stored, no temporary file is left.
	c := writeDocker(t, src, "example.com/third:v1", "three")
	bad := writeDocker(t, src, "registry.k8s.io/pause:3.10.2", "evil")
	if _, err := storeArchives(store, []string{c, bad}, protectedRefs); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("a load with an archive claiming the sandbox image: %v", err)
	}
	entries, _ := os.ReadDir(store)
	if len(entries) != 2 {
		t.Fatalf("the loaded images directory after a failed load: %v", entries)
	}
}

func TestProtectedImages(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "node-image.json"), []byte(`{"images":{"registry.k8s.io/pause:3.10.2":"sha256:aa"}}`), 0o644)
	refs, err := ProtectedImages(filepath.Join(dir, "node-image.squashfs"))
	if err != nil || !slices.Equal(refs, []string{"registry.k8s.io/pause:3.10.2"}) {
		t.Fatalf("%v %v", refs, err)
	}
	if _, err := ProtectedImages(filepath.Join(t.TempDir(), "node-image.squashfs")); err == nil {
		t.Fatal("no manifest, yet protected images")
	}
}

// The node looks for the loaded images where the provider shows them.
func TestNodeLoadedImagesPath(t *testing.T) {
	if NodeLoadedImages != kubeadm.LoadedImagesDir {
		t.Fatalf("the provider shows loaded images at %s, the bootstrapper reads %s", NodeLoadedImages, kubeadm.LoadedImagesDir)
	}
}
