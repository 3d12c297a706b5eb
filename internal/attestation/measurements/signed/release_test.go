package signed_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
)

func TestEncryptedKey(t *testing.T) {
	key := signtest.NewKey()
	enc, err := signed.EncryptPrivateKeyPEM(key, []byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := signed.PrivateKeyPEM(key)
	if !bytes.Contains(enc, []byte(signed.EncryptedKeyPEMType)) || bytes.Equal(enc, plain) {
		t.Fatalf("not an encrypted PEM:\n%s", enc)
	}
	got, err := signed.DecryptPrivateKeyPEM(enc, []byte("correct horse"))
	if err != nil || !got.Equal(key) {
		t.Fatalf("DecryptPrivateKeyPEM = %v", err)
	}
	if _, err := signed.DecryptPrivateKeyPEM(enc, []byte("wrong horse")); !errors.Is(err, signed.ErrWrongPassphrase) {
		t.Errorf("a wrong passphrase: %v", err)
	}
	if _, err := signed.DecryptPrivateKeyPEM(enc, nil); err == nil {
		t.Error("no passphrase accepted")
	}
	if _, err := signed.DecryptPrivateKeyPEM(plain, []byte("correct horse")); err == nil || !strings.Contains(err.Error(), "not an encrypted key") {
		t.Errorf("a key in the clear: %v", err)
	}
	if _, err := signed.EncryptPrivateKeyPEM(key, nil); err == nil {
		t.Error("a key encrypted under an empty passphrase")
	}
}

// The release root the binary embeds is a usable release root.
func TestEmbeddedReleaseRoot(t *testing.T) {
	r, err := signed.ReleaseRoot()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Keys) == 0 || r.Log.PublicKey == nil || r.Log.Origin == "" {
		t.Fatalf("release root %+v", r)
	}
	if err := r.AsDevelopment().CheckRelease(); err == nil {
		t.Error("a root of development keys passes as a release root")
	}
}

// Several roots: a key is trusted with the log of its own root only, and a development key stays one.
func TestVerifyAny(t *testing.T) {
	fixtures(t)
	release := fx.root
	dev := signed.Root{Keys: []signed.Key{{Name: "development", Development: true, PublicKey: fx.untrustedKey.PublicKey}}, Log: fx.root.Log}
	roots := []signed.Root{release, dev}
	res, err := signed.VerifyAny(roots, fx.good, measurementsJSON, want, false)
	if err != nil || res.Key.Development {
		t.Fatalf("the release-signed bundle: %+v, %v", res, err)
	}
	if _, err := signed.VerifyAny(roots, fx.untrusted, measurementsJSON, want, false); err == nil || !strings.Contains(err.Error(), "--allow-dev-signed") {
		t.Fatalf("a development-signed bundle without consent: %v", err)
	}
	if res, err := signed.VerifyAny(roots, fx.untrusted, measurementsJSON, want, true); err != nil || !res.Key.Development {
		t.Fatalf("a development-signed bundle with consent: %+v, %v", res, err)
	}
	// The development key in a root whose log is another: the entry in the release log does not count for it.
	devOtherLog := dev
	devOtherLog.Log.PublicKey = &signtest.NewKey().PublicKey
	if _, err := signed.VerifyAny([]signed.Root{release, devOtherLog}, fx.untrusted, measurementsJSON, want, true); err == nil {
		t.Fatal("a key verified with the log of a root it is not in")
	}
	if _, err := signed.VerifyAny([]signed.Root{dev}, fx.good, measurementsJSON, want, true); err == nil || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("a bundle by a key of no root: %v", err)
	}
}

// FuzzParseCheckpoint feeds the checkpoint parser bytes derived from a genuine checkpoint: only the genuine
// checkpoint's content may come out.
func FuzzParseCheckpoint(f *testing.F) {
	key := signtest.NewKey()
	l := signed.Log{Origin: origin, PublicKey: &key.PublicKey}
	text := origin + "\n17\nq83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n"
	genuine := signCheckpoint(f, origin, key, text)
	f.Add(genuine)
	f.Add([]byte(text + "\n— " + origin + " AAAA\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cp, err := signed.ParseCheckpoint(l, raw)
		if err != nil {
			return
		}
		if cp.Origin != origin || cp.Size != 17 || cp.Hash.String() != "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=" {
			t.Fatalf("a checkpoint the log did not sign was accepted: %+v", cp)
		}
	})
}
