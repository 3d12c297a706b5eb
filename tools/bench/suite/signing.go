package suite

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
)

func init() {
	register(Suite{Names: []string{"measurements-verify"}, Run: runMeasurementsVerify})
}

// runMeasurementsVerify measures one offline verification of a signed measurements bundle on one core: bundle
// parse, signature, inclusion proof, signed checkpoint, artifact digest, statement. The bundle is signed with a
// log on loopback that is stopped before the measurement starts.
func runMeasurementsVerify(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-signed-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "rekor-server")
	if err := signtest.BuildServer(ctx, bin); err != nil {
		return nil, err
	}
	ports, err := signtest.FreePorts()
	if err != nil {
		return nil, err
	}
	log, err := signtest.Start(ctx, bin, filepath.Join(dir, "log"), "bench.log.invalid", signtest.NewKey(), ports)
	if err != nil {
		return nil, err
	}
	key := signtest.NewKey()
	meas := []byte(`{"4":{"expected":"` + strings.Repeat("ab", 32) + `"},"8":{"expected":"` + strings.Repeat("cd", 32) + `"}}`)
	want := signed.Predicate{ImageDigest: "sha256:" + strings.Repeat("01", 32), Variant: attestation.MiniVTPM.Name}
	st, err := signed.Statement("measurements.json", meas, want)
	if err != nil {
		log.Stop()
		return nil, err
	}
	bundle, err := signed.Signer{Key: key, LogURL: log.URL}.Sign(ctx, st)
	log.Stop()
	if err != nil {
		return nil, err
	}
	root := signed.Root{Keys: []signed.Key{{Name: "bench", PublicKey: &key.PublicKey}}, Log: log.Log}
	rate, err := perSecondOneCore(func() error {
		_, err := signed.Verify(root, bundle, meas, want, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{{"measurements-verify", 1000 / rate, "ms"}}, nil
}
