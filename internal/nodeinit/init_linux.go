package nodeinit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Paths inside the initramfs.
const (
	modulesDir = "/lib/modules"
	sysroot    = "/sysroot"
	verityName = "root"
	verityDev  = "/dev/verity-root"
)

// deviceWait bounds the wait for the root partition and the device-mapper control node to appear.
const deviceWait = 60 * time.Second

// Run is the init of the initramfs: it loads the modules, opens the root with dm-verity, reads all of it once
// to check it against the root hash, mounts it read-only and switches into it, running argv (the arguments
// after "--" on the kernel command line) as the node's first process. It returns only on failure; the
// caller then refuses to boot.
func Run(log *slog.Logger, argv []string) error {
	start := time.Now()
	if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
		return errors.New("no first process: the kernel command line must end in -- /absolute/path [arguments]")
	}
	for _, m := range []struct{ src, dst, fstype string }{
		{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s: %w", m.dst, err)
		}
	}
	if err := loadModules(log); err != nil {
		return err
	}
	cmdline, err := imageCmdline()
	if err != nil {
		return err
	}
	root, err := ParseCmdline(cmdline)
	if err != nil {
		return err
	}
	part, err := waitPartition(root.Partition)
	if err != nil {
		return err
	}
	log.Info("opening the root with dm-verity", "partition", part, "roothash", fmt.Sprintf("%x", root.RootHash))
	if err := openVerity(part, root); err != nil {
		return err
	}
	n, err := checkAll(verityDev)
	if err != nil {
		return fmt.Errorf("the root partition %s does not match the root hash %x: %w", part, root.RootHash, err)
	}
	log.Info("the root verified", "bytes", n, "seconds", fmt.Sprintf("%.1f", time.Since(start).Seconds()))
	if err := unix.Mount(verityDev, sysroot, "squashfs", unix.MS_RDONLY|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mounting the verified root: %w", err)
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(d, sysroot+d, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s into the root: %w", d, err)
		}
	}
	if err := switchRoot(); err != nil {
		return err
	}
	log.Info("switched root; starting the first process", "argv", argv)
	env := []string{"PATH=/usr/bin:/usr/sbin:/bin:/sbin", "HOME=/root"}
	if err := unix.Exec(argv[0], argv, env); err != nil {
		return fmt.Errorf("starting the first process %s: %w", argv[0], err)
	}
	return nil
}

// imageCmdline returns the kernel command line the image was built with, which the initramfs carries, after
// checking that the kernel runs with it. systemd-stub replaces the command line of the UKI with one the boot
// option passes when Secure Boot is off; the boot options are the host's, so such a command line (another
// root hash, another first process) is refused here, besides being measured into PCR 12.
func imageCmdline() (string, error) {
	want, err := os.ReadFile(CmdlineFile)
	if err != nil {
		return "", fmt.Errorf("reading the image's kernel command line: %w", err)
	}
	got, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", fmt.Errorf("reading the kernel command line: %w", err)
	}
	if strings.TrimSpace(string(got)) != strings.TrimSpace(string(want)) {
		return "", fmt.Errorf("the kernel runs with a command line that is not the image's (the boot option passed its own): %q", strings.TrimSpace(string(got)))
	}
	return strings.TrimSpace(string(want)), nil
}

// loadModules loads the modules of the initramfs in the order its list gives.
func loadModules(log *slog.Logger) error {
	order, err := os.ReadFile(filepath.Join(modulesDir, "order"))
	if err != nil {
		return fmt.Errorf("reading the module list: %w", err)
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join(modulesDir, filepath.Base(name)))
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("loading module %s: %w", name, err)
		}
	}
	log.Info("modules loaded", "count", len(strings.Fields(string(order))))
	return nil
}

// waitPartition returns the device node of the partition with the GPT name, waiting for the disk to appear.
func waitPartition(name string) (string, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		uevents, _ := filepath.Glob("/sys/class/block/*/uevent")
		var found []string
		for _, u := range uevents {
			raw, err := os.ReadFile(u)
			if err != nil {
				continue
			}
			var dev, pname string
			for _, line := range strings.Split(string(raw), "\n") {
				if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
					dev = v
				}
				if v, ok := strings.CutPrefix(line, "PARTNAME="); ok {
					pname = v
				}
			}
			if pname == name && dev != "" && !strings.Contains(dev, "/") {
				found = append(found, "/dev/"+dev)
			}
		}
		switch {
		case len(found) == 1:
			if _, err := os.Stat(found[0]); err == nil {
				return found[0], nil
			}
		case len(found) > 1:
			return "", fmt.Errorf("more than one partition is named %q: %v", name, found)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no partition named %q appeared within %s", name, deviceWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The device-mapper ioctl interface (linux/dm-ioctl.h).
const (
	dmIoctlSize   = 312
	dmBufferSize  = 16 << 10
	dmDevCreate   = 0xc138fd03
	dmDevSuspend  = 0xc138fd06
	dmTableLoad   = 0xc138fd09
	dmReadOnly    = 1 << 0
	dmTargetSpec  = 40
	dmNameLen     = 128
	dmOffDataSize = 12
	dmOffStart    = 16
	dmOffTargets  = 20
	dmOffFlags    = 28
	dmOffDev      = 40
	dmOffName     = 48
)

func dmCall(ctl *os.File, cmd uintptr, flags uint32, targets uint32, payload []byte) ([]byte, error) {
	buf := make([]byte, dmBufferSize)
	le := binary.LittleEndian
	le.PutUint32(buf[0:], 4) // interface version 4.0.0
	le.PutUint32(buf[dmOffDataSize:], dmBufferSize)
	le.PutUint32(buf[dmOffStart:], dmIoctlSize)
	le.PutUint32(buf[dmOffTargets:], targets)
	le.PutUint32(buf[dmOffFlags:], flags)
	copy(buf[dmOffName:dmOffName+dmNameLen-1], verityName)
	if dmIoctlSize+len(payload) > len(buf) {
		return nil, errors.New("device-mapper table too large")
	}
	copy(buf[dmIoctlSize:], payload)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), cmd, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return nil, errno
	}
	return buf, nil
}

// openVerity creates the read-only dm-verity mapping of the root partition and its node verityDev.
func openVerity(part string, r Root) error {
	deadline := time.Now().Add(deviceWait)
	var ctl *os.File
	for {
		var err error
		if ctl, err = os.OpenFile("/dev/mapper/control", os.O_RDWR, 0); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("opening the device-mapper control node: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer ctl.Close()
	out, err := dmCall(ctl, dmDevCreate, 0, 0, nil)
	if err != nil {
		return fmt.Errorf("creating the device-mapper device: %w", err)
	}
	dev := binary.LittleEndian.Uint64(out[dmOffDev:])
	params := fmt.Sprintf("1 %s %s %d %d %d %d sha256 %x %x", part, part, 4096, 4096, r.DataBlocks, r.HashStart, r.RootHash, r.Salt)
	spec := make([]byte, dmTargetSpec, dmTargetSpec+len(params)+8)
	binary.LittleEndian.PutUint64(spec[0:], 0)
	binary.LittleEndian.PutUint64(spec[8:], r.DataBlocks*8) // 512-byte sectors
	copy(spec[24:40], "verity")
	spec = append(append(spec, params...), 0)
	for len(spec)%8 != 0 {
		spec = append(spec, 0)
	}
	binary.LittleEndian.PutUint32(spec[20:], uint32(len(spec)))
	if _, err := dmCall(ctl, dmTableLoad, dmReadOnly, 1, spec); err != nil {
		return fmt.Errorf("loading the dm-verity table (%s): %w", params, err)
	}
	if _, err := dmCall(ctl, dmDevSuspend, 0, 0, nil); err != nil {
		return fmt.Errorf("activating the dm-verity device: %w", err)
	}
	if err := unix.Mknod(verityDev, unix.S_IFBLK|0o400, int(unix.Mkdev(unix.Major(dev), unix.Minor(dev)))); err != nil {
		return fmt.Errorf("creating %s: %w", verityDev, err)
	}
	return nil
}

// checkAll reads the whole device once: dm-verity checks every block against the root hash and fails a read
// of any block that does not match.
func checkAll(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
}

// switchRoot makes sysroot the root: it frees the initramfs (files only, not other mounts), moves the mount
// over / and enters it.
func switchRoot() error {
	for _, p := range []string{"/init", modulesDir} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("freeing the initramfs: %w", err)
		}
	}
	if err := unix.Chdir(sysroot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("entering the root: %w", err)
	}
	return unix.Chdir("/")
}

// Refuse reports on the console that the node refuses to boot and why, then powers the machine off.
func Refuse(err error) {
	msg := fmt.Sprintf("\n*** constellation-init: REFUSING TO BOOT: %v ***\n*** the node powers off ***\n", err)
	for range 3 {
		os.Stdout.WriteString(msg)
	}
	if c, cerr := os.OpenFile("/dev/console", os.O_WRONLY, 0); cerr == nil {
		c.WriteString(msg)
		c.Close()
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
