package kmip_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/kms/kmip/kmiptest"
)

func newClient(t *testing.T, cfg kmip.Config) *kmip.Client {
	t.Helper()
	c, err := kmip.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// countAttempts makes c count its failed attempts.
func countAttempts(c *kmip.Client) *atomic.Int32 {
	var n atomic.Int32
	kmip.SetAttemptHook(c, func(int, error) { n.Add(1) })
	return &n
}

func createKEK(t *testing.T, c *kmip.Client, name string) string {
	t.Helper()
	id, err := c.CreateKEK(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func wrap(t *testing.T, c *kmip.Client, keyID string, plaintext, aad []byte) *kmip.Wrapped {
	t.Helper()
	w, err := c.Wrap(t.Context(), keyID, plaintext, aad)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func unwrapEqual(t *testing.T, c *kmip.Client, w *kmip.Wrapped, aad, want []byte) {
	t.Helper()
	got, err := c.Unwrap(t.Context(), w, aad)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("unwrapped secret differs from the wrapped one")
	}
}

func secret(t *testing.T) []byte {
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func wantErr(t *testing.T, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("got error %v, want %v", err, kind)
	}
}

func TestWrapUnwrap(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek := createKEK(t, c, "kek-roundtrip")
	if v := kmip.NegotiatedVersion(c); v != "1.4" {
		t.Errorf("negotiated KMIP %q, want 1.4", v)
	}
	plain, aad := secret(t), []byte("constellation/cluster-1/master-secret")

	w := wrap(t, c, kek, plain, aad)
	if w.Version != 1 || w.Algorithm != "AES-256-GCM" || w.KeyID != kek || len(w.IV) != 12 || len(w.Tag) != 16 {
		t.Fatalf("unexpected wrapped secret header: version %d, algorithm %q, key %q, IV %d bytes, tag %d bytes",
			w.Version, w.Algorithm, w.KeyID, len(w.IV), len(w.Tag))
	}
	if bytes.Equal(w.Ciphertext, plain) {
		t.Fatal("ciphertext equals plaintext")
	}
	unwrapEqual(t, c, w, aad, plain)

	w2 := wrap(t, c, kek, plain, aad)
	if bytes.Equal(w.IV, w2.IV) || bytes.Equal(w.Ciphertext, w2.Ciphertext) {
		t.Fatal("two wraps of the same plaintext share IV or ciphertext")
	}

	// Through the stored form.
	raw, err := json.Marshal(w2)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := kmip.ParseWrapped(raw)
	if err != nil {
		t.Fatal(err)
	}
	unwrapEqual(t, c, parsed, aad, plain)

	// No additional data is fine too, and must then be absent on unwrap as well.
	w3 := wrap(t, c, kek, plain, nil)
	unwrapEqual(t, c, w3, nil, plain)
	_, err = c.Unwrap(t.Context(), w3, aad)
	wantErr(t, err, kmip.ErrIntegrity)
}

func TestIntegrity(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek, kek2 := createKEK(t, c, "kek-integrity"), createKEK(t, c, "kek-integrity-other")
	plain, aad := secret(t), []byte("aad")
	w := wrap(t, c, kek, plain, aad)

	_, err := c.Unwrap(t.Context(), w, []byte("other aad"))
	wantErr(t, err, kmip.ErrIntegrity)
	if strings.Contains(err.Error(), fmt.Sprintf("%x", plain)) {
		t.Fatal("error contains the plaintext")
	}

	flip := func(field func(*kmip.Wrapped) []byte) {
		t.Helper()
		for _, bit := range []int{0, 7, 8*len(field(w)) - 1} {
			m := *w
			m.IV, m.Ciphertext, m.Tag = bytes.Clone(w.IV), bytes.Clone(w.Ciphertext), bytes.Clone(w.Tag)
			f := field(&m)
			f[bit/8] ^= 1 << (bit % 8)
			got, err := c.Unwrap(t.Context(), &m, aad)
			if got != nil {
				t.Fatal("unwrap of a corrupted secret returned data")
			}
			wantErr(t, err, kmip.ErrIntegrity)
		}
	}
	flip(func(w *kmip.Wrapped) []byte { return w.Ciphertext })
	flip(func(w *kmip.Wrapped) []byte { return w.Tag })
	flip(func(w *kmip.Wrapped) []byte { return w.IV })

	// Wrapped under another key.
	other := *w
	other.KeyID = kek2
	_, err = c.Unwrap(t.Context(), &other, aad)
	wantErr(t, err, kmip.ErrIntegrity)

	// Truncated tag: rejected before it reaches the KMS, both when parsing and when unwrapping.
	short := *w
	short.Tag = w.Tag[:12]
	raw, err := json.Marshal(&short)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kmip.ParseWrapped(raw); err == nil {
		t.Fatal("ParseWrapped accepted a truncated tag")
	}
	if _, err := c.Unwrap(t.Context(), &short, aad); err == nil {
		t.Fatal("Unwrap accepted a truncated tag")
	}

	// The original still unwraps.
	unwrapEqual(t, c, w, aad, plain)
}

func TestUnknownKey(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek := createKEK(t, c, "kek-unknown")
	w := wrap(t, c, kek, secret(t), nil)
	for _, id := range []string{"424242", "no-such-key"} {
		_, err := c.Wrap(t.Context(), id, secret(t), nil)
		wantErr(t, err, kmip.ErrKeyNotFound)
		m := *w
		m.KeyID = id
		_, err = c.Unwrap(t.Context(), &m, nil)
		wantErr(t, err, kmip.ErrKeyNotFound)
		wantErr(t, c.RevokeKEK(t.Context(), id), kmip.ErrKeyNotFound)
		wantErr(t, c.DestroyKEK(t.Context(), id), kmip.ErrKeyNotFound)
	}
}

func TestRevokeDestroy(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek := createKEK(t, c, "kek-revoke")
	plain := secret(t)
	w := wrap(t, c, kek, plain, nil)

	if err := c.RevokeKEK(t.Context(), kek); err != nil {
		t.Fatal(err)
	}
	_, err := c.Wrap(t.Context(), kek, plain, nil)
	wantErr(t, err, kmip.ErrKeyNotUsable)
	_, err = c.Unwrap(t.Context(), w, nil)
	wantErr(t, err, kmip.ErrKeyNotUsable)
	wantErr(t, c.RevokeKEK(t.Context(), kek), kmip.ErrKeyNotUsable) // already revoked

	if err := c.DestroyKEK(t.Context(), kek); err != nil { // revoked: destroyed directly
		t.Fatal(err)
	}
	// pykmip deletes destroyed objects: not found.
	_, err = c.Unwrap(t.Context(), w, nil)
	wantErr(t, err, kmip.ErrKeyNotFound)
	t.Logf("unwrap after destroy: %v", err)
}

func TestUntrustedClientCertificate(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	cfg := srv.Config()
	cfg.ClientCert, cfg.ClientKey = srv.UntrustedClientCert, srv.UntrustedClientKey
	c := newClient(t, cfg)
	attempts := countAttempts(c)
	_, err := c.CreateKEK(t.Context(), "kek")
	wantErr(t, err, kmip.ErrAuthentication)
	if errors.Is(err, kmip.ErrUnreachable) {
		t.Fatalf("authentication failure also reported as unreachable: %v", err)
	}
	if n := attempts.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1 (authentication failures must not be retried)", n)
	}
	t.Log(err)
}

func TestClientCertificateWithoutClientAuth(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	cfg := srv.Config()
	cfg.ClientCert, cfg.ClientKey = srv.NoClientAuthCert, srv.NoClientAuthKey
	c := newClient(t, cfg)
	attempts := countAttempts(c)
	_, err := c.CreateKEK(t.Context(), "kek")
	wantErr(t, err, kmip.ErrAuthentication)
	if n := attempts.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1 (authentication failures must not be retried)", n)
	}
	t.Log(err)
}

func TestUntrustedServer(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	cfg := srv.Config()
	cfg.ServerCA = srv.UntrustedCA
	c := newClient(t, cfg)
	attempts := countAttempts(c)
	_, err := c.Wrap(t.Context(), "1", secret(t), nil)
	wantErr(t, err, kmip.ErrAuthentication)
	if n := attempts.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1 (authentication failures must not be retried)", n)
	}
	t.Log(err)
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek := createKEK(t, c, "kek-unreachable")
	plain := secret(t)
	w := wrap(t, c, kek, plain, nil)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}

	t.Run("gives up", func(t *testing.T) {
		cfg := srv.Config()
		cfg.Retries = 3
		c := newClient(t, cfg)
		attempts := countAttempts(c)
		_, err := c.Wrap(t.Context(), kek, plain, nil)
		wantErr(t, err, kmip.ErrUnreachable)
		if want := fmt.Sprintf("KMS at %s unreachable after 3 attempts", srv.Endpoint); !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
		if n := attempts.Load(); n != 3 {
			t.Fatalf("%d attempts, want 3", n)
		}
		t.Log(err)
	})

	t.Run("honours context", func(t *testing.T) {
		c := newClient(t, srv.Config())
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var attempts atomic.Int32
		kmip.SetAttemptHook(c, func(int, error) { attempts.Add(1); cancel() }) // cancel during the first backoff
		_, err := c.Unwrap(ctx, w, nil)
		wantErr(t, err, context.Canceled)
		if n := attempts.Load(); n != 1 {
			t.Fatalf("%d attempts after cancellation, want 1", n)
		}
	})

	t.Run("server comes back during retries", func(t *testing.T) {
		// The client that was connected before the server went away: its connection is stale.
		var restartErr error
		restarted := make(chan struct{})
		var attempts []int
		kmip.SetAttemptHook(c, func(attempt int, err error) {
			attempts = append(attempts, attempt)
			if attempt == 1 {
				go func() {
					defer close(restarted)
					restartErr = srv.Restart(context.Background())
				}()
				return
			}
			<-restarted // the next attempt happens after the server is up
		})
		got, err := c.Unwrap(t.Context(), w, nil)
		<-restarted
		if restartErr != nil {
			t.Fatal(restartErr)
		}
		if err != nil {
			t.Fatalf("unwrap with the server restarting during retries: %v (failed attempts: %v)", err, attempts)
		}
		if !bytes.Equal(got, plain) {
			t.Fatal("wrong secret")
		}
		t.Logf("failed attempts before success: %v", attempts)
	})
}

func TestPersistenceAcrossRestart(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek := createKEK(t, c, "kek-persistent")
	plain, aad := secret(t), []byte("aad")
	w := wrap(t, c, kek, plain, aad)
	if err := srv.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	unwrapEqual(t, c, w, aad, plain)                          // the old client, whose connection died
	unwrapEqual(t, newClient(t, srv.Config()), w, aad, plain) // a new one
}

func TestRotation(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek1 := createKEK(t, c, "kek-1")
	plain, aad := secret(t), []byte("aad")
	w1 := wrap(t, c, kek1, plain, aad)

	kek2 := createKEK(t, c, "kek-2")
	if kek2 == kek1 {
		t.Fatal("same key ID for two KEKs")
	}
	got, err := c.Unwrap(t.Context(), w1, aad)
	if err != nil {
		t.Fatal(err)
	}
	w2 := wrap(t, c, kek2, got, aad)
	unwrapEqual(t, c, w2, aad, plain)
	unwrapEqual(t, c, w1, aad, plain) // the old blob works while KEK1 is active

	if err := c.DestroyKEK(t.Context(), kek1); err != nil { // active: revoked, then destroyed
		t.Fatal(err)
	}
	_, err = c.Unwrap(t.Context(), w1, aad)
	wantErr(t, err, kmip.ErrKeyNotFound)
	unwrapEqual(t, c, w2, aad, plain)
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	srv := kmiptest.StartForTest(t)
	c := newClient(t, srv.Config())
	kek := createKEK(t, c, "kek-concurrent")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			plain, aad := secret(t), fmt.Appendf(nil, "goroutine %d", i)
			for range 5 {
				w, err := c.Wrap(t.Context(), kek, plain, aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := c.Unwrap(t.Context(), w, aad)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, plain) {
					errs <- errors.New("wrong secret")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
