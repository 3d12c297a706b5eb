//go:build linux

// Command luksguest is the init process of the QEMU test of the luks package
// (internal/diskmapper/luks/qemu_test.go). It runs in a virtual machine whose kernel has device-mapper, works on the virtio disks the test gives it (/dev/vda: the
// state disk; /dev/vdb: a second state disk for the interrupted re-key; /dev/vdc: a scratch disk on which the
// test keeps the second disk's first-boot key from one boot to the next; /dev/vdd: a disk for the reset rule;
// /dev/vde to /dev/vdh: disks the bootstrapper's code takes through a node's life, two of them the host attacks),
// prints one line per check:
//
//	RESULT ok <check> <details>
//	RESULT fail <check> <error>
//	RESULT done
//
// and powers the machine off. The kernel command line's constellation.boot=N selects the boot of the scenario.
// Keys are never printed.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/diskmapper"
	"github.com/constellation-dev/constellation/internal/diskmapper/luks"
	"github.com/constellation-dev/constellation/internal/diskmapper/luks/testhook"
	"github.com/constellation-dev/constellation/internal/kms"
)

const (
	stateDisk  = "/dev/vda"
	secondDisk = "/dev/vdb"
	scratch    = "/dev/vdc"
	resetDisk  = "/dev/vdd"
	// nodeDisk is a state disk the guest takes through a node's life with the code the bootstrapper runs
	// (diskmapper.Prepare, Unlock, HasState); cutDisk one whose first boot ends before the node gets its key.
	nodeDisk = "/dev/vde"
	cutDisk  = "/dev/vdf"
	// tamperDisk is a node's state disk whose header the host rewrites between boots 2 and 3 (a cipher_null
	// segment without integrity, the genuine keyslot kept, a plaintext ext4 at the data offset); ext4Disk is
	// an ext4 filesystem the host crafted.
	tamperDisk = "/dev/vdg"
	ext4Disk   = "/dev/vdh"
	blockSize  = 4096
	// MarkerBlock holds the marker the host looks for; CorruptBlock is the block the host damages.
	markerBlock  = 100
	corruptBlock = 200
)

// Marker is what boot 1 writes through the mapping; the host must not find it in the disk image.
var marker = bytes.Repeat([]byte("CONSTELLATION-LUKS-MARKER-7f3a9c"), blockSize/32)

func pattern(seed byte) []byte {
	b := make([]byte, blockSize)
	for i := range b {
		b[i] = seed ^ byte(i*7)
	}
	return b
}

// deriver derives the disks' keys as the key service does, from a fixed test master secret.
var deriver = func() *kms.Deriver {
	d, err := kms.NewDeriver(&kms.MasterSecret{Key: bytes.Repeat([]byte{0x42}, kms.MasterKeySize), Salt: bytes.Repeat([]byte{0x24}, kms.MasterSaltSize)})
	if err != nil {
		panic(err)
	}
	return d
}()

var failed bool

func result(check string, err error, details string, args ...any) {
	if err != nil {
		failed = true
		fmt.Printf("\nRESULT fail %s %s\n", check, strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	fmt.Printf("\nRESULT ok %s %s\n", check, fmt.Sprintf(details, args...))
}

func main() {
	start := time.Now()
	if err := setup(); err != nil {
		result("setup", err, "")
	} else {
		cmdline, _ := os.ReadFile("/proc/cmdline")
		boot := ""
		for _, f := range strings.Fields(string(cmdline)) {
			if v, ok := strings.CutPrefix(f, "constellation.boot="); ok {
				boot = v
			}
		}
		result("setup", nil, "boot %s, kernel ready after %.1fs", boot, uptime())
		switch boot {
		case "1":
			boot1()
		case "2":
			boot2()
			nodeFirstBoot()
			hostCraftedExt4()
		case "3":
			boot3()
			nodeSecondBoot()
			tamperedHeader()
		default:
			result("boot", fmt.Errorf("unknown constellation.boot=%q", boot), "")
		}
	}
	fmt.Printf("\nRESULT done failed=%v guest=%.1fs\n", failed, time.Since(start).Seconds())
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) // qemu -no-reboot exits on either
	select {}
}

func uptime() float64 {
	var info unix.Sysinfo_t
	unix.Sysinfo(&info)
	return float64(info.Uptime)
}

// setup mounts the kernel's filesystems, loads the modules listed in /modules/order (in dependency order) and
// waits for the virtio disks.
func setup() error {
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}, {"tmpfs", "/run", "tmpfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s: %w", m.dir, err)
		}
	}
	os.MkdirAll("/run/cryptsetup", 0o700) // libcryptsetup's locks
	os.Setenv("PATH", "/sbin")            // mkfs.ext4
	order, err := os.ReadFile("/modules/order")
	if err != nil {
		return err
	}
	for _, m := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join("/modules", m))
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("loading module %s: %w", m, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, d := range []string{stateDisk, secondDisk, scratch, resetDisk, nodeDisk, cutDisk, tamperDisk, ext4Disk, "/dev/mapper/control"} {
		for {
			if _, err := os.Stat(d); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not appear", d)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func diskKey(path string) ([]byte, string, error) {
	uuid, err := luks.ReadUUID(path)
	if err != nil {
		return nil, "", err
	}
	key, err := deriver.DiskKey(uuid)
	return key, uuid, err
}

func writeBlock(dev string, block int64, data []byte) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(data, block*blockSize); err != nil {
		return err
	}
	return f.Sync()
}

// readBlock reads one block with O_DIRECT, so that an integrity error reaches the caller as it is (not through
// the page cache) and nothing cached from before hides the disk's contents.
func readBlock(dev string, block int64) ([]byte, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // aligned
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)
	if _, err := f.ReadAt(buf, block*blockSize); err != nil {
		return nil, err
	}
	return bytes.Clone(buf), nil
}

func timed(f func() error) (time.Duration, error) {
	t := time.Now()
	err := f()
	return time.Since(t), err
}

// boot1: the node's first boot (format, re-key, store state) on vda; on vdb the same until the re-key stops
// between adding the new keyslot and destroying the old one, where the host cuts the power.
func boot1() {
	if _, err := luks.ReadUUID(stateDisk); !errors.Is(err, luks.ErrNoHeader) {
		result("blank", fmt.Errorf("ReadUUID of the blank disk: %v", err), "")
		return
	}
	var uuid string
	var first []byte
	d, err := timed(func() (err error) { uuid, first, err = luks.Format(stateDisk); return err })
	result("format", err, "disk %s in %.1fs", uuid, d.Seconds())
	if err != nil {
		return
	}
	h, err := luks.ReadHeader(stateDisk)
	if err == nil && h.State() != luks.StateNew {
		err = fmt.Errorf("state %v after Format", h.State())
	}
	result("header-new", err, "label %s", h.Label)
	if _, err := luks.Open(stateDisk, "x", first); err == nil || !strings.Contains(err.Error(), "never given its key") {
		result("open-new-refused", fmt.Errorf("opening a new disk: %v", err), "")
	} else {
		result("open-new-refused", nil, "%s", err)
	}
	key, _, err := diskKey(stateDisk)
	if err == nil {
		err = luks.SetKey(stateDisk, first, key)
	}
	result("set-key", err, "first-boot key replaced by the key derived for %s", uuid)
	if err != nil {
		return
	}
	m, err := luks.Open(stateDisk, "x", key)
	result("open", err, "%v", m)
	if err != nil {
		return
	}
	err = writeBlock(m.Path, markerBlock, marker)
	if err == nil {
		err = writeBlock(m.Path, corruptBlock, pattern(1))
	}
	var got []byte
	if err == nil {
		got, err = readBlock(m.Path, markerBlock)
	}
	if err == nil && !bytes.Equal(got, marker) {
		err = errors.New("the marker read back differs")
	}
	result("write-marker", err, "blocks %d and %d written through %s", markerBlock, corruptBlock, m.Path)
	result("close", m.Close(), "")

	// The second disk: a re-key cut short by a power loss.
	var uuid2 string
	var first2 []byte
	d, err = timed(func() (err error) { uuid2, first2, err = luks.Format(secondDisk); return err })
	result("format-2", err, "disk %s in %.1fs", uuid2, d.Seconds())
	if err != nil {
		return
	}
	// The test's scratch disk keeps the first-boot key for the next boot (a real node keeps it in memory only).
	if err := writeBlock(scratch, 0, append(bytes.Clone(first2), make([]byte, blockSize-len(first2))...)); err != nil {
		result("scratch", err, "")
		return
	}
	key2, _, err := diskKey(secondDisk)
	if err != nil {
		result("key-2", err, "")
		return
	}
	testhook.BeforeDestroyOldKeyslot = func() {
		// No sync here: what libcryptsetup wrote so far is what a power loss leaves.
		fmt.Printf("\nRESULT crashpoint new keyslot added, old keyslot not yet destroyed: cut the power now\n")
		select {}
	}
	err = luks.SetKey(secondDisk, first2, key2)
	result("crashpoint", fmt.Errorf("SetKey returned (%v) instead of stopping at the hook", err), "")
}

// boot2: a wrong key is refused (the host checks that the header did not change), the right one reads the
// marker back; block corruptBlock is rewritten for the host to locate it. On vdb: both keys open the disk after
// the power loss, and finishing the re-key leaves only the derived key.
func boot2() {
	key, uuid, err := diskKey(stateDisk)
	if err != nil {
		result("key", err, "")
		return
	}
	wrong := bytes.Clone(key)
	wrong[0] ^= 1
	if _, err := luks.Open(stateDisk, "x", wrong); !errors.Is(err, luks.ErrWrongKey) {
		result("wrong-key-refused", fmt.Errorf("opening with a wrong key: %v", err), "")
	} else {
		result("wrong-key-refused", nil, "%s", err)
	}
	if _, err := os.Stat("/dev/mapper/x"); err == nil {
		result("wrong-key-no-mapping", errors.New("/dev/mapper/x exists after the refused open"), "")
	}
	m, err := luks.Open(stateDisk, "x", key)
	result("open", err, "disk %s", uuid)
	if err != nil {
		return
	}
	got, err := readBlock(m.Path, markerBlock)
	if err == nil && !bytes.Equal(got, marker) {
		err = errors.New("block 100 does not hold the marker")
	}
	result("read-marker", err, "the marker written in boot 1 is read back")
	if got, err := readBlock(m.Path, corruptBlock); err != nil || !bytes.Equal(got, pattern(1)) {
		result("read-block", fmt.Errorf("block %d: %v", corruptBlock, err), "")
	}
	result("rewrite-block", writeBlock(m.Path, corruptBlock, pattern(2)), "block %d", corruptBlock)
	result("close", m.Close(), "")

	first2, err := readBlock(scratch, 0)
	if err != nil {
		result("scratch", err, "")
		return
	}
	first2 = first2[:luks.KeySize]
	key2, uuid2, err := diskKey(secondDisk)
	if err != nil {
		result("key-2", err, "")
		return
	}
	// Both keys open a keyslot, but the header's parameters are authenticated under the derived key (SetKey
	// did so before the label): only the derived key maps the disk.
	if _, err := luks.Open(secondDisk, "y", first2); !errors.Is(err, luks.ErrBadParameters) {
		result("after-crash-first-boot-key-does-not-map", fmt.Errorf("opening with the first-boot key: %v", err), "")
	} else {
		result("after-crash-first-boot-key-does-not-map", nil, "%s", err)
	}
	m, err = luks.Open(secondDisk, "y", key2)
	if err == nil {
		_, err = readBlock(m.Path, 0)
		err = errors.Join(err, m.Close())
	}
	result("after-crash-opens-with-derived-key", err, "disk %s", uuid2)
	// The node rebooted: it lost its first-boot key, and has the derived one.
	result("finish-set-key", luks.SetKey(secondDisk, nil, key2), "")
	if _, err := luks.Open(secondDisk, "y", first2); !errors.Is(err, luks.ErrWrongKey) {
		result("first-boot-key-gone", fmt.Errorf("opening with the first-boot key after finishing: %v", err), "")
	} else {
		result("first-boot-key-gone", nil, "")
	}
	m, err = luks.Open(secondDisk, "y", key2)
	if err == nil {
		err = m.Close()
	}
	result("derived-key-opens", err, "")
}

// boot3: the host damaged block corruptBlock in the disk image; reading it is an integrity error, its
// neighbours and the marker read fine.
func boot3() {
	key, _, err := diskKey(stateDisk)
	if err != nil {
		result("key", err, "")
		return
	}
	m, err := luks.Open(stateDisk, "x", key)
	result("open", err, "")
	if err != nil {
		return
	}
	got, err := readBlock(m.Path, markerBlock)
	if err == nil && !bytes.Equal(got, marker) {
		err = errors.New("block 100 does not hold the marker")
	}
	result("read-marker", err, "")
	for _, b := range []int64{corruptBlock - 1, corruptBlock + 1} {
		if _, err := readBlock(m.Path, b); err != nil {
			result("read-neighbour", fmt.Errorf("block %d: %w", b, err), "")
		}
	}
	_, err = readBlock(m.Path, corruptBlock)
	switch {
	case errors.Is(err, unix.EILSEQ):
		result("integrity-error", nil, "reading block %d: %v (EILSEQ: the sector's HMAC does not match)", corruptBlock, err)
	case errors.Is(err, unix.EIO):
		result("integrity-error", nil, "reading block %d: %v (EIO)", corruptBlock, err)
	default:
		result("integrity-error", fmt.Errorf("reading the damaged block %d gave %v, want an integrity error", corruptBlock, err), "")
	}
	result("close", m.Close(), "")
	resetRule()
}

// resetRule: a reset mark does not wipe the initialised vdb; on vdd, a marked disk that never got its key is
// wiped and formatted again.
func resetRule() {
	key2, uuid2, err := diskKey(secondDisk)
	if err == nil {
		err = luks.MarkReset(secondDisk)
	}
	var wiped bool
	if err == nil {
		wiped, err = luks.ResetIfMarked(secondDisk)
		if wiped || !errors.Is(err, luks.ErrResetRefused) {
			err = fmt.Errorf("ResetIfMarked of a marked initialised disk: wiped %v, %v", wiped, err)
		} else {
			result("reset-refused-initialised", nil, "%s", err)
			var m *luks.Mapping
			if m, err = luks.Open(secondDisk, "y", key2); err == nil {
				err = m.Close()
			}
		}
	}
	result("reset-refused-opens", err, "disk %s", uuid2)

	uuid, _, err := luks.Format(resetDisk)
	if err == nil {
		err = luks.MarkReset(resetDisk)
	}
	if err == nil {
		if wiped, err = luks.ResetIfMarked(resetDisk); err == nil && !wiped {
			err = errors.New("a marked new disk was not wiped")
		}
	}
	if err == nil {
		if _, rerr := luks.ReadUUID(resetDisk); !errors.Is(rerr, luks.ErrNoHeader) {
			err = fmt.Errorf("after the wipe: %v", rerr)
		}
	}
	result("reset-wiped-new", err, "disk %s", uuid)
	if err != nil {
		return
	}
	uuid, first, err := luks.Format(resetDisk)
	var key []byte
	if err == nil {
		key, _, err = diskKey(resetDisk)
	}
	if err == nil {
		err = luks.SetKey(resetDisk, first, key)
	}
	var m *luks.Mapping
	if err == nil {
		m, err = luks.Open(resetDisk, "z", key)
	}
	if err == nil {
		err = writeBlock(m.Path, 1, marker)
		var got []byte
		if err == nil {
			got, err = readBlock(m.Path, 1)
		}
		if err == nil && !bytes.Equal(got, marker) {
			err = errors.New("the block read back differs")
		}
		err = errors.Join(err, m.Close())
	}
	result("reset-formatted-again", err, "disk %s", uuid)
}

// nodeMarker is the content of a file the node stores in its state directory; the host must not find it in the
// disk image.
const nodeMarker = "CONSTELLATION-NODE-STATE-MARKER-5e1d"

var guestLog = slog.New(slog.NewTextHandler(os.Stdout, nil))

// nodeFirstBoot is a node's first boot with a blank state disk, as the bootstrapper runs it: the disk is
// formatted with a random first-boot key, the node gets the key derived for the disk's UUID, unlocks the disk
// with it and stores its state. A second blank disk is formatted and then left, as by a boot cut short before
// the node got its key.
func nodeFirstBoot() {
	ctx := context.Background()
	sd, err := diskmapper.Prepare(ctx, nodeDisk, guestLog)
	if err == nil && sd.Backend != diskmapper.BackendLUKS2 {
		err = fmt.Errorf("backend %s, want %s", sd.Backend, diskmapper.BackendLUKS2)
	}
	result("node-prepare-new", err, "disk %v", uuidOf(sd))
	if err != nil {
		return
	}
	has, err := sd.HasState("/run/state")
	if err == nil && has {
		err = errors.New("a new disk has state")
	}
	result("node-new-has-no-state", err, "")
	key, err := deriver.DiskKey(sd.UUID)
	if err != nil {
		result("node-key", err, "")
		return
	}
	d, err := sd.Unlock(ctx, key, "/run/state")
	result("node-unlock-new", err, "")
	if err != nil {
		return
	}
	err = os.WriteFile(filepath.Join(d.StateDir, "etcd-member"), []byte(nodeMarker), 0o600)
	if err == nil {
		err = d.Close()
	}
	result("node-store", err, "")

	cut, err := diskmapper.Prepare(ctx, cutDisk, guestLog)
	result("cut-prepare-new", err, "disk %v", uuidOf(cut))

	// The disk whose header the host rewrites before boot 3: a node's state disk like the one above.
	sd, err = diskmapper.Prepare(ctx, tamperDisk, guestLog)
	if err == nil {
		key, err = deriver.DiskKey(sd.UUID)
	}
	if err == nil {
		d, err = sd.Unlock(ctx, key, "/run/state")
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(d.StateDir, "etcd-member"), []byte(nodeMarker), 0o600)
		err = errors.Join(err, d.Close())
	}
	result("tamper-prepare-new", err, "disk %v", uuidOf(sd))
}

// mountedFrom returns the lines of /proc/mounts that mount dev or anything device-mapper or loop: after a
// refused disk, there must be none.
func mountedFrom(dev string) string {
	b, _ := os.ReadFile("/proc/mounts")
	var found []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, dev+" ") || strings.HasPrefix(l, "/dev/mapper/") || strings.HasPrefix(l, "/dev/loop") {
			found = append(found, l)
		}
	}
	return strings.Join(found, "; ")
}

// hostCraftedExt4: the host attached an ext4 filesystem (an image of its own, shaped like the state disk of a
// node without device-mapper) to a node whose kernel has LUKS2. The node keeps LUKS2: the disk is refused,
// nothing is mounted, nothing is written (the host compares the image).
func hostCraftedExt4() {
	sd, err := diskmapper.Prepare(context.Background(), ext4Disk, guestLog)
	switch {
	case err == nil:
		result("ext4-refused", fmt.Errorf("diskmapper.Prepare took the host's ext4 disk as a %s state disk %s", sd.Backend, sd.UUID), "")
		if d, uerr := sd.Unlock(context.Background(), make([]byte, luks.KeySize), "/run/crafted"); uerr == nil {
			d.Close()
		}
	case mountedFrom(ext4Disk) != "":
		result("ext4-refused", fmt.Errorf("refused (%v), but mounted: %s", err, mountedFrom(ext4Disk)), "")
	default:
		result("ext4-refused", nil, "%v", err)
	}
}

// tamperedHeader: the host rewrote the header of the node's state disk (both copies, checksums recomputed) to a
// cipher_null segment without integrity and put a plaintext ext4 at the data offset; the genuine keyslot is
// unchanged, so the node's key still opens it. The node refuses to unlock, maps and mounts nothing, and
// writes nothing (the host compares the image).
func tamperedHeader() {
	ctx := context.Background()
	sd, err := diskmapper.Prepare(ctx, tamperDisk, guestLog)
	if err == nil {
		var key []byte
		if key, err = deriver.DiskKey(sd.UUID); err != nil {
			result("tamper-key", err, "")
			return
		}
		var d *diskmapper.Disk
		if d, err = sd.Unlock(ctx, key, "/run/tampered"); err == nil {
			got, _ := os.ReadFile(filepath.Join(d.StateDir, "host-planted"))
			os.WriteFile(filepath.Join(d.StateDir, "written-by-node"), []byte(nodeMarker), 0o600)
			d.Close()
			result("tamper-refused", fmt.Errorf("the node unlocked the rewritten disk and mounted the host's filesystem (it reads %q)", got), "")
			return
		}
	}
	if _, serr := os.Stat("/dev/mapper/" + diskmapper.MappingName); serr == nil || mountedFrom(tamperDisk) != "" {
		result("tamper-refused", fmt.Errorf("refused (%v), but mapped or mounted: %s", err, mountedFrom(tamperDisk)), "")
		return
	}
	if !errors.Is(err, luks.ErrBadParameters) {
		result("tamper-refused", fmt.Errorf("want a refusal of the header's parameters, got %v", err), "")
		return
	}
	result("tamper-refused", nil, "%v", err)
}

// nodeSecondBoot is the node's next boot: the disk holds its state; a wrong key is refused; the key derived for
// the disk opens it with the state stored before. The disk whose first boot was cut short is wiped by the reset
// rule and formatted again.
func nodeSecondBoot() {
	ctx := context.Background()
	sd, err := diskmapper.Prepare(ctx, nodeDisk, guestLog)
	result("node-prepare-again", err, "disk %v", uuidOf(sd))
	if err != nil {
		return
	}
	has, err := sd.HasState("/run/state")
	if err == nil && !has {
		err = errors.New("the disk of a node that stored its state has none")
	}
	result("node-has-state", err, "")
	key, err := deriver.DiskKey(sd.UUID)
	if err != nil {
		result("node-key", err, "")
		return
	}
	wrong := bytes.Clone(key)
	wrong[5] ^= 0x80
	if _, err := sd.Unlock(ctx, wrong, "/run/state"); !errors.Is(err, luks.ErrWrongKey) {
		result("node-wrong-key-refused", fmt.Errorf("unlocking with a wrong key: %v", err), "")
	} else {
		result("node-wrong-key-refused", nil, "")
	}
	d, err := sd.Unlock(ctx, key, "/run/state")
	result("node-unlock-again", err, "")
	if err != nil {
		return
	}
	got, err := os.ReadFile(filepath.Join(d.StateDir, "etcd-member"))
	if err == nil && string(got) != nodeMarker {
		err = fmt.Errorf("the state file holds %q", got)
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	result("node-state-kept", err, "")

	cut, err := diskmapper.Prepare(ctx, cutDisk, guestLog)
	result("cut-prepare-reset", err, "disk %v", uuidOf(cut))
}

func uuidOf(sd *diskmapper.StateDisk) string {
	if sd == nil {
		return ""
	}
	return sd.UUID
}
