package suite

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/kms/kmip/kmiptest"
)

func init() {
	register(Suite{Names: []string{"kms-derive"}, Run: runDerive})
	register(Suite{Names: []string{"kmip-unwrap"}, Run: runKMIPUnwrap})
}

// runDerive measures derivations per second on one core through the key service's derivation path
// (request parsing, bounds checks, HKDF-SHA256 expand from the precomputed extract).
func runDerive(context.Context) ([]Result, error) {
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		return nil, err
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		return nil, err
	}
	s := keyservice.New(d, nil)
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("disk-key/0b6c3a2e-6a64-4a6f-9d4e-%012d", i)
	}
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	var derr error
	res := testing.Benchmark(func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.DataKey(ids[i%len(ids)], 32); err != nil {
				derr = err
				b.FailNow()
			}
			i++
		}
	})
	if derr != nil {
		return nil, derr
	}
	return []Result{{"kms-derive", float64(time.Second) / float64(res.NsPerOp()), "derivations/s"}}, nil
}

// runKMIPUnwrap measures the median time to unwrap the master secret with a KEK held by a real KMIP server
// (pykmip-server on loopback, mutual TLS).
func runKMIPUnwrap(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-kmip-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	srv, err := kmiptest.Start(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	c, err := kmip.New(srv.Config())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	kek, err := c.CreateKEK(ctx, "bench-kek")
	if err != nil {
		return nil, err
	}
	secret, err := kms.GenerateMasterSecret()
	if err != nil {
		return nil, err
	}
	aad := []byte("bench")
	w, err := c.Wrap(ctx, kek, secret.Key, aad)
	if err != nil {
		return nil, err
	}
	ds, err := interleavedMedians(50, func() error {
		_, err := c.Unwrap(ctx, w, aad)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{{"kmip-unwrap", ms(ds[0]), "ms"}}, nil
}
