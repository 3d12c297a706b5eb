package kms

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/kms/kmip/kmiptest"
)

func startKMS(t *testing.T) (*kmiptest.Server, *kmip.Client) {
	t.Helper()
	srv := kmiptest.StartForTest(t)
	c, err := kmip.New(srv.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c
}

func TestWrapMasterSecret(t *testing.T) {
	_, c := startKMS(t)
	ctx := context.Background()
	kek, err := c.CreateKEK(ctx, "test-kek")
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := GenerateMasterSecret()
	f, err := WrapMasterSecret(ctx, c, kek, ms)
	if err != nil {
		t.Fatalf("WrapMasterSecret: %v", err)
	}
	raw, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, ms.Key) || strings.Contains(string(raw), base64.StdEncoding.EncodeToString(ms.Key)) {
		t.Fatal("the wrapped file contains the master key")
	}
	parsed, err := ParseSecretFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnwrapMasterSecret(ctx, c, parsed)
	if err != nil {
		t.Fatalf("UnwrapMasterSecret: %v", err)
	}
	if !bytes.Equal(got.Key, ms.Key) || !bytes.Equal(got.Salt, ms.Salt) {
		t.Fatal("unwrapped another secret")
	}

	t.Run("corrupted ciphertext is detected", func(t *testing.T) {
		bad := *parsed
		w := *bad.Wrapped
		w.Ciphertext = append([]byte(nil), w.Ciphertext...)
		w.Ciphertext[0] ^= 1
		bad.Wrapped = &w
		if _, err := UnwrapMasterSecret(ctx, c, &bad); !errors.Is(err, kmip.ErrIntegrity) {
			t.Fatalf("Unwrap of a corrupted secret = %v, want ErrIntegrity", err)
		}
	})
	t.Run("swapped salt is detected", func(t *testing.T) {
		bad := *parsed
		bad.Salt = bytes.Repeat([]byte{9}, MasterSaltSize)
		if _, err := UnwrapMasterSecret(ctx, c, &bad); !errors.Is(err, kmip.ErrIntegrity) {
			t.Fatalf("Unwrap with another salt = %v, want ErrIntegrity", err)
		}
	})
	t.Run("unknown key ID", func(t *testing.T) {
		if _, err := WrapMasterSecret(ctx, c, "does-not-exist", ms); !errors.Is(err, kmip.ErrKeyNotFound) {
			t.Fatalf("Wrap with an unknown KEK = %v, want ErrKeyNotFound", err)
		}
	})
	t.Run("no KMS configured", func(t *testing.T) {
		if _, err := UnwrapMasterSecret(ctx, nil, parsed); err == nil || !strings.Contains(err.Error(), "no KMS is configured") {
			t.Fatalf("Unwrap without a KMS = %v", err)
		}
	})
}

// TestRotateWhileNodeRestarts re-wraps the master secret with a new KEK while "nodes" keep restarting and
// unwrapping whatever copy of the file they read. Every unwrap must succeed: the old KEK stays usable until
// it is revoked, and the file is replaced atomically. After revocation only the new copy unwraps.
func TestRotateWhileNodeRestarts(t *testing.T) {
	_, c := startKMS(t)
	ctx := context.Background()
	oldKEK, err := c.CreateKEK(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	newKEK, err := c.CreateKEK(ctx, "new")
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := GenerateMasterSecret()
	f, err := WrapMasterSecret(ctx, c, oldKEK, ms)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), MasterSecretFileName)
	if err := WriteSecretFile(path, f, false); err != nil {
		t.Fatal(err)
	}
	oldCopy, _ := ReadSecretFile(path)

	// Nodes restart in a loop: read the file, unwrap. The rotation runs in the middle.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var restarts int
	var failures []error
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				sf, err := ReadSecretFile(path)
				if err == nil {
					var got *MasterSecret
					if got, err = UnwrapMasterSecret(ctx, c, sf); err == nil && !bytes.Equal(got.Key, ms.Key) {
						err = errors.New("unwrapped another key")
					}
				}
				mu.Lock()
				restarts++
				if err != nil {
					failures = append(failures, err)
				}
				mu.Unlock()
			}
		}()
	}
	rotated, err := RewrapMasterSecret(ctx, c, oldCopy, newKEK)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteSecretFile(path, rotated, true); err != nil {
		t.Fatal(err)
	}
	// A node that read the old file before the rotation unwraps it after the rotation.
	if _, err := UnwrapMasterSecret(ctx, c, oldCopy); err != nil {
		t.Fatalf("old copy after rotation: %v", err)
	}
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d restarts failed to unwrap, first: %v", len(failures), restarts, failures[0])
	}
	if cur, _ := ReadSecretFile(path); cur.Wrapped.KeyID != newKEK {
		t.Fatalf("file wrapped with %s, want %s", cur.Wrapped.KeyID, newKEK)
	}

	if err := c.RevokeKEK(ctx, oldKEK); err != nil {
		t.Fatal(err)
	}
	if _, err := UnwrapMasterSecret(ctx, c, oldCopy); !errors.Is(err, kmip.ErrKeyNotUsable) {
		t.Fatalf("old copy after revoking its KEK = %v, want ErrKeyNotUsable", err)
	}
	cur, _ := ReadSecretFile(path)
	if got, err := UnwrapMasterSecret(ctx, c, cur); err != nil || !bytes.Equal(got.Key, ms.Key) {
		t.Fatalf("current file after revoking the old KEK: %v", err)
	}
	if _, err := RewrapMasterSecret(ctx, c, cur, newKEK); err == nil {
		t.Fatal("re-wrap with the same KEK accepted")
	}
}

func TestUnreachableKMSWritesNothing(t *testing.T) {
	srv, c := startKMS(t)
	ctx := context.Background()
	kek, err := c.CreateKEK(ctx, "kek")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	cfg := srv.Config()
	cfg.Retries = 2
	down, err := kmip.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	ms, _ := GenerateMasterSecret()
	if _, err := WrapMasterSecret(ctx, down, kek, ms); !errors.Is(err, kmip.ErrUnreachable) {
		t.Fatalf("Wrap with the KMS down = %v, want ErrUnreachable", err)
	}
}
