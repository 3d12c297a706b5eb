package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrNotPrivate is wrapped by ReadPrivate's error for a file that group or others may access.
var ErrNotPrivate = errors.New("it must be readable by its owner only")

// ReadPrivate reads the file at path, which must be accessible by its owner only (no permission bits for group
// or others), as a file that holds a secret. It checks the mode of the file it opened, so the file cannot be
// swapped between the check and the read. The error names the file; for a missing file it wraps
// fs.ErrNotExist, for one that others may access ErrNotPrivate, with the mode and the chmod that fixes it.
func ReadPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o, but %w (chmod 600 %s)", path, perm, ErrNotPrivate, path)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return raw, nil
}
