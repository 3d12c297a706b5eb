package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A secret file is read only while its owner alone may access it; the refusal says which file, its mode and
// how to fix it.
func TestReadPrivate(t *testing.T) {
	dir := t.TempDir()
	private := filepath.Join(dir, "private")
	if err := os.WriteFile(private, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if raw, err := ReadPrivate(private); err != nil || string(raw) != "secret" {
		t.Fatalf("ReadPrivate of a 0600 file = %q, %v", raw, err)
	}

	shared := filepath.Join(dir, "shared")
	if err := os.WriteFile(shared, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o644); err != nil { // past the umask
		t.Fatal(err)
	}
	raw, err := ReadPrivate(shared)
	if !errors.Is(err, ErrNotPrivate) || raw != nil {
		t.Fatalf("ReadPrivate of a 0644 file = %q, %v, want ErrNotPrivate", raw, err)
	}
	for _, want := range []string{shared, "0644", "chmod 600 " + shared} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not say %q", err, want)
		}
	}

	missing := filepath.Join(dir, "missing")
	if _, err := ReadPrivate(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("ReadPrivate of a missing file = %v, want fs.ErrNotExist naming the file", err)
	}
}
