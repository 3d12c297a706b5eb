package e2e

import (
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/constellation-dev/constellation/internal/nodeimage"
)

// workloadImage builds a container image of the user application (./workload, built statically) that the node
// image does not hold: its entrypoint is /workload, and extra files (e.g. data for an image volume) go into the
// same single layer. say is baked into the image's arguments, so that two images differ in digest.
func workloadImage(t *testing.T, ref, say string, extra ...nodeimage.File) nodeimage.ContainerImage {
	t.Helper()
	bin := goBuild(t, t.TempDir(), "github.com/constellation-dev/constellation/test/e2e/workload", "workload", "CGO_ENABLED=0")
	files := append([]nodeimage.File{{Path: "/workload", Source: bin, Mode: 0o755}}, extra...)
	return nodeimage.ContainerImage{Ref: ref, Files: files, Entrypoint: []string{"/workload", "-say", say}}
}

// dataImage builds an image that holds only files: the content of an image volume.
func dataImage(ref string, files ...nodeimage.File) nodeimage.ContainerImage {
	return nodeimage.ContainerImage{Ref: ref, Files: files}
}

// writeArchive writes ci as a docker archive into dir and returns its path and the image's digest.
func writeArchive(t *testing.T, dir string, ci nodeimage.ContainerImage) (string, v1.Hash) {
	t.Helper()
	path := filepath.Join(dir, filepath.Base(ci.Ref)+".tar")
	digest, err := ci.WriteArchive(path)
	if err != nil {
		t.Fatalf("writing %s: %v", ci.Ref, err)
	}
	return path, digest
}
