package nodeimage

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/bootimage"
)

// MeasuredImage is one image of a node image directory whose expected measurements are signed: the
// measurements file (its bundle is the file's name plus the bundle suffix), the manifest that names the
// image's digest, and the variant the signed statement names.
type MeasuredImage struct {
	Measurements, Manifest, Variant string
}

// MeasuredImages are the images `make node-image` writes with expected measurements: the squashfs image of
// the mini provider and the bootable UEFI disk image, whose measurements (the image's PCRs) are signed for the
// QEMU provider's machines.
var MeasuredImages = []MeasuredImage{
	{Measurements: "measurements.json", Manifest: "node-image.json", Variant: attestation.MiniVTPM.Name},
	{Measurements: bootimage.MeasurementsFile, Manifest: bootimage.ManifestFile, Variant: attestation.QEMUVTPM.Name},
}

// MeasuredImageFor returns the image whose measurements file is named as measPath's base name.
func MeasuredImageFor(measPath string) (MeasuredImage, bool) {
	for _, m := range MeasuredImages {
		if m.Measurements == filepath.Base(measPath) {
			return m, true
		}
	}
	return MeasuredImage{}, false
}

// ManifestDigest reads the image digest ("sha256:<hex>") of a manifest: node-image.json or
// node-image-uefi.json.
func ManifestDigest(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the image manifest: %w", err)
	}
	var m struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if m.Digest == "" {
		return "", fmt.Errorf("%s names no image digest", path)
	}
	return m.Digest, nil
}

// ManifestVersions reads the component versions (Kubernetes, etcd, CoreDNS, pause) of a node image's manifest,
// node-image.json. The image's digest covers the versions file the nodes read (VersionsFile); the manifest
// says the same for the CLI, which shows and checks it, but never decides by it what the nodes run.
func ManifestVersions(path string) (Versions, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Versions{}, fmt.Errorf("reading the image manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return Versions{}, fmt.Errorf("%s: %w", path, err)
	}
	if m.Versions.Kubernetes == "" {
		return Versions{}, fmt.Errorf("%s names no Kubernetes version", path)
	}
	return m.Versions, nil
}
