package diskmapper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/diskmapper/luks"
)

// Backend names how a state disk is encrypted.
type Backend string

const (
	// BackendLUKS2 is the production path: the whole disk is a LUKS2 volume with authenticated encryption.
	BackendLUKS2 Backend = "luks2"
	// BackendFscrypt is the path for kernels without device-mapper: ext4 with native encryption of the state
	// directory.
	BackendFscrypt Backend = "fscrypt"
)

// StateMountFlags are the mount flags of a state disk: no device nodes and no set-user-ID programs on what
// the disk holds. Not noexec: /var is on the disk, and containerd's snapshots (the containers' root
// filesystems) and the kubelet's volumes under it must be executable.
const StateMountFlags = unix.MS_NODEV | unix.MS_NOSUID

// MappingName is the device-mapper name of an opened LUKS2 state disk (/dev/mapper/constellation-state).
const MappingName = "constellation-state"

// StateDisk is a node's state disk from boot on: Prepare finds it (formatting a blank one), the node asks for
// the key derived for its UUID, and Unlock opens it with that key before anything is stored.
type StateDisk struct {
	// Device is the disk (a block device or, on the mini provider, an image file).
	Device string
	// UUID is the disk's UUID, by which its key is derived. It is stored in plain text on the disk.
	UUID string
	// Backend is how the disk is encrypted.
	Backend Backend

	// firstBootKey is, for a LUKS2 disk formatted at this boot, its random first-boot key: in memory only,
	// replaced by the derived key in Unlock.
	firstBootKey []byte
}

// Prepare finds the node's state disk at device and returns it, locked. The backend is the node's choice,
// from its own kernel and binary (luks.Supported), never from what the disk holds, which the host controls:
//
//   - Where LUKS2 works, the state disk is LUKS2. A blank disk (its first boot) is formatted with a random
//     first-boot key. A LUKS2 disk that was formatted but never given its key (its first boot was cut short,
//     the first-boot key is lost) is wiped and formatted again by the reset rule; nothing was ever stored on
//     it. Anything else, an ext4 filesystem included, is refused: never mounted, never formatted over.
//   - Only where LUKS2 cannot be used, the state disk is ext4 with native encryption (fscrypt): a blank disk is
//     formatted, an ext4 state disk is used, anything else (a LUKS2 disk included) is refused.
func Prepare(ctx context.Context, device string, log *slog.Logger) (*StateDisk, error) {
	lerr := luks.Supported()
	h, err := luks.ReadHeader(device)
	if lerr == nil {
		switch {
		case err == nil:
			return prepareLUKS(device, h, log)
		case !errors.Is(err, luks.ErrNoHeader):
			return nil, fmt.Errorf("reading the state disk %s: %w", device, err)
		}
		if err := checkBlank(device); err != nil {
			return nil, fmt.Errorf("%w. This node keeps its state on LUKS2 with integrity protection: a disk that is neither LUKS2 nor blank (an ext4 filesystem, say) is refused and never mounted", err)
		}
		return formatLUKS(device, log)
	}
	switch {
	case err == nil:
		return nil, fmt.Errorf("state disk %s is a LUKS2 disk (%s), but LUKS2 cannot be used here: %w", device, h.UUID, lerr)
	case !errors.Is(err, luks.ErrNoHeader):
		return nil, fmt.Errorf("reading the state disk %s: %w", device, err)
	}
	uuid, err := ReadUUID(device)
	switch {
	case err == nil:
		return &StateDisk{Device: device, UUID: uuid, Backend: BackendFscrypt}, nil
	case !errors.Is(err, ErrNoFilesystem):
		return nil, fmt.Errorf("reading the state disk: %w", err)
	}
	if err := checkBlank(device); err != nil {
		return nil, err
	}
	if uuid, err = Format(ctx, device); err != nil {
		return nil, err
	}
	log.Info("new state disk formatted", "disk", uuid, "encryption", BackendFscrypt, "why", lerr.Error())
	return &StateDisk{Device: device, UUID: uuid, Backend: BackendFscrypt}, nil
}

func formatLUKS(device string, log *slog.Logger) (*StateDisk, error) {
	uuid, key, err := luks.Format(device)
	if err != nil {
		return nil, fmt.Errorf("formatting the state disk %s: %w", device, err)
	}
	log.Info("new state disk formatted", "disk", uuid, "encryption", BackendLUKS2)
	return &StateDisk{Device: device, UUID: uuid, Backend: BackendLUKS2, firstBootKey: key}, nil
}

func prepareLUKS(device string, h luks.Header, log *slog.Logger) (*StateDisk, error) {
	if h.State() == luks.StateNew && !h.ResetMarked() {
		// Formatted at an earlier boot that ended before the node got its key: that boot's first-boot key
		// is gone with its memory. The disk holds nothing (Open refuses a disk without its key).
		log.Warn("the state disk was formatted but never given its key; marking it for reset", "disk", h.UUID)
		if err := luks.MarkReset(device); err != nil {
			return nil, fmt.Errorf("marking the state disk %s for reset: %w", h.UUID, err)
		}
		h.Subsystem = luks.SubsystemReset
	}
	if h.ResetMarked() {
		wiped, err := luks.ResetIfMarked(device)
		if err != nil {
			// A marked disk that holds a node's state is not wiped: it may hold an etcd member's data.
			log.Warn("the state disk carries a reset mark that is not honoured", "disk", h.UUID, "error", err)
		}
		if wiped {
			log.Info("state disk wiped by the reset rule", "disk", h.UUID)
			return formatLUKS(device, log)
		}
	}
	return &StateDisk{Device: device, UUID: h.UUID, Backend: BackendLUKS2}, nil
}

// HasState reports whether the disk holds the state of a node that was initialised or joined with it before.
// It changes nothing; an fscrypt disk is mounted read-only at mountpoint to look.
func (s *StateDisk) HasState(mountpoint string) (bool, error) {
	if s.Backend == BackendFscrypt {
		return HasState(s.Device, mountpoint)
	}
	if s.firstBootKey != nil {
		return false, nil
	}
	h, err := luks.ReadHeader(s.Device)
	if err != nil {
		return false, err
	}
	return h.State() == luks.StateInitialised, nil
}

// Unlock opens the disk with key, the key derived for its UUID, and mounts it at mountpoint; the returned
// Disk's StateDir is where the node's state goes. A LUKS2 disk formatted at this boot gets key in place of
// its first-boot key first (SetKey: a power loss at any point leaves a disk that key opens) and an ext4
// filesystem on its mapping. A wrong key is refused and changes nothing on the disk.
func (s *StateDisk) Unlock(ctx context.Context, key []byte, mountpoint string) (*Disk, error) {
	if s.Backend == BackendFscrypt {
		return Open(s.Device, mountpoint, key)
	}
	if len(key) != luks.KeySize {
		return nil, fmt.Errorf("disk key has %d bytes, want %d", len(key), luks.KeySize)
	}
	if s.firstBootKey != nil {
		if err := luks.SetKey(s.Device, s.firstBootKey, key); err != nil {
			return nil, fmt.Errorf("giving state disk %s its key: %w", s.UUID, err)
		}
		clear(s.firstBootKey)
		s.firstBootKey = nil
	}
	m, err := luks.Open(s.Device, MappingName, key)
	if err != nil {
		return nil, fmt.Errorf("opening state disk %s: %w", s.UUID, err)
	}
	d, err := mountMapping(ctx, m, s.UUID, mountpoint)
	if err != nil {
		m.Close()
		return nil, err
	}
	return d, nil
}

// mountMapping mounts the ext4 filesystem of an opened LUKS2 disk at mountpoint, making it first if the
// mapping is still as Format's wipe left it (all zeros at the start: the first unlock, or a power loss before
// the filesystem was made). Anything else that is not an ext4 filesystem is refused, never formatted over.
func mountMapping(ctx context.Context, m *luks.Mapping, uuid, mountpoint string) (*Disk, error) {
	f, err := os.Open(m.Path)
	if err != nil {
		return nil, err
	}
	head := make([]byte, 64<<10)
	_, err = f.ReadAt(head, 0)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("reading state disk %s: %w", uuid, err)
	}
	if _, _, err := ParseSuperblock(head[superblockOffset : superblockOffset+superblockSize]); errors.Is(err, ErrNoFilesystem) {
		for _, b := range head {
			if b != 0 {
				return nil, fmt.Errorf("state disk %s holds data but no ext4 filesystem; refusing to format it", uuid)
			}
		}
		if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-E", "nodiscard", m.Path).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("making the filesystem of state disk %s: %w: %s", uuid, err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.MkdirAll(mountpoint, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount(m.Path, mountpoint, "ext4", StateMountFlags, ""); err != nil {
		return nil, fmt.Errorf("mounting state disk %s: %w", uuid, err)
	}
	d := &Disk{UUID: uuid, StateDir: filepath.Join(mountpoint, StateDirName), mountpoint: mountpoint, mapping: m}
	if err := os.MkdirAll(d.StateDir, 0o700); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// blankSize is how much of a disk must be zeros for it to count as blank.
const blankSize = 1 << 20

// checkBlank refuses a disk whose first MiB holds anything: a state disk is formatted only when it is new,
// never over another filesystem, a partition table or data.
func checkBlank(device string) error {
	f, err := os.Open(device)
	if err != nil {
		return fmt.Errorf("reading the state disk: %w", err)
	}
	defer f.Close()
	b := make([]byte, blankSize)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the state disk %s: %w", device, err)
	}
	for _, c := range b[:n] {
		if c != 0 {
			return fmt.Errorf("state disk %s is neither a state disk of this product nor blank (its first MiB holds data: another filesystem, a partition table?); refusing to format it. Attach a blank disk, or zero this one if its content is not needed", device)
		}
	}
	return nil
}
