package cli

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func TestConfigGenerateMini(t *testing.T) {
	imageDir := t.TempDir()
	digest := [32]byte{7}
	expected, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: digest, Cmdline: nodeimage.DefaultCmdline})
	if err != nil {
		t.Fatal(err)
	}
	rawMeas, _ := json.Marshal(expected)
	write(t, filepath.Join(imageDir, "measurements.json"), rawMeas)
	rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: "sha256:0700000000000000000000000000000000000000000000000000000000000000", Cmdline: nodeimage.DefaultCmdline})
	write(t, filepath.Join(imageDir, "node-image.json"), rawManifest)

	sig := signImage(t, imageDir)
	ws := t.TempDir()
	out, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...)
	if code != 0 || !strings.Contains(out, "3 expected PCRs") || !strings.Contains(errOut, "development key") {
		t.Fatalf("config generate: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(c.Attestation.Measurements, expected) || c.Attestation.Measurements[measuredboot.PCRBootParams].WarnOnly || c.Provider.Mini.Workers != 2 {
		t.Fatalf("configuration does not carry the image's measurements: %+v", c)
	}
	if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...); code != 2 || !strings.Contains(errOut, "--force") {
		t.Fatalf("second generate: code %d, stderr %q", code, errOut)
	}
	if _, _, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws, "--force", "--workers", "11"}, sig...)...); code != 2 {
		t.Fatalf("11 workers accepted")
	}
	if _, errOut, code := run("config", "generate", "aws"); code != 2 || !strings.Contains(errOut, "not supported") {
		t.Fatalf("unknown provider: code %d, %q", code, errOut)
	}
	// Measurements that would accept any image, or the genuine image with any boot parameters, are not written
	// into a configuration.
	for name, bad := range tpmtest.AcceptAnyImage(expected) {
		raw, _ := json.Marshal(bad)
		write(t, filepath.Join(imageDir, "measurements.json"), raw)
		sig := signImage(t, imageDir) // signed, even: the policy itself is refused
		ws := t.TempDir()
		if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...); code != 2 || !strings.Contains(errOut, "accepts any node image") {
			t.Errorf("%s: code %d (want 2), stderr %q", name, code, errOut)
		}
		if _, err := os.Stat(filepath.Join(ws, config.FileName)); !os.IsNotExist(err) {
			t.Errorf("%s: a configuration was written (%v)", name, err)
		}
	}
	os.Remove(filepath.Join(imageDir, "measurements.json"))
	sig = sig[:0]
	if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", t.TempDir()}, sig...)...); code != 2 || !strings.Contains(errOut, "expected measurements") {
		t.Fatalf("missing measurements: code %d, %q", code, errOut)
	}
}

// config generate uses no measurement whose signature and log entry do not verify offline, and a development
// signature only on request.
func TestConfigGenerateVerifiesTheSignedMeasurements(t *testing.T) {
	newImage := func(t *testing.T) (string, []string) {
		imageDir := t.TempDir()
		expected, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: [32]byte{7}, Cmdline: nodeimage.DefaultCmdline})
		if err != nil {
			t.Fatal(err)
		}
		rawMeas, _ := json.Marshal(expected)
		write(t, filepath.Join(imageDir, "measurements.json"), rawMeas)
		rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: "sha256:0700000000000000000000000000000000000000000000000000000000000000", Cmdline: nodeimage.DefaultCmdline})
		write(t, filepath.Join(imageDir, "node-image.json"), rawManifest)
		return imageDir, signImage(t, imageDir)
	}
	generate := func(t *testing.T, imageDir string, flags ...string) (string, int) {
		ws := t.TempDir()
		_, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, flags...)...)
		if code == 0 {
			if _, err := os.Stat(filepath.Join(ws, config.FileName)); err != nil {
				t.Errorf("generate succeeded without writing the configuration: %v", err)
			}
		}
		return errOut, code
	}
	t.Run("development-signed without the flag", func(t *testing.T) {
		imageDir, sig := newImage(t)
		if errOut, code := generate(t, imageDir, sig[:2]...); code == 0 || !strings.Contains(errOut, "--allow-dev-signed") {
			t.Fatalf("code %d, stderr %q", code, errOut)
		}
	})
	t.Run("a measurement changed after signing", func(t *testing.T) {
		imageDir, sig := newImage(t)
		path := filepath.Join(imageDir, "measurements.json")
		raw, _ := os.ReadFile(path)
		raw[len(raw)/2] ^= 1
		write(t, path, raw)
		if errOut, code := generate(t, imageDir, sig...); code == 0 || !strings.Contains(errOut, "does not verify") {
			t.Fatalf("code %d, stderr %q", code, errOut)
		}
	})
	t.Run("signed for another image", func(t *testing.T) {
		imageDir, sig := newImage(t)
		rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: "sha256:0800000000000000000000000000000000000000000000000000000000000000", Cmdline: nodeimage.DefaultCmdline})
		write(t, filepath.Join(imageDir, "node-image.json"), rawManifest)
		if errOut, code := generate(t, imageDir, sig...); code == 0 || !strings.Contains(errOut, "not for image") {
			t.Fatalf("code %d, stderr %q", code, errOut)
		}
	})
	t.Run("no bundle", func(t *testing.T) {
		imageDir, sig := newImage(t)
		os.Remove(filepath.Join(imageDir, "measurements.json.sigstore.json"))
		if errOut, code := generate(t, imageDir, sig...); code == 0 || !strings.Contains(errOut, "signature bundle") {
			t.Fatalf("code %d, stderr %q", code, errOut)
		}
	})
	t.Run("image verify shows what it checked", func(t *testing.T) {
		imageDir, sig := newImage(t)
		out, errOut, code := run(append([]string{"image", "verify", filepath.Join(imageDir, "measurements.json")}, sig...)...)
		for _, want := range []string{"verified offline", "sha256:07000000", "mini-vtpm", `key "development"`, "log.test.invalid: entry"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("code %d, stdout %q lacks %q, stderr %q", code, out, want, errOut)
			}
		}
	})
}
