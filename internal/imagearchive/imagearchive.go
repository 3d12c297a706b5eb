// Package imagearchive reads which images a container image archive holds and under which names a container
// runtime would store them: docker archives (`docker save`, go-containerregistry's tarball) and OCI image
// layout archives (a tar of `crane pull --format=oci`'s directory, go-containerregistry's layout, `docker save`
// of Docker 25 and later, which writes both).
//
// It reads an archive the way containerd 2's import does (the same tar entries, the same JSON decoding and the
// same rules for image names), so that a caller can decide before an import which image names the import would
// set. Whatever containerd could read differently from this package is refused instead: compressed archives,
// several entries of one name, metadata larger than containerd reads. Archives come from the host, which is
// not trusted: Read is a parser of untrusted bytes.
package imagearchive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Formats of an archive.
const (
	FormatDocker = "docker archive"
	FormatOCI    = "OCI image layout archive"
)

// Limits of what Read accepts.
const (
	// MaxMetadataSize bounds index.json, manifest.json and oci-layout: containerd reads at most this much of
	// manifest.json and oci-layout.
	MaxMetadataSize = 20 << 20
	// MaxImages bounds the images (names) of one archive.
	MaxImages = 1024
	// MaxEntries bounds the entries of one archive.
	MaxEntries = 1 << 20
)

// Annotations that name an image in an OCI index.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = ocispec.AnnotationRefName
)

// Image is one image of an archive.
type Image struct {
	// Name is the reference containerd stores the image under, e.g. docker.io/library/app:v1; empty if the
	// archive gives it none that containerd would use.
	Name string
	// Tag is, for an image of an OCI archive named only by a tag ("v1", no repository), that tag: containerd
	// would store it under a made-up name.
	Tag string
	// Digest is the image's manifest digest (OCI archives) or its configuration's file in the archive (docker
	// archives, whose manifest containerd writes at import).
	Digest string
}

// Index is what an archive holds.
type Index struct {
	Format string
	Images []Image
}

// Names returns the names containerd would store the archive's images under.
func (x *Index) Names() []string {
	var out []string
	for _, img := range x.Images {
		if img.Name != "" {
			out = append(out, img.Name)
		}
	}
	return out
}

// Read reads an archive from r to its end and returns its images; from an io.ReadSeeker (a file) it reads
// only the entries it needs and the tar headers. It fails on anything containerd's import
// would refuse or could read differently.
func Read(r io.Reader) (*Index, error) {
	var tr *tar.Reader
	if rs, ok := r.(io.ReadSeeker); ok {
		// A file: the tar reader seeks over the entries' contents instead of reading them.
		head := make([]byte, 10)
		n, _ := io.ReadFull(rs, head)
		if kind := compression(head[:n]); kind != "" {
			return nil, fmt.Errorf("the archive is compressed (%s); decompress it first", kind)
		}
		if _, err := rs.Seek(-int64(n), io.SeekCurrent); err != nil {
			return nil, err
		}
		tr = tar.NewReader(rs)
	} else {
		br := bufio.NewReader(r)
		head, _ := br.Peek(10)
		if kind := compression(head); kind != "" {
			return nil, fmt.Errorf("the archive is compressed (%s); decompress it first", kind)
		}
		tr = tar.NewReader(br)
	}
	var (
		layout   *ocispec.ImageLayout
		manifest *[]dockerManifest
		index    []byte
		seen     = map[string]bool{}
		entries  int
	)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if len(seen) == 0 && entries == 0 {
				return nil, fmt.Errorf("not a tar archive: %w", err)
			}
			return nil, fmt.Errorf("reading the archive after %d entries: %w", entries, err)
		}
		if entries++; entries > MaxEntries {
			return nil, fmt.Errorf("more than %d entries", MaxEntries)
		}
		//lint:ignore SA1019 containerd reads TypeRegA as a regular file, and so must this reader
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA {
			continue // containerd uses only regular files (and symbolic links to them, for layers)
		}
		name := path.Clean(hdr.Name)
		if seen[name] {
			return nil, fmt.Errorf("the archive holds %q more than once", name)
		}
		seen[name] = true
		switch name {
		case ocispec.ImageLayoutFile:
			layout = new(ocispec.ImageLayout)
			if err := decodeJSON(tr, hdr.Size, layout); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		case "manifest.json":
			manifest = new([]dockerManifest)
			if err := decodeJSON(tr, hdr.Size, manifest); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		case ocispec.ImageIndexFile:
			if hdr.Size > MaxMetadataSize {
				return nil, fmt.Errorf("%s: %d bytes, more than %d", name, hdr.Size, MaxMetadataSize)
			}
			if index, err = io.ReadAll(tr); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	if entries == 0 {
		return nil, errors.New("not a tar archive, or an empty one")
	}
	// containerd's rule: an oci-layout file with a version makes the archive an OCI layout; otherwise it is
	// a docker archive.
	if layout != nil && layout.Version != "" {
		if layout.Version != ocispec.ImageLayoutVersion {
			return nil, fmt.Errorf("OCI layout version %q, not %s", layout.Version, ocispec.ImageLayoutVersion)
		}
		if index == nil {
			return nil, errors.New("an OCI layout without index.json")
		}
		return readIndex(index)
	}
	if manifest == nil {
		return nil, errors.New("neither a docker archive (manifest.json) nor an OCI layout archive (oci-layout and index.json)")
	}
	return readDockerManifest(*manifest)
}

// dockerManifest is an entry of a docker archive's manifest.json, as containerd decodes it (field names
// match case-insensitively, as encoding/json does).
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// decodeJSON decodes the first JSON value of an entry as containerd does: from at most MaxMetadataSize
// bytes, ignoring what follows the value. An entry containerd would cut short is refused.
func decodeJSON(r io.Reader, size int64, v any) error {
	if size > MaxMetadataSize {
		return fmt.Errorf("%d bytes, more than %d", size, MaxMetadataSize)
	}
	return json.NewDecoder(io.LimitReader(r, MaxMetadataSize)).Decode(v)
}

func readDockerManifest(m []dockerManifest) (*Index, error) {
	x := &Index{Format: FormatDocker}
	for _, mf := range m {
		if len(mf.RepoTags) == 0 {
			x.Images = append(x.Images, Image{Digest: mf.Config})
		}
		for _, tag := range mf.RepoTags {
			// containerd stores docker archives' tags normalised (docker.io/library/..., :latest) and refuses
			// the whole archive if one does not parse.
			ref, err := reference.ParseDockerRef(tag)
			if err != nil {
				return nil, fmt.Errorf("manifest.json: image reference %q: %w", tag, err)
			}
			x.Images = append(x.Images, Image{Name: ref.String(), Digest: mf.Config})
		}
		if len(x.Images) > MaxImages {
			return nil, fmt.Errorf("more than %d images", MaxImages)
		}
	}
	return x, nil
}

func readIndex(raw []byte) (*Index, error) {
	var idx ocispec.Index
	// containerd unmarshals the whole of index.json.
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	if len(idx.Manifests) > MaxImages {
		return nil, fmt.Errorf("index.json: more than %d images", MaxImages)
	}
	x := &Index{Format: FormatOCI}
	for _, m := range idx.Manifests {
		name, tag := ociName(m.Annotations)
		x.Images = append(x.Images, Image{Name: name, Tag: tag, Digest: m.Digest.String()})
	}
	return x, nil
}

// ociName is the name containerd's import (ctr images import without --base-name) gives an image of an OCI
// index: the containerd name annotation if it is a full reference, else the OCI reference name if that is a
// full reference. A reference name that is only a tag gets a name made up at import; it is returned as tag.
func ociName(annotations map[string]string) (name, tag string) {
	full := func(s string) bool { return strings.ContainsAny(s, "/:@") }
	if n := annotations[annotationContainerdName]; n != "" {
		if full(n) {
			return n, ""
		}
		return "", ""
	}
	if n := annotations[annotationRefName]; n != "" {
		if full(n) {
			return n, ""
		}
		return "", n
	}
	return "", ""
}

// compression names the compression containerd would detect at the start of an archive, or "".
func compression(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b, 0x08}):
		return "gzip"
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case len(head) >= 4 && binary.LittleEndian.Uint32(head[:4])&0xfffffff0 == 0x184d2a50:
		return "zstd"
	}
	return ""
}

// Normalize returns a reference as a container runtime resolves it (docker.io/library/app:latest for app),
// or the string itself if it is not a reference.
func Normalize(ref string) string {
	if r, err := reference.ParseDockerRef(ref); err == nil {
		return r.String()
	}
	return ref
}

// Claims returns the names of the archive's images that name one of protected (compared as they are and
// normalised).
func (x *Index) Claims(protected []string) []string {
	set := map[string]bool{}
	for _, p := range protected {
		set[p], set[Normalize(p)] = true, true
	}
	var out []string
	for _, n := range x.Names() {
		if set[n] || set[Normalize(n)] {
			out = append(out, n)
		}
	}
	return out
}

// ParseImageList reads the output of `ctr images ls` (a header, then REF TYPE DIGEST ... per image) into
// reference → target digest. Lines it cannot read (a name with blanks) are left out; a reference listed twice
// (a name holding a line break and blanks could forge a line) is an error.
func ParseImageList(out []byte) (map[string]string, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "REF") {
		return nil, fmt.Errorf("unexpected image list: %.200q", out)
	}
	refs := map[string]string{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasPrefix(f[2], "sha256:") {
			continue
		}
		if _, dup := refs[f[0]]; dup {
			return nil, fmt.Errorf("image %q listed twice", f[0])
		}
		refs[f[0]] = f[2]
	}
	return refs, nil
}

// Loadable reports whether the archive's images may be loaded into nodes whose node image holds the images
// protected: every image must have a full name, and none may take a name of protected, whose images only the
// node image provides.
func (x *Index) Loadable(protected []string) error {
	if claims := x.Claims(protected); len(claims) > 0 {
		return fmt.Errorf("it names the node image's own image(s) %s, which only the node image provides; give your image another name", strings.Join(claims, ", "))
	}
	if len(x.Images) == 0 {
		return errors.New("it holds no image")
	}
	for _, img := range x.Images {
		switch {
		case img.Tag != "":
			return fmt.Errorf("image %s is named only %q, without its repository; write the archive with the full reference (e.g. example.com/app:%s)", img.Digest, img.Tag, img.Tag)
		case img.Name == "":
			return fmt.Errorf("image %s has no name; tag it before saving it (e.g. docker tag IMAGE example.com/app:dev)", img.Digest)
		}
	}
	return nil
}
