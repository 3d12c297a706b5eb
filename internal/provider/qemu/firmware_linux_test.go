package qemu

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/provider/qemu/qemutest"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

var update = flag.Bool("update", false, "record the firmware PCRs of a reference boot into "+FirmwareFile)

// imageDir is where 'make node-image' writes the bootable disk image.
const imageDir = "../../../_out/node-image"

// requireMachine skips a test that boots machines where they cannot boot.
func requireMachine(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the QEMU provider needs root (network namespace, taps)")
	}
	if err := bootimage.QEMUPrerequisites(); err != nil {
		t.Skip(err)
	}
	for _, tool := range []string{"ip", "nsenter", "swtpm_setup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed; run scripts/setup.sh", tool)
		}
	}
	if _, err := os.Stat(filepath.Join(imageDir, bootimage.ImageFile)); err != nil {
		t.Skipf("no disk image (%v); build it with 'make node-image'", err)
	}
	qemutest.LockProvider(t)
	if NetworkOwned() {
		t.Fatalf("a QEMU cluster runs on this machine (its provider holds namespace %s) outside the tests; stop it first", Netns)
	}
}

// bootOne boots a cluster of one control-plane machine from the built disk image and returns its provider
// directory and state once the machine runs; the test's cleanup powers it off and removes the network.
func bootOne(t *testing.T) (string, State) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(imageDir, bootimage.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var disk bootimage.Disk
	if err := json.Unmarshal(raw, &disk); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	p := &Provider{Dir: dir}
	go func() {
		done <- p.Run(ctx, Spec{ControlPlanes: 1, Image: filepath.Join(imageDir, bootimage.ImageFile), ImageDigest: disk.Digest, Accel: AccelTCG})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("provider: %v", err)
		}
		if NetworkInUse() {
			t.Errorf("the node network is still there after the provider stopped")
		}
	})
	for {
		s, ok, err := ReadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		if ok && s.Phase == PhaseRunning {
			return dir, s
		}
		if ok && s.Phase == PhaseFailed {
			t.Fatalf("booting failed: %s", s.Error)
		}
		select {
		case err := <-done:
			t.Fatalf("provider stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fetchEvidence waits for the node's verification service and returns its evidence for nonce; it fails when
// the machine powers off instead.
func fetchEvidence(t *testing.T, n NodeState, nonce []byte) []byte {
	t.Helper()
	endpoint := n.IP + ":" + strconv.Itoa(verifyservice.Port)
	for {
		ev, err := verifyservice.Fetch(context.Background(), endpoint, nonce)
		if err == nil {
			return ev
		}
		if syscall.Kill(n.PID, 0) != nil {
			console, _ := os.ReadFile(n.Console)
			t.Fatalf("%s powered off before it served evidence (%v); console:\n%s", n.Name, err, console)
		}
		time.Sleep(time.Second)
	}
}

// The firmware's PCRs of a machine booting the disk image are the pinned ones (with -update: record them).
// The evidence is validated first against the image's own expected measurements (PCRs 4, 11, 12, 13),
// which proves the boot replayed from the firmware's real event log matches the build's computation.
func TestFirmwarePCRs(t *testing.T) {
	requireMachine(t)
	rawImage, err := os.ReadFile(filepath.Join(imageDir, bootimage.MeasurementsFile))
	if err != nil {
		t.Fatal(err)
	}
	var image measurements.M
	if err := json.Unmarshal(rawImage, &image); err != nil {
		t.Fatal(err)
	}
	dir, state := bootOne(t)
	node := state.Nodes[0]
	nonce := make([]byte, attestation.NonceSize)
	rand.Read(nonce)
	ev := fetchEvidence(t, node, nonce)
	roots, err := readCert(AKCAPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	v, err := validators.New(&validators.Policy{Variant: attestation.QEMUVTPM.Name, Measurements: image, AKRoots: roots}, validators.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(context.Background(), ev, nonce); err != nil {
		t.Fatalf("the machine's evidence against the image's measurements: %v", err)
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	got := measurements.M{}
	for _, idx := range FirmwarePCRs {
		var d measurements.Digest
		copy(d[:], doc.TPM.Quotes[0].PCRs[idx])
		got[idx] = measurements.Measurement{Expected: d}
	}
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "ovmf").Output()
	if err != nil {
		t.Fatalf("the ovmf package's version: %v", err)
	}
	fw := &Firmware{
		OVMF:    string(out),
		Machine: fmt.Sprintf("q35, %d vCPUs, %d MiB, %s, tpm-tis, virtio-blk disk and state disk, virtio-net without option ROM, no network boot", CPUs, DefaultMemoryMiB, node.Accel),
		PCRs:    got,
	}
	if *update {
		raw, err := marshalFirmware(fw)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(FirmwareFile, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("recorded %s for OVMF %s", FirmwareFile, fw.OVMF)
		return
	}
	pinned, err := PinnedFirmware()
	if err != nil {
		t.Fatal(err)
	}
	if pinned.OVMF != fw.OVMF {
		t.Errorf("the pinned firmware PCRs belong to OVMF %s, this machine has %s: record them again (-update)", pinned.OVMF, fw.OVMF)
	}
	var diffs []string
	for _, idx := range FirmwarePCRs {
		if pinned.PCRs[idx].Expected != got[idx].Expected {
			diffs = append(diffs, fmt.Sprintf("PCR %d: %s, pinned %s", idx, got[idx].Expected, pinned.PCRs[idx].Expected))
		}
	}
	if len(diffs) > 0 {
		t.Errorf("the firmware measured other values than pinned:\n%s", strings.Join(diffs, "\n"))
	}
}
