package cadir

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	notAfter := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	ca, err := LoadOrCreate(dir, "test CA", notAfter)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Cert.Subject.CommonName != "test CA" || !ca.Cert.IsCA || !ca.Cert.MaxPathLenZero || !ca.Cert.NotAfter.Equal(notAfter.UTC()) {
		t.Errorf("certificate: CN %q, CA %v, path length zero %v, not after %v", ca.Cert.Subject.CommonName, ca.Cert.IsCA, ca.Cert.MaxPathLenZero, ca.Cert.NotAfter)
	}
	if err := ca.Cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, KeyFile): 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, mode %v, want %v", path, err, fi.Mode(), want)
		}
	}
	again, err := LoadOrCreate(dir, "another name", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert.Equal(ca.Cert) || !again.Key.Equal(ca.Key) || !bytes.Equal(again.CertPEM, ca.CertPEM) {
		t.Error("loading the directory again gave another CA")
	}
}

// A CA directory that lost a file, or whose files do not belong together, is never replaced by a new CA (which
// would silently invalidate everything the old one signed); loading it fails and changes nothing.
func TestLoadOrCreateRefusesBrokenDirectories(t *testing.T) {
	other, err := LoadOrCreate(filepath.Join(t.TempDir(), "other"), "other", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := os.ReadFile(filepath.Join(other.Dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		change func(dir string) error
		want   string
	}{
		"key missing":         {func(dir string) error { return os.Remove(filepath.Join(dir, KeyFile)) }, "holds only one of"},
		"certificate missing": {func(dir string) error { return os.Remove(filepath.Join(dir, CertFile)) }, "holds only one of"},
		"another CA's key":    {func(dir string) error { return os.WriteFile(filepath.Join(dir, KeyFile), otherKey, 0o600) }, "does not match"},
		"key not PEM":         {func(dir string) error { return os.WriteFile(filepath.Join(dir, KeyFile), []byte("garbage"), 0o600) }, "no PEM EC PRIVATE KEY"},
		"certificate truncated": {func(dir string) error {
			return os.WriteFile(filepath.Join(dir, CertFile), other.CertPEM[:len(other.CertPEM)/2], 0o644)
		}, "no PEM CERTIFICATE"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if _, err := LoadOrCreate(dir, "test CA", time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := tc.change(dir); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			_, err := LoadOrCreate(dir, "test CA", time.Now().Add(time.Hour))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadOrCreate: %v, want an error containing %q", err, tc.want)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("the directory changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []string{KeyFile, CertFile} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		b.WriteString(f + ":" + string(data) + "|" + map[bool]string{true: "absent", false: ""}[os.IsNotExist(err)] + ";")
	}
	return b.String()
}
