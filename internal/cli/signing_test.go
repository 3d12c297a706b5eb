package cli

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

// testLog is a transparency log on loopback, started by the first test that signs, stopped by a test that
// verifies with the log gone (stopTestLog) or after all tests, and started again on the same storage by the
// next test that signs.
var testLog struct {
	mu      sync.Mutex
	dir     string
	bin     string
	logKey  *ecdsa.PrivateKey
	log     *signtest.Log
	stopped *signtest.Log // the last log stopped, for its tiles
	key     signed.Signer
	root    signed.Root
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testLog.log != nil {
		testLog.log.Stop()
	}
	if testLog.dir != "" {
		os.RemoveAll(testLog.dir)
	}
	os.Exit(code)
}

// runningTestLog starts the test log unless it runs.
func runningTestLog(t *testing.T) *signtest.Log {
	t.Helper()
	ctx := context.Background()
	if testLog.log != nil {
		return testLog.log
	}
	if testLog.dir == "" {
		dir, err := os.MkdirTemp("", "cli-log-")
		if err != nil {
			t.Fatal(err)
		}
		testLog.dir, testLog.bin = dir, filepath.Join(dir, "rekor-server")
		if err := signtest.BuildServer(ctx, testLog.bin); err != nil {
			t.Fatal(err)
		}
		testLog.logKey = signtest.NewKey()
		devKey := signtest.NewKey()
		testLog.key = signed.Signer{Key: devKey}
		testLog.root = signed.Root{
			Keys: []signed.Key{{Name: "development", Development: true, PublicKey: &devKey.PublicKey}},
			Log:  signed.Log{Origin: "log.test.invalid", PublicKey: &testLog.logKey.PublicKey},
		}
	}
	ports, err := signtest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	l, err := signtest.Start(ctx, testLog.bin, filepath.Join(testLog.dir, "log"), testLog.root.Log.Origin, testLog.logKey, ports)
	if err != nil {
		t.Fatalf("the test transparency log: %v", err)
	}
	testLog.log = l
	return l
}

// stopTestLog stops the test log: what a test verifies next, it verifies without it.
func stopTestLog(t *testing.T) {
	t.Helper()
	testLog.mu.Lock()
	defer testLog.mu.Unlock()
	if testLog.log != nil {
		testLog.log.Stop()
		testLog.stopped, testLog.log = testLog.log, nil
	}
}

// signWith signs the statement with key in the test log.
func signWith(t *testing.T, key *ecdsa.PrivateKey, st []byte) []byte {
	t.Helper()
	testLog.mu.Lock()
	defer testLog.mu.Unlock()
	l := runningTestLog(t)
	bundle, err := signed.Signer{Key: key, LogURL: l.URL}.Sign(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return bundle
}

// signImage signs imageDir's measurements.json for the digest and the versions in its node-image.json with a
// development key and returns the flags that make a command trust that key: --trusted-root and
// --allow-dev-signed.
func signImage(t *testing.T, imageDir string) []string {
	t.Helper()
	testLog.mu.Lock()
	runningTestLog(t)
	testLog.mu.Unlock()
	meas, err := os.ReadFile(filepath.Join(imageDir, "measurements.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m nodeimage.Manifest
	raw, err := os.ReadFile(filepath.Join(imageDir, "node-image.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	st, err := signed.Statement("measurements.json", meas, signed.Predicate{ImageDigest: m.Digest, Variant: attestation.MiniVTPM.Name,
		KubernetesVersion: m.Versions.Kubernetes, ImageVersion: m.Version})
	if err != nil {
		t.Fatal(err)
	}
	bundle := signWith(t, testLog.key.Key, st)
	write(t, filepath.Join(imageDir, "measurements.json"+signed.BundleSuffix), bundle)
	rawRoot, err := json.Marshal(testLog.root)
	if err != nil {
		t.Fatal(err)
	}
	rootPath := filepath.Join(t.TempDir(), "trusted-root.json")
	write(t, rootPath, rawRoot)
	return []string{"--trusted-root", rootPath, "--allow-dev-signed"}
}
