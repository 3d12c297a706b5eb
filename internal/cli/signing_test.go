package cli

import (
	"context"
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

// testLog is a transparency log on loopback, started by the first test that signs and stopped after all.
var testLog struct {
	once sync.Once
	dir  string
	log  *signtest.Log
	key  signed.Signer
	root signed.Root
	err  error
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

func startTestLog() {
	ctx := context.Background()
	if testLog.dir, testLog.err = os.MkdirTemp("", "cli-log-"); testLog.err != nil {
		return
	}
	bin := filepath.Join(testLog.dir, "rekor-server")
	if testLog.err = signtest.BuildServer(ctx, bin); testLog.err != nil {
		return
	}
	ports, err := signtest.FreePorts()
	if testLog.err = err; err != nil {
		return
	}
	testLog.log, testLog.err = signtest.Start(ctx, bin, filepath.Join(testLog.dir, "log"), "log.test.invalid", signtest.NewKey(), ports)
	if testLog.err != nil {
		return
	}
	devKey := signtest.NewKey()
	testLog.key = signed.Signer{Key: devKey, LogURL: testLog.log.URL}
	testLog.root = signed.Root{
		Keys: []signed.Key{{Name: "development", Development: true, PublicKey: &devKey.PublicKey}},
		Log:  testLog.log.Log,
	}
}

// signImage signs imageDir's measurements.json for the digest in its node-image.json with a development key
// and returns the flags that make a command trust that key: --trusted-root and --allow-dev-signed.
func signImage(t *testing.T, imageDir string) []string {
	t.Helper()
	testLog.once.Do(startTestLog)
	if testLog.err != nil {
		t.Fatalf("the test transparency log: %v", testLog.err)
	}
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
	st, err := signed.Statement("measurements.json", meas, signed.Predicate{ImageDigest: m.Digest, Variant: attestation.MiniVTPM.Name})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := testLog.key.Sign(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(imageDir, "measurements.json"+signed.BundleSuffix), bundle)
	rawRoot, err := json.Marshal(testLog.root)
	if err != nil {
		t.Fatal(err)
	}
	rootPath := filepath.Join(t.TempDir(), "trusted-root.json")
	write(t, rootPath, rawRoot)
	return []string{"--trusted-root", rootPath, "--allow-dev-signed"}
}
