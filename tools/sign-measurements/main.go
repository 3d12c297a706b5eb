// Command sign-measurements signs a built node image's expected measurements with the development key and
// logs the signature in a local Rekor v2 transparency log, writing measurements.json.sigstore.json next to
// measurements.json (for mini-vtpm and the node image's digest) and, when the build made the bootable disk
// image, measurements-uefi.json.sigstore.json (for qemu-vtpm and the disk image's digest).
//
// The development key, the log's checkpoint key, the log itself and the trusted root a CLI needs to verify
// (trusted-root.json) live in the signing directory (-dir, default $CONSTELLATION_SIGNING_DIR or
// /var/cache/constellation/signing), outside the repository; keys are generated there on first use. The log
// server is started on 127.0.0.1 when none answers on -port and stopped again when signing is done. A bundle
// that still verifies for the current measurements is kept, so an unchanged image costs no signing.
package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

// Origin is the development log's checkpoint origin.
const Origin = "dev-log.constellation.invalid"

func main() {
	imageDir := flag.String("image-dir", "_out/node-image", "directory with node-image.json and measurements.json")
	dir := flag.String("dir", defaultDir(), "signing directory: development key, log key, log, trusted root")
	port := flag.Int("port", 3457, "loopback HTTP port of the log (gRPC and metrics take the next two)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	what, err := run(ctx, *imageDir, *dir, *port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sign-measurements:", err)
		os.Exit(1)
	}
	fmt.Printf("sign-measurements: %s in %s\n", what, time.Since(start).Round(10*time.Millisecond))
}

func defaultDir() string {
	if d := os.Getenv("CONSTELLATION_SIGNING_DIR"); d != "" {
		return d
	}
	return "/var/cache/constellation/signing"
}

func run(ctx context.Context, imageDir, dir string, port int) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("the signing directory: %w", err)
	}
	devKey, err := loadOrCreateKey(filepath.Join(dir, "dev-key.pem"))
	if err != nil {
		return "", err
	}
	logKey, err := loadOrCreateKey(filepath.Join(dir, "log-key.pem"))
	if err != nil {
		return "", err
	}
	root := signed.Root{
		Keys: []signed.Key{{Name: "development", Development: true, PublicKey: &devKey.PublicKey}},
		Log:  signed.Log{Origin: Origin, PublicKey: &logKey.PublicKey},
	}
	rawRoot, err := json.Marshal(root)
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(filepath.Join(dir, "trusted-root.json"), rawRoot, 0o644); err != nil {
		return "", fmt.Errorf("writing the trusted root: %w", err)
	}
	rawManifest, err := os.ReadFile(filepath.Join(imageDir, "node-image.json"))
	if err != nil {
		return "", fmt.Errorf("reading the node image manifest: %w (build the image first)", err)
	}
	var manifest nodeimage.Manifest
	if err := json.Unmarshal(rawManifest, &manifest); err != nil {
		return "", fmt.Errorf("node-image.json: %w", err)
	}
	targets := []target{{filepath.Join(imageDir, "measurements.json"), manifest.Digest, attestation.MiniVTPM.Name}}
	// The bootable disk image's measurements, for the QEMU provider's machines, when the build made one.
	if rawDisk, err := os.ReadFile(filepath.Join(imageDir, bootimage.ManifestFile)); err == nil {
		var disk bootimage.Disk
		if err := json.Unmarshal(rawDisk, &disk); err != nil {
			return "", fmt.Errorf("%s: %w", bootimage.ManifestFile, err)
		}
		targets = append(targets, target{filepath.Join(imageDir, bootimage.MeasurementsFile), disk.Digest, attestation.QEMUVTPM.Name})
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var done []string
	var stopLog func()
	defer func() {
		if stopLog != nil {
			stopLog()
		}
	}()
	for _, tg := range targets {
		what, err := tg.sign(ctx, root, devKey, logKey, dir, port, &stopLog)
		if err != nil {
			return "", err
		}
		done = append(done, what)
	}
	return strings.Join(done, "; "), nil
}

// target is a measurements file to sign for an image digest and a variant.
type target struct {
	measPath, digest, variant string
}

// sign signs the target's measurements unless its bundle still verifies. The log server is started once, on
// the first signature, if none answers; *stopLog then stops it.
func (tg target) sign(ctx context.Context, root signed.Root, devKey, logKey *ecdsa.PrivateKey, dir string, port int, stopLog *func()) (string, error) {
	meas, err := os.ReadFile(tg.measPath)
	if err != nil {
		return "", fmt.Errorf("reading the measurements: %w", err)
	}
	pred := signed.Predicate{ImageDigest: tg.digest, Variant: tg.variant}
	bundlePath := tg.measPath + signed.BundleSuffix
	if old, err := os.ReadFile(bundlePath); err == nil {
		if _, err := signed.Verify(root, old, meas, pred, true); err == nil {
			return filepath.Base(tg.measPath) + " signature up to date", nil
		}
	}
	stmt, err := signed.Statement(filepath.Base(tg.measPath), meas, pred)
	if err != nil {
		return "", err
	}
	logURL := "http://127.0.0.1:" + strconv.Itoa(port)
	if *stopLog == nil && !healthy(ctx, logURL) {
		bin := filepath.Join(dir, "rekor-server")
		if err := signtest.BuildServer(ctx, bin); err != nil {
			return "", err
		}
		log, err := signtest.Start(ctx, bin, filepath.Join(dir, "log"), Origin, logKey,
			signtest.Ports{HTTP: port, GRPC: port + 1, Metrics: port + 2})
		if err != nil {
			return "", err
		}
		*stopLog = func() { log.Stop() }
	}
	bundle, err := signed.Signer{Key: devKey, LogURL: logURL}.Sign(ctx, stmt)
	if err != nil {
		return "", err
	}
	// A log answering on the port that is not this directory's log would produce a bundle nobody trusts.
	if _, err := signed.Verify(root, bundle, meas, pred, true); err != nil {
		return "", fmt.Errorf("the fresh bundle does not verify against %s: %w", filepath.Join(dir, "trusted-root.json"), err)
	}
	if err := atomicfile.Write(bundlePath, bundle, 0o644); err != nil {
		return "", fmt.Errorf("writing the bundle: %w", err)
	}
	return "signed " + tg.measPath + " for " + tg.digest + " (" + tg.variant + ") with the development key, logged at " + logURL, nil
}

func healthy(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/healthz", nil)
	if err != nil {
		return false
	}
	// Whatever else listens on the port must not hang the build.
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	raw, err := atomicfile.ReadPrivate(path)
	if errors.Is(err, fs.ErrNotExist) {
		k := signtest.NewKey()
		pemKey, err := signed.PrivateKeyPEM(k)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.Write(path, pemKey, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", path, err)
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	k, err := signed.ParsePrivateKeyPEM(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
