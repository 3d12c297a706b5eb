package nodeimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/strictjson"
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
	{Measurements: "measurements.json", Manifest: ManifestFile, Variant: attestation.MiniVTPM.Name},
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

// ManifestFile is the manifest of the squashfs image, which names the image's component versions; the UEFI
// disk image, built from the same root filesystem, runs the same versions.
const ManifestFile = "node-image.json"

// MaxManifestSize bounds a manifest a reader accepts; a genuine one is a few kilobytes.
const MaxManifestSize = 1 << 20

// ParseManifest parses a node image's manifest (node-image.json) strictly (package strictjson): exactly the
// fields a build writes, each once. The manifest is not signed: whoever holds the image's files can edit it.
// What counts is signed in the measurements' statement (package signed): the image digest, the Kubernetes
// version and the image version; the manifest may only agree with it ([CheckSignedVersions]).
func ParseManifest(raw []byte) (Manifest, error) {
	var m Manifest
	if err := strictjson.Decode(raw, &m, MaxManifestSize); err != nil {
		return Manifest{}, err
	}
	if m.Versions.Kubernetes == "" {
		return Manifest{}, errors.New("the manifest names no Kubernetes version")
	}
	return m, nil
}

// ReadManifest reads and parses a node image's manifest ([ParseManifest]).
func ReadManifest(path string) (Manifest, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Manifest{}, fmt.Errorf("reading the image manifest: %w", err)
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ManifestVersions reads the component versions (Kubernetes, etcd, CoreDNS, pause) of a node image's manifest,
// node-image.json. The image's digest covers the versions file the nodes read (VersionsFile); the manifest
// says the same for the CLI, which shows it, but never decides by it: the Kubernetes version that counts is
// the one of the signed measurements.
func ManifestVersions(path string) (Versions, error) {
	m, err := ReadManifest(path)
	if err != nil {
		return Versions{}, err
	}
	return m.Versions, nil
}

// CheckSignedVersions refuses a manifest that disagrees with the versions of the image's signed measurements:
// kubernetes and image (the signed statement's; an empty one was not signed, and is not checked). A manifest
// that names no image version (an older build) agrees with any.
func CheckSignedVersions(m Manifest, kubernetes, image string) error {
	if kubernetes != "" && m.Versions.Kubernetes != kubernetes {
		return fmt.Errorf("the image's manifest claims Kubernetes %s, but its signed measurements say Kubernetes %s: "+
			"the manifest was changed after the image was signed; refusing the image (build or fetch it again)", m.Versions.Kubernetes, kubernetes)
	}
	if image != "" && m.Version != "" && m.Version != image {
		return fmt.Errorf("the image's manifest claims version %s, but its signed measurements say version %s: "+
			"the manifest was changed after the image was signed; refusing the image (build or fetch it again)", m.Version, image)
	}
	return nil
}
