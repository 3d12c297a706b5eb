//go:build linux && cgo

package luks

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The QEMU test needs a kernel with device-mapper, dm-crypt and dm-integrity: Debian's cloud kernel, unpacked
// by scripts/qemu-kernel.sh (scripts/setup.sh runs it) into this cache, and qemu-system-x86_64.
func qemuKernel(t *testing.T) (vmlinuz, modules string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a virtual machine three times (-short)")
	}
	cache := os.Getenv("CONSTELLATION_QEMU_CACHE")
	if cache == "" {
		cache = "/var/cache/constellation/qemu"
	}
	vmlinuz, modules = filepath.Join(cache, "kernel", "vmlinuz"), filepath.Join(cache, "kernel", "modules")
	if _, err := os.Stat(vmlinuz); err != nil {
		t.Skipf("no kernel for the QEMU test at %s: run scripts/qemu-kernel.sh (scripts/setup.sh does)", vmlinuz)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86; scripts/setup.sh installs it)")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("ldd not installed")
	}
	return vmlinuz, modules
}

// guestModules are what the guest loads (with their dependencies): the virtio disk, device-mapper with
// dm-crypt and dm-integrity, the crypto templates the kernel would otherwise load on demand (xts over ecb, authenc), and
// the user-space crypto API libcryptsetup uses for keyslots.
var guestModules = []string{"virtio_pci", "virtio_blk", "dm_mod", "dm_crypt", "dm_integrity", "ecb", "xts", "authenc", "af_alg", "algif_skcipher", "algif_hash"}

type bootResult struct {
	checks   map[string]string // check -> details, for "RESULT ok"
	failures []string
	done     bool
	crashed  bool
	duration time.Duration
	console  string
}

// boot runs the guest once with constellation.boot=n. If the guest reports "RESULT crashpoint", the machine is
// killed at once (a power loss).
func boot(ctx context.Context, t *testing.T, dir, vmlinuz, initrd string, n int, disks ...string) bootResult {
	t.Helper()
	args := []string{"-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot", "-no-user-config", "-nic", "none",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet no_timer_check constellation.boot=%d", n)}
	for _, d := range disks {
		args = append(args, "-drive", "file="+filepath.Join(dir, d)+",format=raw,if=virtio")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bootResult{checks: map[string]string{}}
	var console strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		console.WriteString(line + "\n")
		i := strings.Index(line, "RESULT ")
		if i < 0 {
			continue
		}
		f := strings.SplitN(line[i+len("RESULT "):], " ", 3)
		switch {
		case f[0] == "ok" && len(f) >= 2:
			r.checks[f[1]] = strings.Join(f[2:], " ")
		case f[0] == "fail":
			r.failures = append(r.failures, strings.Join(f[1:], " "))
		case f[0] == "done":
			r.done = true
		case f[0] == "crashpoint":
			r.crashed = true
			cmd.Process.Kill() // power loss: nothing more reaches the disk
		}
	}
	werr := cmd.Wait()
	r.duration = time.Since(start)
	r.console = console.String()
	if ctx.Err() != nil {
		t.Fatalf("boot %d: %v (the test's deadline) after %s; console:\n%s", n, ctx.Err(), r.duration, r.console)
	}
	if werr != nil && !r.crashed {
		t.Fatalf("boot %d: qemu: %v; console:\n%s", n, werr, r.console)
	}
	if len(r.failures) > 0 {
		t.Fatalf("boot %d failed:\n  %s\nconsole:\n%s", n, strings.Join(r.failures, "\n  "), r.console)
	}
	t.Logf("boot %d: %.1fs", n, r.duration.Seconds())
	return r
}

func (r bootResult) require(t *testing.T, n int, checks ...string) {
	t.Helper()
	for _, c := range checks {
		if _, ok := r.checks[c]; !ok {
			t.Fatalf("boot %d did not report %q; console:\n%s", n, c, r.console)
		}
	}
}

func newDisk(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// dataOffset returns the offset of the data segment from the LUKS2 JSON metadata of a disk image.
func dataOffset(t *testing.T, img []byte) int {
	t.Helper()
	size := binary.BigEndian.Uint64(img[offHdrSize:])
	area := img[binaryHeaderSize:size]
	var meta struct {
		Segments map[string]struct {
			Offset string `json:"offset"`
		} `json:"segments"`
	}
	if err := json.Unmarshal(area[:bytes.IndexByte(area, 0)], &meta); err != nil {
		t.Fatal(err)
	}
	off, err := strconv.Atoi(meta.Segments["0"].Offset)
	if err != nil || off <= 0 || off >= len(img) {
		t.Fatalf("data segment offset %q", meta.Segments["0"].Offset)
	}
	return off
}

// changedBlock returns the offset of the 4096-byte block past from that changed completely between before
// and after, the highest one: a rewritten data sector's ciphertext changes completely; the journal (which
// dm-integrity keeps before the data areas) does too, the sector's tag changes in 32 bytes only.
func changedBlock(t *testing.T, before, after []byte, from int) int {
	t.Helper()
	found := -1
	for off := from; off+4096 <= len(after); off += 4096 {
		diff := 0
		for i := off; i < off+4096; i++ {
			if before[i] != after[i] {
				diff++
			}
		}
		if diff > 3800 {
			found = off
		}
	}
	if found < 0 {
		t.Fatal("no completely rewritten block found in the data area")
	}
	return found
}

// TestQEMU runs the package against a real device-mapper in a virtual machine (Debian's kernel under QEMU),
// over three boots of the same disks (see test/luksguest for the guest's side). Besides the steps below, the
// bootstrapper's code (diskmapper.Prepare, Unlock) takes state disks through a node's first boot (boot 2) and
// reboot (boot 3), and the host attacks two of them: an ext4 disk of its own is refused in boot 2, and a
// state disk whose header it rewrote to cipher_null after boot 2 is refused in boot 3; neither is written.
//
//  1. format with a random first-boot key, re-key to the derived key, write a marker through the mapping; on
//     a second disk, a re-key that a power loss cuts between adding the new keyslot and destroying the old.
//     The marker must not be in the disk image.
//  2. a wrong key is refused and the header does not change; the right key reads the marker. On the second
//     disk both keys open, and finishing the re-key leaves the derived key only.
//  3. after the host flipped bytes of one data sector, reading it is an integrity error. The reset rule: a
//     reset mark leaves the initialised second disk alone; a marked disk that never got its key is wiped and
//     formatted again.
func TestQEMU(t *testing.T) {
	vmlinuz, modules := qemuKernel(t)
	start := time.Now()
	ctx := t.Context()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-10*time.Second))
		defer cancel()
	}
	dir := t.TempDir()
	guest := filepath.Join(dir, "init")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", guest, "github.com/constellation-dev/constellation/test/luksguest")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the guest: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
	}
	buildInitramfs(t, initrd, guest, modules, guestModules, mkfs)
	disk, disk2 := filepath.Join(dir, "disk.img"), filepath.Join(dir, "disk2.img")
	newDisk(t, disk, 64<<20)
	newDisk(t, disk2, 32<<20)
	newDisk(t, filepath.Join(dir, "scratch.img"), 1<<20)
	newDisk(t, filepath.Join(dir, "disk3.img"), 32<<20)
	nodeDisk, cutDisk := filepath.Join(dir, "node.img"), filepath.Join(dir, "cut.img")
	newDisk(t, nodeDisk, 32<<20)
	newDisk(t, cutDisk, 32<<20)
	tamperDisk, ext4Disk := filepath.Join(dir, "tamper.img"), filepath.Join(dir, "ext4.img")
	newDisk(t, tamperDisk, 32<<20)
	// The host's own ext4 filesystem, shaped like the state disk of a node without device-mapper.
	newDisk(t, ext4Disk, 32<<20)
	planted := hostFiles(t, dir)
	if out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-O", "encrypt", "-d", planted, ext4Disk).CombinedOutput(); err != nil {
		t.Fatalf("making the host's ext4 disk: %v: %s", err, out)
	}
	ext4Before, err := os.ReadFile(ext4Disk)
	if err != nil {
		t.Fatal(err)
	}
	disks := []string{"disk.img", "disk2.img", "scratch.img", "disk3.img", "node.img", "cut.img", "tamper.img", "ext4.img"}
	t.Logf("prepared in %.1fs", time.Since(start).Seconds())

	r1 := boot(ctx, t, dir, vmlinuz, initrd, 1, disks...)
	r1.require(t, 1, "setup", "format", "header-new", "open-new-refused", "set-key", "open", "write-marker", "close", "format-2")
	if !r1.crashed {
		t.Fatalf("boot 1 did not stop at the crash point; console:\n%s", r1.console)
	}
	t.Logf("boot 1: %s; %s", r1.checks["format"], r1.checks["format-2"])
	img1, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	markerUnit := []byte("CONSTELLATION-LUKS-MARKER-7f3a9c")
	if !bytes.Contains(img1, []byte(LabelInitialised)) {
		t.Fatal("the header label is not found in plain text in the disk image: the search cannot work")
	}
	if bytes.Contains(img1, markerUnit) {
		t.Fatal("the marker written through the mapping is in the disk image in plain text")
	}
	h, err := ReadHeader(disk)
	if err != nil || h.State() != StateInitialised || !strings.Contains(r1.checks["format"], h.UUID) {
		t.Fatalf("disk after boot 1: %+v, %v", h, err)
	}
	if h2, err := ReadHeader(disk2); err != nil || h2.State() != StateInitialised {
		t.Fatalf("second disk after the power loss: %+v, %v", h2, err)
	}
	data := dataOffset(t, img1)

	r2 := boot(ctx, t, dir, vmlinuz, initrd, 2, disks...)
	r2.require(t, 2, "wrong-key-refused", "open", "read-marker", "rewrite-block", "close",
		"after-crash-first-boot-key-does-not-map", "after-crash-opens-with-derived-key", "finish-set-key",
		"first-boot-key-gone", "derived-key-opens",
		"node-prepare-new", "node-new-has-no-state", "node-unlock-new", "node-store", "cut-prepare-new",
		"tamper-prepare-new", "ext4-refused")
	if !r2.done {
		t.Fatalf("boot 2 did not finish; console:\n%s", r2.console)
	}
	t.Logf("boot 2: wrong key: %s", r2.checks["wrong-key-refused"])
	t.Logf("boot 2: the host's ext4 disk: %s", r2.checks["ext4-refused"])
	if after, err := os.ReadFile(ext4Disk); err != nil || !bytes.Equal(ext4Before, after) {
		t.Fatalf("the node wrote to the host's ext4 disk it refused (%v)", err)
	}
	// The attack on the header: rewrite the node's state disk to cipher_null without integrity, keep its
	// keyslot, and put the host's plaintext ext4 at the data offset.
	tampered := rewriteToCipherNull(t, ctx, tamperDisk, mkfs, planted)
	img2, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img1[:data], img2[:data]) {
		t.Fatal("boot 2 (a refused wrong key, then opening with the right one) changed the header or keyslots")
	}
	if bytes.Contains(img2, markerUnit) {
		t.Fatal("the marker is in the disk image in plain text")
	}
	// Damage the sector boot 2 rewrote: flip 16 bytes in the middle of its ciphertext.
	off := changedBlock(t, img1, img2, data)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	sector := make([]byte, 16)
	copy(sector, img2[off+2048:])
	for i := range sector {
		sector[i] ^= 0xff
	}
	if _, err := f.WriteAt(sector, int64(off+2048)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped 16 bytes at offset %d of the disk image (the data area starts at %d)", off+2048, data)

	r3 := boot(ctx, t, dir, vmlinuz, initrd, 3, disks...)
	r3.require(t, 3, "open", "read-marker", "integrity-error", "close",
		"reset-refused-initialised", "reset-refused-opens", "reset-wiped-new", "reset-formatted-again",
		"node-prepare-again", "node-has-state", "node-wrong-key-refused", "node-unlock-again", "node-state-kept", "cut-prepare-reset",
		"tamper-refused")
	if !r3.done {
		t.Fatalf("boot 3 did not finish; console:\n%s", r3.console)
	}
	t.Logf("boot 3: %s", r3.checks["integrity-error"])
	t.Logf("boot 3: the rewritten header: %s", r3.checks["tamper-refused"])
	if after, err := os.ReadFile(tamperDisk); err != nil || !bytes.Equal(tampered, after) {
		t.Fatalf("the node wrote to the disk whose header the host rewrote (%v)", err)
	}
	t.Logf("boot 3: %s", r3.checks["reset-refused-initialised"])
	if h, err := ReadHeader(disk2); err != nil || h.State() != StateInitialised || !h.ResetMarked() {
		t.Fatalf("the marked initialised disk after boot 3: %+v, %v", h, err)
	}
	if h, err := ReadHeader(filepath.Join(dir, "disk3.img")); err != nil || h.State() != StateInitialised || h.ResetMarked() ||
		!strings.Contains(r3.checks["reset-formatted-again"], h.UUID) || strings.Contains(r3.checks["reset-wiped-new"], h.UUID) {
		t.Fatalf("the reset disk after boot 3: %+v, %v (boot 3: %q, %q)", h, err, r3.checks["reset-wiped-new"], r3.checks["reset-formatted-again"])
	}
	// The node's state disk, taken through first boot and reboot by the bootstrapper's code: its state file is
	// not in the image in plain text, the disk kept its UUID, and the disk whose first boot was cut short was
	// formatted again (a new UUID) without its key ever being set.
	nodeImg, err := os.ReadFile(nodeDisk)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(nodeImg, []byte("CONSTELLATION-NODE-STATE-MARKER")) {
		t.Fatal("the node's state file is in the state disk image in plain text")
	}
	if h, err := ReadHeader(nodeDisk); err != nil || h.State() != StateInitialised ||
		r2.checks["node-prepare-new"] != "disk "+h.UUID || r3.checks["node-prepare-again"] != "disk "+h.UUID {
		t.Fatalf("the node's state disk: %+v, %v (boot 2: %q, boot 3: %q)", h, err, r2.checks["node-prepare-new"], r3.checks["node-prepare-again"])
	}
	if h, err := ReadHeader(cutDisk); err != nil || h.State() != StateNew || h.ResetMarked() ||
		r3.checks["cut-prepare-reset"] != "disk "+h.UUID || r2.checks["cut-prepare-new"] == r3.checks["cut-prepare-reset"] {
		t.Fatalf("the disk whose first boot was cut short: %+v, %v (boot 2: %q, boot 3: %q)", h, err, r2.checks["cut-prepare-new"], r3.checks["cut-prepare-reset"])
	}
	t.Logf("QEMU test: %.1fs in all (boots %.1fs, %.1fs, %.1fs)", time.Since(start).Seconds(), r1.duration.Seconds(), r2.duration.Seconds(), r3.duration.Seconds())
}

// hostFiles returns a directory with the files the host puts on its own filesystems: a node that mounts one
// finds its state directory there.
func hostFiles(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "host-files")
	if err := os.MkdirAll(filepath.Join(src, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "state", "host-planted"), []byte("planted by the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}

// rewriteToCipherNull performs the header attack on the LUKS2 disk image at path as a host can: in both header
// copies, segment 0 becomes cipher_null-ecb without integrity (keyslots, digest and the parameter token are
// kept, so the node's genuine key still opens a keyslot), and the unkeyed checksums are recomputed; a
// plaintext ext4 filesystem with the host's files is put at the data offset (4096-byte blocks: the mapping
// has 4096-byte sectors). It returns the image.
func rewriteToCipherNull(t *testing.T, ctx context.Context, path, mkfs, files string) []byte {
	t.Helper()
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := binary.BigEndian.Uint64(img[offHdrSize:])
	for _, off := range []uint64{0, size} {
		copyArea := img[off : off+size]
		area := copyArea[binaryHeaderSize:]
		var meta map[string]any
		if err := json.Unmarshal(area[:bytes.IndexByte(area, 0)], &meta); err != nil {
			t.Fatal(err)
		}
		seg := meta["segments"].(map[string]any)["0"].(map[string]any)
		seg["encryption"] = "cipher_null-ecb"
		delete(seg, "integrity")
		js, err := json.Marshal(meta)
		if err != nil {
			t.Fatal(err)
		}
		clear(area)
		copy(area, js)
		clear(copyArea[offChecksum : offChecksum+lenChecksum])
		sum := sha256.Sum256(copyArea)
		copy(copyArea[offChecksum:], sum[:])
		if _, err := ParseHeader(copyArea); err != nil {
			t.Fatalf("the rewritten header copy at %d: %v", off, err)
		}
	}
	data := dataOffset(t, img)
	fs := filepath.Join(t.TempDir(), "plain.ext4")
	newDisk(t, fs, int64(len(img)-data))
	if out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-b", "4096", "-d", files, fs).CombinedOutput(); err != nil {
		t.Fatalf("making the host's plaintext filesystem: %v: %s", err, out)
	}
	plain, err := os.ReadFile(fs)
	if err != nil {
		t.Fatal(err)
	}
	copy(img[data:], plain)
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return img
}
