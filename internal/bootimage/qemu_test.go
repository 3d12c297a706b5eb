package bootimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// incompressible returns n bytes that no compressor shrinks, derived from seed.
func incompressible(seed string, n int) []byte {
	var out []byte
	block := sha256.Sum256([]byte(seed))
	for len(out) < n {
		out = append(out, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return out[:n]
}

// bootImage builds a disk image of a small root whose first process is test/uefiguest: it reports the PCRs
// and the event log on the console and powers off. The root also holds an incompressible file, stored as is
// by squashfs, for the host to tamper with.
func bootImage(t *testing.T, dir string) (*Disk, []byte) {
	t.Helper()
	vmlinuz, modules := kernelCache(t)
	buildTools(t)
	initBin, guest := filepath.Join(dir, "node-init"), filepath.Join(dir, "uefiguest")
	goBuild(t, "cmd/node-init", initBin)
	goBuild(t, "test/uefiguest", guest)
	payload := incompressible("constellation root payload", 256<<10)
	root := testRoot(t, dir, guest, map[string]string{"usr/share/payload": string(payload)})
	d, err := Build(t.Context(), Inputs{Stub: DefaultStub, Kernel: vmlinuz, Modules: modules, Init: initBin,
		Root: root, FirstProcess: []string{"/usr/bin/first"}}, dir)
	if err != nil {
		t.Fatal(err)
	}
	return d, payload
}

// TestQEMUBoot boots the disk image as a UEFI machine (OVMF, swtpm, QEMU with TCG): the firmware starts the
// UKI from the ESP, systemd-stub measures it and starts the kernel, the init opens the root with dm-verity and
// switches into it, and the first process reports the TPM's PCRs, which must equal the values computed at
// build time from the image alone. Then the host's attack: it flips one byte of a file in the root partition
// on disk, and the node must refuse to switch into it.
func TestQEMUBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a virtual machine three times (-short)")
	}
	if err := QEMUPrerequisites(); err != nil {
		t.Skip(err)
	}
	ctx := t.Context()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-10*time.Second))
		defer cancel()
	}
	dir := t.TempDir()
	d, payload := bootImage(t, dir)
	image := filepath.Join(dir, ImageFile)
	t.Logf("image %s: %d MiB, UKI %s", d.Digest, d.Size>>20, d.UKI)

	b, err := BootQEMU(ctx, image, dir)
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, b.Console)
	}
	first, ok := b.Find("RESULT first-process")
	if !ok {
		t.Fatalf("the first process did not run from the verified root; console:\n%s", b.Console)
	}
	if _, ok := b.Find("RESULT root ID=constellation-test"); !ok {
		t.Fatalf("the first process did not read the root's os-release; console:\n%s", b.Console)
	}
	for _, pcr := range []uint32{PCRBootChain, PCRKernelImage, PCRKernelParameters, PCRSysexts} {
		line, ok := b.Find(fmt.Sprintf("RESULT pcr %d ", pcr))
		if !ok {
			t.Fatalf("no PCR %d on the console:\n%s", pcr, b.Console)
		}
		got := strings.Fields(line.Text)[3]
		if want := d.Measurements[pcr].Expected.String(); got != want {
			t.Errorf("PCR %d after boot is %s, computed from the image %s", pcr, got, want)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", b.Console)
		t.FailNow()
	}
	t.Logf("PCRs 4, 11, 12, 13 equal the values computed from the image")
	// The firmware's PCRs depend on the OVMF build and the machine, not on the image: a provider records them
	// from a reference boot like this one.
	for _, pcr := range []int{0, 1, 2, 3, 5, 7} {
		if line, ok := b.Find(fmt.Sprintf("RESULT pcr %d ", pcr)); ok {
			t.Logf("reference boot: firmware PCR %d = %s", pcr, strings.Fields(line.Text)[3])
		}
	}
	t.Logf("figure: UEFI boot (OVMF, TCG) to the first process on the verified root: %.1fs", first.At.Seconds())

	// The host's first attack: it starts the genuine UKI with a command line of its own (here another first
	// process), as a boot option can; systemd-stub, with Secure Boot off, replaces the embedded command line.
	// QEMU's -kernel and -append do it through OVMF.
	uki := filepath.Join(dir, "host-BOOTX64.EFI")
	if out, err := exec.CommandContext(ctx, "mcopy", "-i", fmt.Sprintf("%s@@%d", image, partitionAlign), "::/EFI/BOOT/BOOTX64.EFI", uki).CombinedOutput(); err != nil {
		t.Fatalf("reading the UKI from the ESP: %v: %s", err, out)
	}
	hostCmdline := strings.Replace(d.Cmdline, "-- /usr/bin/first", "-- /usr/bin/first --host-chosen", 1)
	b, err = BootQEMU(ctx, image, dir, "-kernel", uki, "-append", hostCmdline)
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, b.Console)
	}
	if _, ok := b.Find("RESULT first-process"); ok {
		t.Fatalf("the node booted with the host's command line; console:\n%s", b.Console)
	}
	refused, ok := b.Find("REFUSING TO BOOT")
	if !ok || !strings.Contains(refused.Text, "not the image's") {
		t.Fatalf("the node did not refuse the host's command line loudly; console:\n%s", b.Console)
	}
	t.Logf("host's command line: %s", refused.Text)

	// The second attack: the host flips one byte of a file in the root partition of the disk image.
	raw, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.Index(raw, payload[:4096])
	if off < 0 || bytes.Contains(raw[off+1:], payload[:4096]) {
		t.Fatal("the root's payload file is not in the image exactly once")
	}
	raw[off+1000] ^= 0x01
	if err := os.WriteFile(image, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped one bit at offset %d of the disk image (a file in the root partition)", off+1000)
	b, err = BootQEMU(ctx, image, dir)
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, b.Console)
	}
	if _, ok := b.Find("RESULT first-process"); ok {
		t.Fatalf("the node switched into a root partition the host changed; console:\n%s", b.Console)
	}
	refused, ok = b.Find("REFUSING TO BOOT")
	if !ok || !strings.Contains(refused.Text, "does not match the root hash") {
		t.Fatalf("the node did not refuse the changed root loudly; console:\n%s", b.Console)
	}
	t.Logf("tampered root: %s", refused.Text)
}
