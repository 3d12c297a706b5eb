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

	ws := t.TempDir()
	out, errOut, code := run("config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws)
	if code != 0 || !strings.Contains(out, "3 expected PCRs") {
		t.Fatalf("config generate: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(c.Attestation.Measurements, expected) || c.Attestation.Measurements[measuredboot.PCRBootParams].WarnOnly || c.Provider.Mini.Workers != 2 {
		t.Fatalf("configuration does not carry the image's measurements: %+v", c)
	}
	if _, errOut, code := run("config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws); code != 2 || !strings.Contains(errOut, "--force") {
		t.Fatalf("second generate: code %d, stderr %q", code, errOut)
	}
	if _, _, code := run("config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws, "--force", "--workers", "11"); code != 2 {
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
		ws := t.TempDir()
		if _, errOut, code := run("config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws); code != 2 || !strings.Contains(errOut, "accepts any node image") {
			t.Errorf("%s: code %d (want 2), stderr %q", name, code, errOut)
		}
		if _, err := os.Stat(filepath.Join(ws, config.FileName)); !os.IsNotExist(err) {
			t.Errorf("%s: a configuration was written (%v)", name, err)
		}
	}
	os.Remove(filepath.Join(imageDir, "measurements.json"))
	if _, errOut, code := run("config", "generate", "mini", "--image-dir", imageDir, "--workspace", t.TempDir()); code != 2 || !strings.Contains(errOut, "expected measurements") {
		t.Fatalf("missing measurements: code %d, %q", code, errOut)
	}
}
