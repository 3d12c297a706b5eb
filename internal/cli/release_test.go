package cli

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

const (
	squashfsDigest = "sha256:0700000000000000000000000000000000000000000000000000000000000000"
	uefiDigest     = "sha256:0900000000000000000000000000000000000000000000000000000000000000"
)

// withReleaseRoot makes the CLI embed a release root of a fresh release key, whose log is the test log, for
// the test, and returns the release key.
func withReleaseRoot(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	testLog.mu.Lock()
	runningTestLog(t)
	testLog.mu.Unlock()
	key := signtest.NewKey()
	root := signed.Root{Keys: []signed.Key{{Name: "release", PublicKey: &key.PublicKey}}, Log: testLog.root.Log}
	saved := releaseRoot
	releaseRoot = func() (signed.Root, error) { return root, nil }
	t.Cleanup(func() { releaseRoot = saved })
	return key
}

// imageDirWithUEFI writes the files of a built node image: the squashfs image's measurements and manifest, and
// the UEFI image's.
func imageDirWithUEFI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	expected, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: [32]byte{7}, Cmdline: nodeimage.DefaultCmdline})
	if err != nil {
		t.Fatal(err)
	}
	rawMeas, _ := json.Marshal(expected)
	write(t, filepath.Join(dir, "measurements.json"), rawMeas)
	rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: squashfsDigest, Cmdline: nodeimage.DefaultCmdline})
	write(t, filepath.Join(dir, "node-image.json"), rawManifest)
	uefi := measurements.M{4: {Expected: measurements.Digest{4}}, 11: {Expected: measurements.Digest{11}}}
	rawUEFI, _ := json.Marshal(uefi)
	write(t, filepath.Join(dir, bootimage.MeasurementsFile), rawUEFI)
	rawDisk, _ := json.Marshal(bootimage.Disk{Digest: uefiDigest, Measurements: uefi})
	write(t, filepath.Join(dir, bootimage.ManifestFile), rawDisk)
	return dir
}

// signFile signs dir/name with key for digest and variant and writes its bundle.
func signFile(t *testing.T, key *ecdsa.PrivateKey, dir, name, digest, variant string) {
	t.Helper()
	meas, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	st, err := signed.Statement(name, meas, signed.Predicate{ImageDigest: digest, Variant: variant})
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, name+signed.BundleSuffix), signWith(t, key, st))
}

// devRootFlags writes the test log's development root and returns the flags that name it.
func devRootFlags(t *testing.T) []string {
	t.Helper()
	raw, err := json.Marshal(testLog.root)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "trusted-root.json")
	write(t, path, raw)
	return []string{"--trusted-root", path}
}

// A release-signed image verifies with the embedded release root and is shown as a release; a
// development-signed one is shown as a development build and needs --allow-dev-signed; the UEFI image's
// measurements verify for the UEFI image. The log is stopped while the CLI verifies.
func TestImageVerifyReleaseAndDevelopment(t *testing.T) {
	releaseKey := withReleaseRoot(t)
	release, dev := imageDirWithUEFI(t), imageDirWithUEFI(t)
	for _, img := range nodeimage.MeasuredImages {
		digest, err := nodeimage.ManifestDigest(filepath.Join(release, img.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		signFile(t, releaseKey, release, img.Measurements, digest, img.Variant)
		signFile(t, devKey(t), dev, img.Measurements, digest, img.Variant)
	}
	// The UEFI measurements signed, genuinely, but for the squashfs image.
	swapped := imageDirWithUEFI(t)
	signFile(t, releaseKey, swapped, bootimage.MeasurementsFile, squashfsDigest, attestation.QEMUVTPM.Name)
	devFlags := devRootFlags(t)
	stopTestLog(t)

	for _, name := range []string{"measurements.json", bootimage.MeasurementsFile} {
		out, errOut, code := run("image", "verify", filepath.Join(release, name))
		if code != 0 || !strings.Contains(out, `release key "release"`) || strings.Contains(errOut, "WARNING") {
			t.Errorf("%s, release-signed: exit %d\n%s%s", name, code, out, errOut)
		}
		out, errOut, code = run(append([]string{"image", "verify", filepath.Join(dev, name), "--allow-dev-signed"}, devFlags...)...)
		if code != 0 || !strings.Contains(out, "DEVELOPMENT build") || !strings.Contains(errOut, "WARNING") {
			t.Errorf("%s, development-signed with --allow-dev-signed: exit %d\n%s%s", name, code, out, errOut)
		}
		_, errOut, code = run(append([]string{"image", "verify", filepath.Join(dev, name)}, devFlags...)...)
		if code != 1 || !strings.Contains(errOut, "--allow-dev-signed") {
			t.Errorf("%s, development-signed without the flag: exit %d\n%s", name, code, errOut)
		}
	}
	if out, _, code := run("image", "verify", filepath.Join(release, bootimage.MeasurementsFile)); !strings.Contains(out, uefiDigest) || !strings.Contains(out, attestation.QEMUVTPM.Name) || code != 0 {
		t.Errorf("the UEFI measurements are not verified for the UEFI image:\n%s", out)
	}
	if _, errOut, code := run("image", "verify", filepath.Join(swapped, bootimage.MeasurementsFile)); code != 1 || !strings.Contains(errOut, "not for image") {
		t.Errorf("UEFI measurements signed for the squashfs image: exit %d\n%s", code, errOut)
	}
	// Without a development root only releases verify.
	t.Setenv("CONSTELLATION_SIGNING_DIR", t.TempDir())
	if _, errOut, code := run("image", "verify", filepath.Join(dev, "measurements.json"), "--allow-dev-signed"); code != 1 || !strings.Contains(errOut, "not trusted") {
		t.Errorf("a development-signed image without a development root: exit %d\n%s", code, errOut)
	}
}

// The development root in the signing directory has development keys only, whatever the file says: a root
// edited to drop the mark does not make a local build pass as a release.
func TestSigningDirectoryRootIsDevelopment(t *testing.T) {
	withReleaseRoot(t)
	dir := imageDirWithUEFI(t)
	signFile(t, devKey(t), dir, "measurements.json", squashfsDigest, attestation.MiniVTPM.Name)
	stopTestLog(t)
	edited := testLog.root
	edited.Keys = []signed.Key{{Name: "release", PublicKey: testLog.root.Keys[0].PublicKey}}
	raw, _ := json.Marshal(edited)
	signDir := t.TempDir()
	write(t, filepath.Join(signDir, "trusted-root.json"), raw)
	t.Setenv("CONSTELLATION_SIGNING_DIR", signDir)
	if _, errOut, code := run("image", "verify", filepath.Join(dir, "measurements.json")); code != 1 || !strings.Contains(errOut, "--allow-dev-signed") {
		t.Fatalf("without --allow-dev-signed: exit %d\n%s", code, errOut)
	}
	if out, _, code := run("image", "verify", filepath.Join(dir, "measurements.json"), "--allow-dev-signed"); code != 0 || !strings.Contains(out, "DEVELOPMENT build") {
		t.Fatalf("with --allow-dev-signed: exit %d\n%s", code, out)
	}
}

// apply, mini up and recover verify the configured image's measurements again before they use them, with the
// log stopped, and refuse before anything starts.
func TestApplyReverifiesTheMeasurements(t *testing.T) {
	imageDir := imageDirWithUEFI(t)
	sig := signImage(t, imageDir)
	ws := t.TempDir()
	if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...); code != 0 {
		t.Fatalf("config generate: %s", errOut)
	}
	stopTestLog(t)
	confPath := filepath.Join(ws, config.FileName)
	genuineConf, _ := os.ReadFile(confPath)
	measPath := filepath.Join(imageDir, "measurements.json")
	genuineMeas, _ := os.ReadFile(measPath)
	bundlePath := measPath + signed.BundleSuffix
	genuineBundle, _ := os.ReadFile(bundlePath)
	restore := func() {
		write(t, confPath, genuineConf)
		write(t, measPath, genuineMeas)
		write(t, bundlePath, genuineBundle)
	}

	tests := map[string]struct {
		edit    func()
		flags   []string
		code    int // 1 unless set
		wantErr string
	}{
		"a development-signed image without --allow-dev-signed": {edit: func() {}, flags: sig[:2], wantErr: "--allow-dev-signed"},
		"a flipped byte of the signed measurements": {flags: sig, wantErr: "does not verify", edit: func() {
			flipped := bytes.Clone(genuineMeas)
			flipped[len(flipped)/2] ^= 1
			write(t, measPath, flipped)
		}},
		"no bundle": {flags: sig, code: 2, wantErr: "bundle", edit: func() { os.Remove(bundlePath) }},
		"a bundle without its log entry": {flags: sig, wantErr: "log entries", edit: func() {
			var b map[string]any
			if err := json.Unmarshal(genuineBundle, &b); err != nil {
				t.Fatal(err)
			}
			delete(b["verificationMaterial"].(map[string]any), "tlogEntries")
			raw, _ := json.Marshal(b)
			write(t, bundlePath, raw)
		}},
		"measurements in the configuration that are not the signed ones": {flags: sig, wantErr: "not the signed measurements", edit: func() {
			c, err := config.Load(confPath)
			if err != nil {
				t.Fatal(err)
			}
			c.Attestation.Measurements[measuredboot.PCRNodeImage] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
			if err := c.Write(confPath, true); err != nil {
				t.Fatal(err)
			}
		}},
		"a configuration for another image": {flags: sig, wantErr: "not for image", edit: func() {
			c, err := config.Load(confPath)
			if err != nil {
				t.Fatal(err)
			}
			c.Provider.Mini.ImageDigest = uefiDigest
			if err := c.Write(confPath, true); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for name, tc := range tests {
		for _, command := range [][]string{{"apply"}, {"mini", "up"}, {"recover"}} {
			t.Run(strings.Join(command, " ")+": "+name, func(t *testing.T) {
				restore()
				tc.edit()
				wantCode := tc.code
				if wantCode == 0 {
					wantCode = 1
				}
				_, errOut, code := run(append(append(command, "--workspace", ws), tc.flags...)...)
				if code != wantCode || !strings.Contains(errOut, tc.wantErr) {
					t.Fatalf("exit %d, want %d and an error containing %q:\n%s", code, wantCode, tc.wantErr, errOut)
				}
				for _, f := range []string{miniDirName, InitSecretFile} {
					if _, err := os.Stat(filepath.Join(ws, f)); !os.IsNotExist(err) {
						t.Errorf("%s was created before the refusal (%v)", f, err)
					}
				}
			})
		}
	}
}

// apply of a QEMU configuration verifies the disk image's signed measurements again, offline, and that the
// configuration's policy is exactly the one built from them and the firmware PCRs pinned in the binary: a host
// that edits the workspace between config generate and apply (another image, an extra or changed PCR, the
// bundle removed) gets nothing booted.
func TestApplyReverifiesTheQEMUMeasurements(t *testing.T) {
	dir := t.TempDir()
	uefi := measurements.M{}
	for _, idx := range []uint32{4, 11, 12, 13} {
		uefi[idx] = measurements.Measurement{Expected: measurements.Digest{byte(idx)}}
	}
	rawUEFI, _ := json.Marshal(uefi)
	write(t, filepath.Join(dir, bootimage.MeasurementsFile), rawUEFI)
	rawDisk, _ := json.Marshal(bootimage.Disk{Digest: uefiDigest, Measurements: uefi})
	write(t, filepath.Join(dir, bootimage.ManifestFile), rawDisk)
	sig := signImage(t, imageDirWithUEFI(t)) // starts the test log and writes the development root
	signFile(t, testLog.key.Key, dir, bootimage.MeasurementsFile, uefiDigest, attestation.QEMUVTPM.Name)
	ws := t.TempDir()
	if _, errOut, code := run(append([]string{"config", "generate", "qemu", "--image-dir", dir, "--workspace", ws}, sig...)...); code != 0 {
		t.Fatalf("config generate qemu: %s", errOut)
	}
	stopTestLog(t)
	confPath := filepath.Join(ws, config.FileName)
	genuineConf, _ := os.ReadFile(confPath)
	measPath := filepath.Join(dir, bootimage.MeasurementsFile)
	bundlePath := measPath + signed.BundleSuffix
	genuineBundle, _ := os.ReadFile(bundlePath)
	editConf := func(edit func(c *config.Config)) func() {
		return func() {
			c, err := config.Load(confPath)
			if err != nil {
				t.Fatal(err)
			}
			edit(c)
			if err := c.Write(confPath, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := map[string]struct {
		edit    func()
		code    int
		wantErr string
	}{
		"a changed firmware PCR": {code: 1, wantErr: "not the signed measurements", edit: editConf(func(c *config.Config) {
			c.Attestation.Measurements[0] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
		})},
		"a changed image PCR": {code: 1, wantErr: "not the signed measurements", edit: editConf(func(c *config.Config) {
			c.Attestation.Measurements[11] = measurements.Measurement{Expected: measurements.Digest{0xcd}}
		})},
		"another disk image": {code: 1, wantErr: "not for image", edit: editConf(func(c *config.Config) {
			c.Provider.QEMU.ImageDigest = squashfsDigest
		})},
		"no bundle": {code: 2, wantErr: "bundle", edit: func() { os.Remove(bundlePath) }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			write(t, confPath, genuineConf)
			write(t, bundlePath, genuineBundle)
			tc.edit()
			_, errOut, code := run(append([]string{"apply", "--workspace", ws}, sig...)...)
			if code != tc.code || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, want %d and an error containing %q:\n%s", code, tc.code, tc.wantErr, errOut)
			}
			for _, f := range []string{qemuDirName, InitSecretFile} {
				if _, err := os.Stat(filepath.Join(ws, f)); !os.IsNotExist(err) {
					t.Errorf("%s was created before the refusal (%v)", f, err)
				}
			}
		})
	}
}

// status shows whether the configured image's measurements are signed by a release or a development key.
func TestStatusShowsTheSignature(t *testing.T) {
	imageDir := imageDirWithUEFI(t)
	sig := signImage(t, imageDir)
	ws := t.TempDir()
	if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...); code != 0 {
		t.Fatalf("config generate: %s", errOut)
	}
	stopTestLog(t)
	var out bytes.Buffer
	cmd := newStatusCmd()
	cmd.SetOut(&out)
	if err := cmd.Flags().Set("workspace", ws); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Flags().Set("trusted-root", sig[1]); err != nil {
		t.Fatal(err)
	}
	printImageSignature(cmd)
	if !strings.Contains(out.String(), squashfsDigest+": measurements verified offline, DEVELOPMENT build") {
		t.Fatalf("status: %s", out.String())
	}
}

// image log-check proves from the log's tiles (a copy, or served over HTTP) that the log still extends a
// checkpoint kept from a bundle, with the log stopped, and refuses an edited one.
func TestImageLogCheck(t *testing.T) {
	dir := imageDirWithUEFI(t)
	signFile(t, devKey(t), dir, "measurements.json", squashfsDigest, attestation.MiniVTPM.Name)
	b, err := signed.ParseBundle(mustRead(t, filepath.Join(dir, "measurements.json"+signed.BundleSuffix)))
	if err != nil {
		t.Fatal(err)
	}
	kept := []byte(b.GetVerificationMaterial().GetTlogEntries()[0].GetInclusionProof().GetCheckpoint().GetEnvelope())
	signFile(t, devKey(t), dir, bootimage.MeasurementsFile, uefiDigest, attestation.QEMUVTPM.Name) // the log grows
	flags := devRootFlags(t)
	stopTestLog(t)
	tiles := testLog.stopped.TilesDir
	keptPath := filepath.Join(t.TempDir(), "checkpoint")
	write(t, keptPath, kept)

	out, errOut, code := run(append([]string{"image", "log-check", "--checkpoint", keptPath, "--tiles", tiles}, flags...)...)
	if code != 0 || !strings.Contains(out, "consistency: proven") || !strings.Contains(out, "kept checkpoint:") {
		t.Fatalf("log-check: exit %d\n%s%s", code, out, errOut)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(tiles)))
	defer srv.Close()
	out, errOut, code = run(append([]string{"image", "log-check", "--checkpoint", keptPath, "--log-url", srv.URL, "--save"}, flags...)...)
	if code != 0 || !strings.Contains(out, "consistency: proven") {
		t.Fatalf("log-check over HTTP: exit %d\n%s%s", code, out, errOut)
	}
	if current := mustRead(t, filepath.Join(tiles, "checkpoint")); !bytes.Equal(mustRead(t, keptPath), current) {
		t.Error("--save did not keep the current checkpoint")
	}
	first := filepath.Join(t.TempDir(), "first")
	if out, errOut, code := run(append([]string{"image", "log-check", "--checkpoint", first, "--tiles", tiles, "--save"}, flags...)...); code != 0 || !bytes.Equal(mustRead(t, first), mustRead(t, keptPath)) {
		t.Fatalf("a first checkpoint: exit %d\n%s%s", code, out, errOut)
	}
	edited := strings.Replace(string(kept), "\n", "\n1", 1) // another tree size, the same signature
	write(t, keptPath, []byte(edited))
	if out, errOut, code := run(append([]string{"image", "log-check", "--checkpoint", keptPath, "--tiles", tiles}, flags...)...); code != 1 || !strings.Contains(errOut, "not signed by the log") {
		t.Fatalf("an edited checkpoint: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := run("image", "log-check", "--checkpoint", keptPath, "--tiles", tiles, "--log-url", srv.URL); code != 2 {
		t.Fatalf("both sources: exit %d\n%s", code, errOut)
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

// devKey returns the test log's development key, setting the log up first.
func devKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	testLog.mu.Lock()
	defer testLog.mu.Unlock()
	runningTestLog(t)
	return testLog.key.Key
}

// A statement that names the image's versions: 'image verify' shows them, for the squashfs and the UEFI
// image, and refuses either once the manifest, which the host can edit, claims another Kubernetes version.
// A statement signed before it named versions still verifies, and says it has none.
func TestImageVerifySignedVersions(t *testing.T) {
	releaseKey := withReleaseRoot(t)
	dir := imageDirWithUEFI(t)
	rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: squashfsDigest, Cmdline: nodeimage.DefaultCmdline,
		Versions: nodeimage.Versions{Kubernetes: "v1.37.2"}, Version: "v0.4.0"})
	write(t, filepath.Join(dir, "node-image.json"), rawManifest)
	for _, img := range nodeimage.MeasuredImages {
		digest, err := nodeimage.ManifestDigest(filepath.Join(dir, img.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		meas, _ := os.ReadFile(filepath.Join(dir, img.Measurements))
		st, err := signed.Statement(img.Measurements, meas, signed.Predicate{ImageDigest: digest, Variant: img.Variant, KubernetesVersion: "v1.37.2", ImageVersion: "v0.4.0"})
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, img.Measurements+signed.BundleSuffix), signWith(t, releaseKey, st))
	}
	older := imageDirWithUEFI(t)
	signFile(t, releaseKey, older, "measurements.json", squashfsDigest, attestation.MiniVTPM.Name)
	stopTestLog(t)

	for _, img := range nodeimage.MeasuredImages {
		out, errOut, code := run("image", "verify", filepath.Join(dir, img.Measurements))
		if code != 0 || !strings.Contains(out, "versions: Kubernetes v1.37.2, image version v0.4.0") {
			t.Errorf("%s: exit %d\n%s%s", img.Measurements, code, out, errOut)
		}
	}
	if out, errOut, code := run("image", "verify", filepath.Join(older, "measurements.json")); code != 0 || !strings.Contains(out, "versions: none signed") {
		t.Errorf("measurements signed without versions: exit %d\n%s%s", code, out, errOut)
	}
	claims, _ := json.Marshal(nodeimage.Manifest{Digest: squashfsDigest, Cmdline: nodeimage.DefaultCmdline, Versions: nodeimage.Versions{Kubernetes: "v1.36.4"}, Version: "v0.4.0"})
	write(t, filepath.Join(dir, "node-image.json"), claims)
	for _, img := range nodeimage.MeasuredImages {
		_, errOut, code := run("image", "verify", filepath.Join(dir, img.Measurements))
		if code != 1 || !strings.Contains(errOut, "claims Kubernetes v1.36.4, but its signed measurements say Kubernetes v1.37.2") {
			t.Errorf("%s, the manifest claims another Kubernetes version: exit %d\n%s", img.Measurements, code, errOut)
		}
	}
}
