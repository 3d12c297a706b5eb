package diskmapper

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KeyIdentifier identifies an fscrypt v2 master key: the kernel derives it from the key, so two different keys
// never share an identifier.
type KeyIdentifier [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte

func (id KeyIdentifier) String() string { return fmt.Sprintf("%x", id[:]) }

// MinKeySize is the smallest key AES-256-XTS contents encryption accepts.
const MinKeySize = 64

// maxKeySize is the kernel's limit on a raw master key.
const maxKeySize = 64

// addKey adds a master key to the filesystem mounted at mountpoint and returns its identifier. Adding a key
// that is already present is harmless.
func addKey(mountpoint string, key []byte) (KeyIdentifier, error) {
	var id KeyIdentifier
	if len(key) < MinKeySize || len(key) > maxKeySize {
		return id, fmt.Errorf("disk key has %d bytes, want %d", len(key), MinKeySize)
	}
	f, err := os.Open(mountpoint)
	if err != nil {
		return id, err
	}
	defer f.Close()
	// struct fscrypt_add_key_arg followed by the raw key.
	buf := make([]byte, unsafe.Sizeof(unix.FscryptAddKeyArg{})+uintptr(len(key)))
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = uint32(len(key))
	copy(buf[unsafe.Sizeof(unix.FscryptAddKeyArg{}):], key)
	defer clear(buf)
	if err := ioctl(f, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&buf[0])); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
			return id, fmt.Errorf("adding the disk key: the filesystem does not support encryption (format it with -O encrypt): %w", err)
		}
		return id, fmt.Errorf("adding the disk key: %w", err)
	}
	copy(id[:], arg.Key_spec.U[:len(id)])
	return id, nil
}

// removeKey removes a master key: files under it become unreadable once no process holds them open.
func removeKey(mountpoint string, id KeyIdentifier) error {
	f, err := os.Open(mountpoint)
	if err != nil {
		return err
	}
	defer f.Close()
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(f, unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("removing the disk key: %w", err)
	}
	return nil
}

// setPolicy encrypts the empty directory dir with the key id: everything created below it is encrypted.
func setPolicy(dir string, id KeyIdentifier) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	p := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     id,
	}
	if err := ioctl(f, unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&p)); err != nil {
		return fmt.Errorf("encrypting %s: %w", dir, err)
	}
	return nil
}

// policyKey returns the key identifier dir is encrypted with; ok is false if dir is not encrypted.
func policyKey(dir string) (id KeyIdentifier, ok bool, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return id, false, err
	}
	defer f.Close()
	arg := unix.FscryptGetPolicyExArg{Size: uint64(len(unix.FscryptGetPolicyExArg{}.Policy))}
	if err := ioctl(f, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); err != nil {
		if errors.Is(err, unix.ENODATA) {
			return id, false, nil
		}
		return id, false, fmt.Errorf("reading the encryption policy of %s: %w", dir, err)
	}
	if arg.Policy[0] != unix.FSCRYPT_POLICY_V2 {
		return id, false, fmt.Errorf("%s is encrypted with policy version %d, want %d", dir, arg.Policy[0], unix.FSCRYPT_POLICY_V2)
	}
	p := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	return KeyIdentifier(p.Master_key_identifier), true, nil
}

func ioctl(f *os.File, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}
