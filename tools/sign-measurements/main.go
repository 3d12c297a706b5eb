// Command sign-measurements signs a built node image's expected measurements (measurements.json of the
// squashfs image, measurements-uefi.json of the UEFI disk image, each for the digest in its manifest) and logs
// the signatures in a Rekor v2 transparency log, writing <measurements file>.sigstore.json next to each.
//
//	sign-measurements [-image-dir DIR] [-dir DIR] [-port N]                  development signing (make node-image)
//	sign-measurements release-key [-dir DIR] [-origin HOST] [-install]       create the release key pair (once)
//	sign-measurements release [-image-dir DIR] [-dir DIR] [-port N]          release signing (make release)
//
// Development signing: the development key, the log's checkpoint key, the log itself and the trusted root a
// CLI needs to verify (trusted-root.json) live in the signing directory (-dir, default
// $CONSTELLATION_SIGNING_DIR or /var/cache/constellation/signing), outside the repository; keys are generated
// there on first use.
//
// Release signing: the release directory (-dir, default $CONSTELLATION_RELEASE_DIR) holds the release key
// and the release log's checkpoint key, both encrypted (sigstore's scrypt + secretbox PEM) under the passphrase
// in $CONSTELLATION_RELEASE_KEY_PASSPHRASE, which is read from the environment only and removed from it before
// any other process starts; the release log; and release-root.json, the root every CLI built from the
// repository embeds (release-key -install copies it to the repository). Release signing refuses a release
// directory whose root is not the embedded one: a CLI built from this commit could not verify its bundles.
//
// The log server is started on 127.0.0.1 when none answers on -port and stopped again when signing is done.
// A bundle that still verifies for the current measurements is kept, so an unchanged image costs no signing.
package main

import (
	"bytes"
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
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

const (
	// Origin is the development log's checkpoint origin.
	Origin = "dev-log.constellation.invalid"
	// ReleaseOrigin is the release log's checkpoint origin, unless release-key is told another.
	ReleaseOrigin = "release-log.constellation.invalid"
	// PassphraseEnv names the environment variable with the passphrase of the release keys.
	PassphraseEnv = "CONSTELLATION_RELEASE_KEY_PASSPHRASE"
)

// Files of the release directory.
const (
	releaseKeyFile    = "release-key.pem"
	releasePubFile    = "release-key.pub"
	releaseLogKeyFile = "log-key.pem"
	releaseRootFile   = "release-root.json"
)

func main() {
	args := os.Args[1:]
	mode := "dev"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mode, args = args[0], args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	what, err := runMode(ctx, mode, args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sign-measurements:", err)
		os.Exit(1)
	}
	fmt.Printf("sign-measurements: %s in %s\n", what, time.Since(start).Round(10*time.Millisecond))
}

func runMode(ctx context.Context, mode string, args []string) (string, error) {
	fl := flag.NewFlagSet("sign-measurements "+mode, flag.ContinueOnError)
	imageDir := fl.String("image-dir", "_out/node-image", "directory with the node image's manifests and measurements")
	defaultPort := 3457
	if mode == "release" {
		defaultPort = 3467 // never the development log's
	}
	port := fl.Int("port", defaultPort, "loopback HTTP port of the log (gRPC and metrics take the next two)")
	switch mode {
	case "dev":
		dir := fl.String("dir", defaultDir("CONSTELLATION_SIGNING_DIR", "/var/cache/constellation/signing"), "signing directory: development key, log key, log, trusted root")
		if err := fl.Parse(args); err != nil {
			return "", err
		}
		return runDev(ctx, *imageDir, *dir, portsFrom(*port))
	case "release-key":
		dir := fl.String("dir", os.Getenv("CONSTELLATION_RELEASE_DIR"), "release directory to create the keys in ($CONSTELLATION_RELEASE_DIR)")
		origin := fl.String("origin", ReleaseOrigin, "the release log's checkpoint origin (a host name)")
		install := fl.Bool("install", false, "also write the release root to "+signed.ReleaseRootFile+" (run from the repository's root, then commit it)")
		if err := fl.Parse(args); err != nil {
			return "", err
		}
		pass, err := passphrase()
		if err != nil {
			return "", err
		}
		installTo := ""
		if *install {
			installTo = signed.ReleaseRootFile
		}
		return createReleaseKeys(*dir, *origin, pass, installTo)
	case "release":
		dir := fl.String("dir", os.Getenv("CONSTELLATION_RELEASE_DIR"), "release directory ($CONSTELLATION_RELEASE_DIR)")
		if err := fl.Parse(args); err != nil {
			return "", err
		}
		pass, err := passphrase()
		if err != nil {
			return "", err
		}
		embedded, err := signed.ReleaseRoot()
		if err != nil {
			return "", err
		}
		return runRelease(ctx, *imageDir, *dir, portsFrom(*port), pass, embedded)
	default:
		return "", fmt.Errorf("unknown mode %q: dev (the default), release-key or release", mode)
	}
}

// portsFrom returns the log's ports: HTTP on port, gRPC and metrics on the next two.
func portsFrom(port int) signtest.Ports {
	return signtest.Ports{HTTP: port, GRPC: port + 1, Metrics: port + 2}
}

func defaultDir(env, def string) string {
	if d := os.Getenv(env); d != "" {
		return d
	}
	return def
}

// passphrase reads the release keys' passphrase from the environment and removes it from there, so that no
// process this one starts (the log server) inherits it.
func passphrase() ([]byte, error) {
	pass, ok := os.LookupEnv(PassphraseEnv)
	os.Unsetenv(PassphraseEnv)
	if !ok || pass == "" {
		return nil, fmt.Errorf("no passphrase for the release keys: set %s in the environment (it is never read from the command line)", PassphraseEnv)
	}
	return []byte(pass), nil
}

func runDev(ctx context.Context, imageDir, dir string, ports signtest.Ports) (string, error) {
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
	s := imageSigner{key: devKey, keyName: "the development key", root: root, logKey: logKey, logDir: filepath.Join(dir, "log"), serverDir: dir, ports: ports}
	return s.signAll(ctx, imageDir)
}

// createReleaseKeys creates the release key and the release log's checkpoint key in dir, both encrypted under
// pass, and the release root; it refuses a directory that has keys already. With installTo it also writes
// the root there (the repository's embedded root).
func createReleaseKeys(dir, origin string, pass []byte, installTo string) (string, error) {
	if dir == "" {
		return "", errors.New("no release directory: pass -dir or set CONSTELLATION_RELEASE_DIR")
	}
	for _, f := range []string{releaseKeyFile, releaseLogKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return "", fmt.Errorf("%s exists already: a release key is created once; remove the directory's keys yourself to replace them", filepath.Join(dir, f))
		}
	}
	releaseKey, logKey := signtest.NewKey(), signtest.NewKey()
	root := signed.Root{
		Keys: []signed.Key{{Name: "release", PublicKey: &releaseKey.PublicKey}},
		Log:  signed.Log{Origin: origin, PublicKey: &logKey.PublicKey},
	}
	// Everything is encoded before anything is written: a bad origin writes nothing.
	rawRoot, err := root.MarshalJSON()
	if err != nil {
		return "", err
	}
	if _, err := signed.ParseRoot(rawRoot); err != nil {
		return "", err
	}
	encKey, err := signed.EncryptPrivateKeyPEM(releaseKey, pass)
	if err != nil {
		return "", err
	}
	encLogKey, err := signed.EncryptPrivateKeyPEM(logKey, pass)
	if err != nil {
		return "", err
	}
	pub, err := signed.PublicKeyPEM(&releaseKey.PublicKey)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("the release directory: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{releaseKeyFile, encKey, 0o600}, {releaseLogKeyFile, encLogKey, 0o600},
		{releasePubFile, []byte(pub), 0o644}, {releaseRootFile, rawRoot, 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return "", fmt.Errorf("writing %s: %w", f.name, err)
		}
	}
	what := "created the release key and the release log's key (encrypted) in " + dir + ", release root " + filepath.Join(dir, releaseRootFile)
	if installTo != "" {
		if err := atomicfile.Write(installTo, append(rawRoot, '\n'), 0o644); err != nil {
			return "", fmt.Errorf("installing the release root: %w", err)
		}
		what += "; installed it as " + installTo + ": commit it"
	} else {
		what += "; copy it to " + signed.ReleaseRootFile + " and commit it"
	}
	return what, nil
}

// runRelease signs the image's measurements with the release key of dir, in the release log of dir, after
// checking that dir's root is embedded, the root CLIs built from this repository trust.
func runRelease(ctx context.Context, imageDir, dir string, ports signtest.Ports, pass []byte, embedded signed.Root) (string, error) {
	if dir == "" {
		return "", errors.New("no release directory: pass -dir or set CONSTELLATION_RELEASE_DIR")
	}
	readKey := func(name string) (*ecdsa.PrivateKey, error) {
		raw, err := atomicfile.ReadPrivate(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("reading the release key: %w (create the keys once with 'sign-measurements release-key')", err)
		}
		k, err := signed.DecryptPrivateKeyPEM(raw, pass)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
		}
		return k, nil
	}
	releaseKey, err := readKey(releaseKeyFile)
	if err != nil {
		return "", err
	}
	logKey, err := readKey(releaseLogKeyFile)
	if err != nil {
		return "", err
	}
	rawRoot, err := os.ReadFile(filepath.Join(dir, releaseRootFile))
	if err != nil {
		return "", fmt.Errorf("reading the release root: %w", err)
	}
	root, err := signed.ParseRoot(rawRoot)
	if err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(dir, releaseRootFile), err)
	}
	if !root.Log.PublicKey.Equal(&logKey.PublicKey) || !slicesContainsKey(root, &releaseKey.PublicKey) {
		return "", fmt.Errorf("%s does not hold the keys of %s", filepath.Join(dir, releaseRootFile), dir)
	}
	if !sameRoot(root, embedded) {
		return "", fmt.Errorf("the release root of %s is not the one embedded in the CLI (%s): a CLI built from this repository "+
			"could not verify the release; install the release root (sign-measurements release-key -install writes it) and commit it", dir, signed.ReleaseRootFile)
	}
	s := imageSigner{key: releaseKey, keyName: "the release key", root: root, logKey: logKey, logDir: filepath.Join(dir, "log"), serverDir: dir, ports: ports, release: true}
	return s.signAll(ctx, imageDir)
}

func slicesContainsKey(r signed.Root, pub *ecdsa.PublicKey) bool {
	for _, k := range r.Keys {
		if k.PublicKey.Equal(pub) && !k.Development {
			return true
		}
	}
	return false
}

// sameRoot reports whether two roots trust the same keys (with the same development marking) and log.
func sameRoot(a, b signed.Root) bool {
	ra, errA := json.Marshal(a)
	rb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ra, rb)
}

// imageSigner signs the measurements of an image directory with key, in the log of root.
type imageSigner struct {
	key       *ecdsa.PrivateKey
	keyName   string
	root      signed.Root
	logKey    *ecdsa.PrivateKey
	logDir    string // the log's storage
	serverDir string // where the log server binary is built
	ports     signtest.Ports
	release   bool
}

// signAll signs each measured image of imageDir that the directory has; the squashfs image's must be there.
func (s imageSigner) signAll(ctx context.Context, imageDir string) (string, error) {
	var done []string
	var stopLog func()
	defer func() {
		if stopLog != nil {
			stopLog()
		}
	}()
	for i, img := range nodeimage.MeasuredImages {
		measPath := filepath.Join(imageDir, img.Measurements)
		meas, err := os.ReadFile(measPath)
		if errors.Is(err, fs.ErrNotExist) && i > 0 {
			continue // a build without the UEFI image
		}
		if err != nil {
			return "", fmt.Errorf("reading the measurements: %w (build the image first)", err)
		}
		digest, err := nodeimage.ManifestDigest(filepath.Join(imageDir, img.Manifest))
		if err != nil {
			return "", err
		}
		pred, err := predicate(imageDir, img, digest)
		if err != nil {
			return "", err
		}
		bundlePath := measPath + signed.BundleSuffix
		if old, err := os.ReadFile(bundlePath); err == nil {
			if _, err := signed.Verify(s.root, old, meas, pred, !s.release); err == nil {
				done = append(done, img.Measurements+" up to date")
				continue
			}
		}
		stmt, err := signed.Statement(img.Measurements, meas, pred)
		if err != nil {
			return "", err
		}
		logURL := "http://127.0.0.1:" + strconv.Itoa(s.ports.HTTP)
		if stopLog == nil && !healthy(ctx, logURL) {
			bin := filepath.Join(s.serverDir, "rekor-server")
			if err := signtest.BuildServer(ctx, bin); err != nil {
				return "", err
			}
			log, err := signtest.Start(ctx, bin, s.logDir, s.root.Log.Origin, s.logKey, s.ports)
			if err != nil {
				return "", err
			}
			stopLog = log.Stop
		}
		bundle, err := signed.Signer{Key: s.key, LogURL: logURL}.Sign(ctx, stmt)
		if err != nil {
			return "", err
		}
		// A log answering on the port that is not this directory's log would produce a bundle nobody trusts.
		if _, err := signed.Verify(s.root, bundle, meas, pred, !s.release); err != nil {
			return "", fmt.Errorf("the fresh bundle does not verify against the root of %s: %w", s.serverDir, err)
		}
		if err := atomicfile.Write(bundlePath, bundle, 0o644); err != nil {
			return "", fmt.Errorf("writing the bundle: %w", err)
		}
		done = append(done, "signed "+img.Measurements+" for "+digest+" (Kubernetes "+pred.KubernetesVersion+", version "+pred.ImageVersion+")")
	}
	return strings.Join(done, ", ") + " (" + s.keyName + ", log " + s.root.Log.Origin + ")", nil
}

// predicate is what the statement of img says: its digest and variant, and the Kubernetes version and the
// version of the squashfs image's manifest (node-image.json), which the UEFI disk image shares: its manifest
// names the squashfs image as its root filesystem, which is checked here. A bundle signed before the versions
// were part of the statement does not verify for it, and is signed again.
func predicate(imageDir string, img nodeimage.MeasuredImage, digest string) (signed.Predicate, error) {
	m, err := nodeimage.ReadManifest(filepath.Join(imageDir, nodeimage.ManifestFile))
	if err != nil {
		return signed.Predicate{}, fmt.Errorf("the image's versions: %w", err)
	}
	if img.Manifest != nodeimage.ManifestFile {
		raw, err := os.ReadFile(filepath.Join(imageDir, img.Manifest))
		if err != nil {
			return signed.Predicate{}, fmt.Errorf("reading the image manifest: %w", err)
		}
		var disk struct {
			Root string `json:"root"`
		}
		if err := json.Unmarshal(raw, &disk); err != nil {
			return signed.Predicate{}, fmt.Errorf("%s: %w", filepath.Join(imageDir, img.Manifest), err)
		}
		if disk.Root != m.Digest {
			return signed.Predicate{}, fmt.Errorf("%s names the root filesystem %q, not the image %s of %s: its versions are unknown; build the images again",
				filepath.Join(imageDir, img.Manifest), disk.Root, m.Digest, nodeimage.ManifestFile)
		}
	}
	return signed.Predicate{ImageDigest: digest, Variant: img.Variant, KubernetesVersion: m.Versions.Kubernetes, ImageVersion: m.Version}, nil
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
