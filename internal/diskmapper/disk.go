package diskmapper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/diskmapper/luks"
)

// StateDirName is the encrypted directory on the state disk that holds the node's state.
const StateDirName = "state"

// ext4 superblock layout (the parts read here).
const (
	superblockOffset = 1024
	superblockSize   = 1024
	magicOffset      = 0x38
	uuidOffset       = 0x68
	featureIncompat  = 0x60
	ext4Magic        = 0xEF53
	incompatEncrypt  = 0x10000
)

// ErrNoFilesystem is returned for a disk that holds no ext4 filesystem yet (a new disk).
var ErrNoFilesystem = errors.New("the disk holds no ext4 filesystem")

// ParseSuperblock returns the UUID of an ext4 superblock (1024 bytes read at offset 1024 of the disk) and
// whether the filesystem supports encryption.
func ParseSuperblock(sb []byte) (uuid string, encrypt bool, err error) {
	if len(sb) != superblockSize {
		return "", false, fmt.Errorf("superblock has %d bytes, want %d", len(sb), superblockSize)
	}
	if binary.LittleEndian.Uint16(sb[magicOffset:]) != ext4Magic {
		return "", false, ErrNoFilesystem
	}
	u := sb[uuidOffset : uuidOffset+16]
	if string(u) == string(make([]byte, 16)) {
		return "", false, errors.New("the filesystem has no UUID")
	}
	uuid = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	return uuid, binary.LittleEndian.Uint32(sb[featureIncompat:])&incompatEncrypt != 0, nil
}

// ReadUUID returns the UUID of the ext4 filesystem on the disk image (stored in plain text), or
// ErrNoFilesystem for a new disk.
func ReadUUID(image string) (string, error) {
	f, err := os.Open(image)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sb := make([]byte, superblockSize)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		if errors.Is(err, io.EOF) {
			return "", ErrNoFilesystem
		}
		return "", fmt.Errorf("reading the superblock of %s: %w", image, err)
	}
	uuid, encrypt, err := ParseSuperblock(sb)
	if err != nil {
		return "", fmt.Errorf("%s: %w", image, err)
	}
	if !encrypt {
		return "", fmt.Errorf("%s: the filesystem does not support encryption; it is not a state disk of this product", image)
	}
	return uuid, nil
}

// Format makes a new disk image an ext4 filesystem with encryption support and returns its UUID. It refuses
// a disk that already holds a filesystem: a state disk is never formatted twice by accident.
func Format(ctx context.Context, image string) (string, error) {
	if _, err := ReadUUID(image); !errors.Is(err, ErrNoFilesystem) {
		if err == nil {
			return "", fmt.Errorf("%s already holds a state disk filesystem; refusing to format it", image)
		}
		if !strings.Contains(err.Error(), "does not support encryption") {
			return "", err
		}
		return "", fmt.Errorf("%s holds another filesystem; refusing to format it", image)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-O", "encrypt", image).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("formatting the state disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return ReadUUID(image)
}

// Disk is an opened state disk: mounted, its key added, its state directory readable.
type Disk struct {
	// UUID is the disk's filesystem UUID, by which its key is derived.
	UUID string
	// StateDir is the encrypted directory for the node's state.
	StateDir   string
	mountpoint string
	key        KeyIdentifier // fscrypt: the key added to the filesystem
	mapping    *luks.Mapping // LUKS2: the disk's mapping
}

// Open mounts the state disk image at mountpoint (through a loop device, freed again on unmount) and unlocks
// its state directory with key, encrypting a new one with it. A key that is not the disk's is refused and
// changes nothing on the disk.
func Open(image, mountpoint string, key []byte) (*Disk, error) {
	uuid, err := ReadUUID(image)
	if err != nil {
		return nil, err
	}
	if len(key) != MinKeySize {
		return nil, fmt.Errorf("disk key has %d bytes, want %d", len(key), MinKeySize)
	}
	loop, dev, err := attachLoop(image)
	if err != nil {
		return nil, err
	}
	// The loop device clears itself once nobody uses it: after the mount below, closing dev leaves the mount
	// as its only user, and unmounting frees it; if anything fails before, closing dev frees it.
	defer dev.Close()
	if err := os.MkdirAll(mountpoint, 0o700); err != nil {
		return nil, err
	}
	// Read-only until the key is known to be the disk's: a refused key leaves the disk as it was.
	if err := unix.Mount(loop, mountpoint, "ext4", StateMountFlags|unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("mounting the state disk %s: %w", image, err)
	}
	d := &Disk{UUID: uuid, StateDir: filepath.Join(mountpoint, StateDirName), mountpoint: mountpoint}
	fail := func(err error) (*Disk, error) {
		unix.Unmount(mountpoint, 0)
		return nil, err
	}
	if d.key, err = addKey(mountpoint, key); err != nil {
		return fail(err)
	}
	have, encrypted, err := policyKey(d.StateDir)
	if err == nil && encrypted && have == d.key || errors.Is(err, os.ErrNotExist) {
		if rerr := unix.Mount("", mountpoint, "", unix.MS_REMOUNT|StateMountFlags, ""); rerr != nil {
			removeKey(mountpoint, d.key)
			return fail(fmt.Errorf("mounting the state disk %s writable: %w", image, rerr))
		}
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(d.StateDir, 0o700); err != nil {
			removeKey(mountpoint, d.key)
			return fail(err)
		}
		if err := setPolicy(d.StateDir, d.key); err != nil {
			removeKey(mountpoint, d.key)
			return fail(err)
		}
	case err != nil:
		removeKey(mountpoint, d.key)
		return fail(err)
	case !encrypted:
		removeKey(mountpoint, d.key)
		return fail(fmt.Errorf("%s on disk %s is not encrypted; refusing to use it", StateDirName, uuid))
	case have != d.key:
		removeKey(mountpoint, d.key)
		return fail(fmt.Errorf("the key is not the key of disk %s (its state is encrypted under key %s, this key is %s); nothing was changed", uuid, have, d.key))
	}
	return d, nil
}

// HasState reports whether the disk holds a node's encrypted state: the node was initialised or joined with
// it before. It mounts the disk read-only at mountpoint to look, and changes nothing.
func HasState(image, mountpoint string) (bool, error) {
	if _, err := ReadUUID(image); err != nil {
		return false, err
	}
	loop, dev, err := attachLoop(image)
	if err != nil {
		return false, err
	}
	defer dev.Close()
	if err := os.MkdirAll(mountpoint, 0o700); err != nil {
		return false, err
	}
	if err := unix.Mount(loop, mountpoint, "ext4", StateMountFlags|unix.MS_RDONLY, ""); err != nil {
		return false, fmt.Errorf("mounting the state disk %s: %w", image, err)
	}
	defer unix.Unmount(mountpoint, 0)
	_, encrypted, err := policyKey(filepath.Join(mountpoint, StateDirName))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return encrypted, err
}

// Close removes the key and unmounts the disk. Files still open keep their keys until closed.
func (d *Disk) Close() error {
	if d.mapping != nil {
		if err := unix.Unmount(d.mountpoint, 0); err != nil {
			return fmt.Errorf("unmounting the state disk: %w", err)
		}
		return d.mapping.Close()
	}
	err := removeKey(d.mountpoint, d.key)
	if uerr := unix.Unmount(d.mountpoint, 0); uerr != nil {
		return errors.Join(err, fmt.Errorf("unmounting the state disk: %w", uerr))
	}
	return err
}

// attachLoop attaches image to a free loop device that detaches itself when its last user is gone. The
// caller holds the returned device open until it has mounted it.
func attachLoop(image string) (string, *os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening the loop device control: %w", err)
	}
	defer ctl.Close()
	img, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer img.Close()
	for range 10 {
		n, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.LOOP_CTL_GET_FREE, 0)
		if errno != 0 {
			return "", nil, fmt.Errorf("finding a free loop device: %w", errno)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		dev, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return "", nil, fmt.Errorf("opening %s: %w", path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd()), Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR}}
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) {
			dev.Close()
			continue // another process took it first
		}
		if err != nil {
			dev.Close()
			return "", nil, fmt.Errorf("attaching %s to %s: %w", image, path, err)
		}
		return path, dev, nil
	}
	return "", nil, errors.New("no free loop device after 10 attempts")
}
