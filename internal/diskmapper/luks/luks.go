package luks

import "errors"

// KeySize is the size of a disk key (kms.DiskKeySize).
const KeySize = 64

// ErrNotSupported is returned by the operations that need libcryptsetup in a binary built without cgo.
var ErrNotSupported = errors.New("LUKS2 state disks need libcryptsetup: this binary was built without cgo (CGO_ENABLED=0) or not for Linux")

// ErrWrongKey is returned when a key opens no keyslot of the disk.
var ErrWrongKey = errors.New("wrong key")

// Mapping is an opened state disk.
type Mapping struct {
	// Name is the device-mapper name; Path is /dev/mapper/<Name>.
	Name, Path string
	// UUID is the disk's UUID.
	UUID string
}
