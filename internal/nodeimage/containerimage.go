package nodeimage

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ContainerImage is a single-layer container image built from files, without a registry or a base image.
type ContainerImage struct {
	// Ref is the image reference containerd and kubeadm know it by, e.g. registry.k8s.io/pause:3.10.1.
	Ref        string
	Files      []File
	Entrypoint []string
	Env        []string
}

// Image builds the image: one reproducible layer, a config with time zero.
func (ci ContainerImage) Image() (v1.Image, error) {
	var layerTar bytes.Buffer
	if err := WriteTar(&layerTar, ci.Files); err != nil {
		return nil, fmt.Errorf("image %s: %w", ci.Ref, err)
	}
	data := layerTar.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ci.Ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ci.Ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = ci.Entrypoint
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, ci.Env...)
	cf.History = nil
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ci.Ref, err)
	}
	return img, nil
}

// WriteArchive writes the image as a docker archive (what `ctr images import` and `docker load` read).
func (ci ContainerImage) WriteArchive(path string) (v1.Hash, error) {
	ref, err := name.NewTag(ci.Ref, name.StrictValidation)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image reference %q: %w", ci.Ref, err)
	}
	img, err := ci.Image()
	if err != nil {
		return v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	f, err := os.Create(path)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := tarball.Write(ref, img, f); err != nil {
		f.Close()
		return v1.Hash{}, fmt.Errorf("writing image %s: %w", ci.Ref, err)
	}
	return digest, f.Close()
}
