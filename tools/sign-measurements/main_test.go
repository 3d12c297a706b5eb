package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Versions of the image imageDir writes.
const (
	testKubernetes   = "v1.37.2"
	testImageVersion = "v0.4.0-2-g0123abc"
)

// imageDir writes the manifests and measurements of a built node image (squashfs and UEFI; the UEFI disk
// image's root filesystem is the squashfs image).
func imageDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	squashfs := "sha256:" + strings.Repeat("a1", 32)
	writeFile(t, filepath.Join(dir, nodeimage.ManifestFile), []byte(`{"digest":"`+squashfs+`","versions":{"kubernetes":"`+testKubernetes+`"},"version":"`+testImageVersion+`"}`))
	writeFile(t, filepath.Join(dir, bootimage.ManifestFile), []byte(`{"digest":"sha256:`+strings.Repeat("a2", 32)+`","root":"`+squashfs+`"}`))
	for i, img := range nodeimage.MeasuredImages {
		writeFile(t, filepath.Join(dir, img.Measurements), []byte(`{"4":{"expected":"`+strings.Repeat("0"+string(rune('1'+i)), 32)+`","warnOnly":false}}`))
	}
	return dir
}

// The statements name the image's Kubernetes version and version, of the squashfs image's manifest; a UEFI disk
// image whose manifest names another root filesystem is not signed with them.
func TestPredicate(t *testing.T) {
	dir := imageDir(t)
	for _, img := range nodeimage.MeasuredImages {
		digest, err := nodeimage.ManifestDigest(filepath.Join(dir, img.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		p, err := predicate(dir, img, digest)
		if err != nil {
			t.Fatalf("%s: %v", img.Measurements, err)
		}
		if want := (signed.Predicate{ImageDigest: digest, Variant: img.Variant, KubernetesVersion: testKubernetes, ImageVersion: testImageVersion}); p != want {
			t.Errorf("%s: predicate %+v, want %+v", img.Measurements, p, want)
		}
	}
	writeFile(t, filepath.Join(dir, bootimage.ManifestFile), []byte(`{"digest":"sha256:`+strings.Repeat("a2", 32)+`","root":"sha256:`+strings.Repeat("b3", 32)+`"}`))
	uefi, _ := nodeimage.MeasuredImageFor(bootimage.MeasurementsFile)
	if _, err := predicate(dir, uefi, "sha256:"+strings.Repeat("a2", 32)); err == nil || !strings.Contains(err.Error(), "root filesystem") {
		t.Errorf("a UEFI image of another root filesystem: %v", err)
	}
}

func bundles(dir string) []string {
	var out []string
	for _, img := range nodeimage.MeasuredImages {
		if _, err := os.Stat(filepath.Join(dir, img.Measurements+signed.BundleSuffix)); err == nil {
			out = append(out, img.Measurements)
		}
	}
	return out
}

// The passphrase comes from the environment only, and no process started later inherits it.
func TestPassphrase(t *testing.T) {
	t.Setenv(PassphraseEnv, "")
	if _, err := runMode(context.Background(), "release-key", []string{"-dir", filepath.Join(t.TempDir(), "rel")}); err == nil || !strings.Contains(err.Error(), PassphraseEnv) {
		t.Fatalf("release-key without a passphrase: %v", err)
	}
	t.Setenv(PassphraseEnv, "from the environment")
	pass, err := passphrase()
	if err != nil || string(pass) != "from the environment" {
		t.Fatalf("passphrase() = %q, %v", pass, err)
	}
	if _, ok := os.LookupEnv(PassphraseEnv); ok {
		t.Error("the passphrase stays in the environment of the processes this one starts")
	}
}

// Release keys are created once, encrypted; releases are signed only with the right passphrase and only for
// the embedded root; the bundles verify with the release root as releases, with the log stopped.
func TestReleaseSigning(t *testing.T) {
	ctx := context.Background()
	pass := []byte("release passphrase")
	dir := filepath.Join(t.TempDir(), "release")
	if _, err := createReleaseKeys(dir, ReleaseOrigin, pass, ""); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{releaseKeyFile, releaseLogKeyFile} {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		info, _ := os.Stat(filepath.Join(dir, f))
		if err != nil || !bytes.Contains(raw, []byte(signed.EncryptedKeyPEMType)) || bytes.Contains(raw, pass) || info.Mode().Perm() != 0o600 {
			t.Fatalf("%s is not an encrypted owner-only key (%v, %v):\n%s", f, err, info.Mode(), raw)
		}
	}
	if _, err := createReleaseKeys(dir, ReleaseOrigin, pass, ""); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("a second release key over the first: %v", err)
	}
	root, err := signed.ParseRoot(mustRead(t, filepath.Join(dir, releaseRootFile)))
	if err != nil || root.CheckRelease() != nil {
		t.Fatalf("the release root: %v", err)
	}
	ports, err := signtest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}

	img := imageDir(t)
	if _, err := runRelease(ctx, img, dir, ports, []byte("wrong passphrase"), root); !errors.Is(err, signed.ErrWrongPassphrase) {
		t.Fatalf("a wrong passphrase: %v", err)
	}
	committed, err := signed.ReleaseRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runRelease(ctx, img, dir, ports, pass, committed); err == nil || !strings.Contains(err.Error(), "embedded") {
		t.Fatalf("a release directory whose root is not the embedded one: %v", err)
	}
	if b := bundles(img); len(b) != 0 {
		t.Fatalf("refused signings wrote %v", b)
	}

	if _, err := runRelease(ctx, img, dir, ports, pass, root); err != nil {
		t.Fatal(err)
	}
	// The tool stopped the release log; a development root of another log is trusted besides.
	dev := signed.Root{Keys: []signed.Key{{Name: "development", Development: true, PublicKey: &signtest.NewKey().PublicKey}},
		Log: signed.Log{Origin: Origin, PublicKey: &signtest.NewKey().PublicKey}}
	for _, m := range nodeimage.MeasuredImages {
		digest, err := nodeimage.ManifestDigest(filepath.Join(img, m.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		res, err := signed.VerifyAny([]signed.Root{dev, root}, mustRead(t, filepath.Join(img, m.Measurements+signed.BundleSuffix)),
			mustRead(t, filepath.Join(img, m.Measurements)), signed.Predicate{ImageDigest: digest, Variant: m.Variant}, false)
		if err != nil || res.Key.Development || res.LogOrigin != ReleaseOrigin ||
			res.Predicate.KubernetesVersion != testKubernetes || res.Predicate.ImageVersion != testImageVersion {
			t.Errorf("%s: %+v, %v", m.Measurements, res, err)
		}
	}
	// A CLI built with this release root embedded (the repository's file replaced by the build's overlay, as
	// a release manager replaces it) verifies the release as one, offline, without any development root.
	cli := buildCLIWithReleaseRoot(t, filepath.Join(dir, releaseRootFile))
	emptySignDir := t.TempDir()
	for _, m := range nodeimage.MeasuredImages {
		out, err := runCLI(cli, emptySignDir, "image", "verify", filepath.Join(img, m.Measurements))
		if err != nil || !strings.Contains(out, `release key "release"`) || strings.Contains(out, "WARNING") {
			t.Errorf("the CLI with the embedded release root, %s: %v\n%s", m.Measurements, err, out)
		}
	}
	// Development signing of the same directory afterwards replaces the release bundles; the development
	// root marks its key.
	signDir := t.TempDir()
	if ports, err = signtest.FreePorts(); err != nil {
		t.Fatal(err)
	}
	if _, err := runDev(ctx, img, signDir, ports); err != nil {
		t.Fatal(err)
	}
	var devRoot signed.Root
	if devRoot, err = signed.ParseRoot(mustRead(t, filepath.Join(signDir, "trusted-root.json"))); err != nil {
		t.Fatal(err)
	}
	for _, m := range nodeimage.MeasuredImages {
		digest, _ := nodeimage.ManifestDigest(filepath.Join(img, m.Manifest))
		res, err := signed.VerifyAny([]signed.Root{root, devRoot}, mustRead(t, filepath.Join(img, m.Measurements+signed.BundleSuffix)),
			mustRead(t, filepath.Join(img, m.Measurements)), signed.Predicate{ImageDigest: digest, Variant: m.Variant}, true)
		if err != nil || !res.Key.Development {
			t.Errorf("%s, development-signed: %+v, %v", m.Measurements, res, err)
		}
	}
	// The CLI marks the development build and wants --allow-dev-signed for it.
	if out, err := runCLI(cli, signDir, "image", "verify", filepath.Join(img, "measurements.json")); err == nil || !strings.Contains(out, "--allow-dev-signed") {
		t.Errorf("a development-signed image without --allow-dev-signed: %v\n%s", err, out)
	}
	if out, err := runCLI(cli, signDir, "image", "verify", filepath.Join(img, "measurements.json"), "--allow-dev-signed"); err != nil || !strings.Contains(out, "DEVELOPMENT build") {
		t.Errorf("a development-signed image with --allow-dev-signed: %v\n%s", err, out)
	}
	raw, _ := json.Marshal(root)
	if bytes.Contains(raw, []byte("PRIVATE")) {
		t.Error("the release root holds a private key")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// buildCLIWithReleaseRoot builds the CLI with rootPath in place of the repository's release root.
func buildCLIWithReleaseRoot(t *testing.T, rootPath string) string {
	t.Helper()
	repoRoot, err := filepath.Abs(filepath.Join("..", "..", signed.ReleaseRootFile))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {repoRoot: rootPath}})
	writeFile(t, filepath.Join(dir, "overlay.json"), overlay)
	bin := filepath.Join(dir, "constellation")
	cmd := exec.Command("go", "build", "-overlay", filepath.Join(dir, "overlay.json"), "-o", bin, "github.com/constellation-dev/constellation/cmd/constellation")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the CLI: %v\n%s", err, out)
	}
	return bin
}

// runCLI runs the CLI with signDir as the signing directory (of the default development root).
func runCLI(bin, signDir string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "CONSTELLATION_SIGNING_DIR="+signDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
