package imagearchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/constellation-dev/constellation/internal/imagearchive/archivetest"
)

func testImage(t testing.TB) v1.Image {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// dockerArchive writes images as a docker archive, as `docker save` or go-containerregistry's tarball do.
func dockerArchive(t testing.TB, refs map[string]v1.Image) []byte {
	t.Helper()
	m := map[name.Reference]v1.Image{}
	for r, img := range refs {
		tag, err := name.NewTag(r)
		if err != nil {
			t.Fatal(err)
		}
		m[tag] = img
	}
	var b bytes.Buffer
	if err := tarball.MultiRefWrite(m, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// tarOf writes a tar of the given files in order.
func tarOf(t testing.TB, files ...[2]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f[0], Mode: 0o644, Size: int64(len(f[1])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f[1]))
	}
	tw.Close()
	return b.Bytes()
}

// read reads an archive both from a file-like reader (which the tar reader seeks in) and from a stream, and
// fails the test unless both agree.
func read(t testing.TB, data []byte) (*Index, error) {
	t.Helper()
	x, err := Read(bytes.NewReader(data))
	y, err2 := Read(struct{ io.Reader }{bytes.NewReader(data)})
	if (err == nil) != (err2 == nil) || !reflect.DeepEqual(x, y) {
		t.Fatalf("reading as a file: %+v, %v; as a stream: %+v, %v", x, err, y, err2)
	}
	return x, err
}

func TestReadDockerArchive(t *testing.T) {
	img := testImage(t)
	x, err := read(t, (dockerArchive(t, map[string]v1.Image{"example.com/app:v1": img, "busybox": img})))
	if err != nil {
		t.Fatal(err)
	}
	names := x.Names()
	slices.Sort(names)
	if x.Format != FormatDocker || !slices.Equal(names, []string{"docker.io/library/busybox:latest", "example.com/app:v1"}) {
		t.Fatalf("got %s %v", x.Format, names)
	}
}

func TestReadOCIArchive(t *testing.T) {
	img := testImage(t)
	digest, _ := img.Digest()
	for _, tc := range []struct {
		annotations map[string]string
		name, tag   string
	}{
		{map[string]string{"org.opencontainers.image.ref.name": "example.com/app:v1"}, "example.com/app:v1", ""},
		{map[string]string{"io.containerd.image.name": "example.com/app:v2", "org.opencontainers.image.ref.name": "v2"}, "example.com/app:v2", ""},
		{map[string]string{"org.opencontainers.image.ref.name": "v1"}, "", "v1"},
		// containerd ignores a containerd name that is no full reference, and then the reference name too.
		{map[string]string{"io.containerd.image.name": "app", "org.opencontainers.image.ref.name": "example.com/app:v3"}, "", ""},
		{nil, "", ""},
	} {
		x, err := read(t, (archivetest.OCI(t, img, tc.annotations)))
		if err != nil {
			t.Fatal(err)
		}
		if x.Format != FormatOCI || len(x.Images) != 1 || x.Images[0].Name != tc.name || x.Images[0].Tag != tc.tag || x.Images[0].Digest != digest.String() {
			t.Errorf("%v: got %s %+v", tc.annotations, x.Format, x.Images)
		}
	}
}

// Docker 25 and later write both an OCI layout and manifest.json; containerd reads the OCI layout.
func TestReadBoth(t *testing.T) {
	x, err := read(t, (tarOf(t,
		[2]string{"manifest.json", `[{"Config":"c","RepoTags":["example.com/docker:v1"],"Layers":[]}]`},
		[2]string{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`},
		[2]string{"index.json", `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1,"annotations":{"io.containerd.image.name":"example.com/oci:v1"}}]}`},
	)))
	if err != nil || !slices.Equal(x.Names(), []string{"example.com/oci:v1"}) {
		t.Fatalf("got %v, %v", x, err)
	}
	// An oci-layout without a version leaves it a docker archive, as for containerd.
	x, err = read(t, (tarOf(t,
		[2]string{"oci-layout", `{}`},
		[2]string{"manifest.json", `[{"Config":"c","RepoTags":["example.com/docker:v1"],"Layers":[]}]`},
	)))
	if err != nil || x.Format != FormatDocker || !slices.Equal(x.Names(), []string{"example.com/docker:v1"}) {
		t.Fatalf("got %v, %v", x, err)
	}
}

func TestReadRefuses(t *testing.T) {
	img := testImage(t)
	docker := dockerArchive(t, map[string]v1.Image{"example.com/app:v1": img})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(docker)
	zw.Close()
	for name, tc := range map[string]struct {
		archive []byte
		want    string
	}{
		"truncated":      {docker[:len(docker)/2+100], "reading the archive"},
		"cut at a block": {docker[:len(docker)/2/512*512], ""}, // an entry missing, or cut short
		"not a tar":      {[]byte("this is not an archive at all, just text that is long enough for a tar header? no." + strings.Repeat(" ", 600)), "tar"},
		"empty":          {nil, "not a tar archive"},
		"gzip":           {gz.Bytes(), "compressed (gzip)"},
		"no images":      {tarOf(t, [2]string{"hello.txt", "hi"}), "neither a docker archive"},
		"duplicate":      {tarOf(t, [2]string{"manifest.json", `[]`}, [2]string{"./manifest.json", `[{"RepoTags":["example.com/pause:1"]}]`}), "more than once"},
		"bad tag":        {tarOf(t, [2]string{"manifest.json", `[{"Config":"c","RepoTags":["Not/A:Ref:!"]}]`}), "image reference"},
		"bad json":       {tarOf(t, [2]string{"manifest.json", `{"Config"`}), "manifest.json"},
		"oci no idx":     {tarOf(t, [2]string{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}), "without index.json"},
		"oci v2":         {tarOf(t, [2]string{"oci-layout", `{"imageLayoutVersion":"2.0.0"}`}, [2]string{"index.json", `{}`}), "OCI layout version"},
	} {
		t.Run(name, func(t *testing.T) {
			x, err := read(t, (tc.archive))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %+v, error %v; want an error with %q", x, err, tc.want)
			}
		})
	}
}

func TestClaims(t *testing.T) {
	img := testImage(t)
	protected := []string{"registry.k8s.io/pause:3.10.2", "docker.io/library/busybox:latest"}
	for _, tc := range []struct {
		archive []byte
		want    []string
	}{
		{dockerArchive(t, map[string]v1.Image{"example.com/app:v1": img}), nil},
		{dockerArchive(t, map[string]v1.Image{"registry.k8s.io/pause:3.10.2": img}), []string{"registry.k8s.io/pause:3.10.2"}},
		{dockerArchive(t, map[string]v1.Image{"busybox": img}), []string{"docker.io/library/busybox:latest"}},
		{archivetest.OCI(t, img, map[string]string{"org.opencontainers.image.ref.name": "registry.k8s.io/pause:3.10.2"}), []string{"registry.k8s.io/pause:3.10.2"}},
		{archivetest.OCI(t, img, map[string]string{"io.containerd.image.name": "busybox:latest"}), []string{"busybox:latest"}},
		{archivetest.OCI(t, img, map[string]string{"org.opencontainers.image.ref.name": "3.10.2"}), nil},
	} {
		x, err := read(t, (tc.archive))
		if err != nil {
			t.Fatal(err)
		}
		if got := x.Claims(protected); !slices.Equal(got, tc.want) {
			t.Errorf("%v: claims %v, want %v", x.Names(), got, tc.want)
		}
	}
}

func TestParseImageList(t *testing.T) {
	out := `REF                               TYPE                                                 DIGEST                                                                  SIZE      PLATFORMS   LABELS
registry.k8s.io/pause:3.10.2      application/vnd.docker.distribution.manifest.v2+json sha256:` + strings.Repeat("1", 64) + ` 345.0 KiB linux/amd64 io.cri-containerd.image=managed
example.com/app:v1                application/vnd.oci.image.manifest.v1+json           sha256:` + strings.Repeat("2", 64) + ` 1.0 MiB   linux/amd64 -
`
	refs, err := ParseImageList([]byte(out))
	if err != nil || len(refs) != 2 || refs["registry.k8s.io/pause:3.10.2"] != "sha256:"+strings.Repeat("1", 64) || refs["example.com/app:v1"] != "sha256:"+strings.Repeat("2", 64) {
		t.Fatalf("got %v, %v", refs, err)
	}
	// A second line for a reference (a name with a line break can forge one) is an error.
	forged := out + "registry.k8s.io/pause:3.10.2 x sha256:" + strings.Repeat("3", 64) + "\n"
	if _, err := ParseImageList([]byte(forged)); err == nil {
		t.Fatal("a reference listed twice was accepted")
	}
	if _, err := ParseImageList([]byte("garbage")); err == nil {
		t.Fatal("output without a header was accepted")
	}
}

func FuzzRead(f *testing.F) {
	img := testImage(f)
	f.Add(dockerArchive(f, map[string]v1.Image{"example.com/app:v1": img}))
	f.Add(archivetest.OCI(f, img, map[string]string{"org.opencontainers.image.ref.name": "example.com/app:v1"}))
	f.Add(tarOf(f, [2]string{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}, [2]string{"index.json", `{"manifests":[{"annotations":{"io.containerd.image.name":"a/b:c"}}]}`}))
	f.Add(tarOf(f, [2]string{"manifest.json", `[{"Config":"c","RepoTags":["a:b"]}]`}))
	seeds, _ := filepath.Glob("testdata/*.tar")
	for _, s := range seeds {
		if raw, err := os.ReadFile(s); err == nil {
			f.Add(raw)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := read(t, data)
		if err != nil {
			return
		}
		if x.Format != FormatDocker && x.Format != FormatOCI {
			t.Fatalf("format %q", x.Format)
		}
		if len(x.Images) > MaxImages {
			t.Fatalf("%d images", len(x.Images))
		}
		x.Claims([]string{"registry.k8s.io/pause:3.10.2"})
	})
}
