//go:build !linux || !cgo

package luks

// Format needs libcryptsetup: see the cgo build.
func Format(path string) (uuid string, firstBootKey []byte, err error) {
	return "", nil, ErrNotSupported
}

// SetKey needs libcryptsetup: see the cgo build.
func SetKey(path string, oldKey, newKey []byte) error { return ErrNotSupported }

// Open needs libcryptsetup: see the cgo build.
func Open(path, name string, key []byte) (*Mapping, error) { return nil, ErrNotSupported }

// Close needs libcryptsetup: see the cgo build.
func (m *Mapping) Close() error { return ErrNotSupported }

// MarkReset needs libcryptsetup: see the cgo build.
func MarkReset(path string) error { return ErrNotSupported }

// ResetIfMarked needs libcryptsetup: see the cgo build.
func ResetIfMarked(path string) (bool, error) { return false, ErrNotSupported }

// Supported reports why this binary cannot use LUKS2 state disks: it was built without libcryptsetup.
func Supported() error { return ErrNotSupported }
