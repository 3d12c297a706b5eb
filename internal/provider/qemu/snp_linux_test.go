package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
	"github.com/constellation-dev/constellation/internal/bootimage"
)

// snpRoot builds a file system root for SNPHost: the devices as links to /dev/null (a character device)
// and the kvm_amd parameter with value snp ("" for none).
func snpRoot(t *testing.T, devices []string, snp string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range devices {
		p := filepath.Join(root, "dev", d)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/dev/null", p); err != nil {
			t.Fatal(err)
		}
	}
	if snp != "" {
		p := filepath.Join(root, "sys/module/kvm_amd/parameters/sev_snp")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(snp), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func qemuVersion(v string) func() (string, error) {
	return func() (string, error) {
		return "QEMU emulator version " + v + "\nCopyright (c) 2003-2024 Fabrice Bellard\n", nil
	}
}

func TestSNPHostCheck(t *testing.T) {
	good := SNPHost{Root: snpRoot(t, []string{"sev", "kvm"}, "Y\n"), QEMUVersion: qemuVersion("9.2.0 (Debian 1:9.2.0+ds-1)")}
	if err := good.Check(); err != nil {
		t.Fatalf("an SEV-SNP host is refused: %v", err)
	}
	regular := snpRoot(t, []string{"kvm"}, "1")
	if err := os.WriteFile(filepath.Join(regular, "dev/sev"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		host SNPHost
		want []string
	}{
		"nothing": {SNPHost{Root: t.TempDir(), QEMUVersion: qemuVersion("7.2.15")}, []string{
			"no SEV device /dev/sev", "no KVM device /dev/kvm", "kvm_amd is not loaded", "QEMU 7.2 cannot launch SEV-SNP guests (it needs 9.1 or later)",
		}},
		"SNP disabled":        {SNPHost{Root: snpRoot(t, []string{"sev", "kvm"}, "N"), QEMUVersion: qemuVersion("9.1.0")}, []string{`kvm_amd has SEV-SNP disabled`, `is "N"`}},
		"QEMU 9.0":            {SNPHost{Root: good.Root, QEMUVersion: qemuVersion("9.0.2")}, []string{"QEMU 9.0 cannot"}},
		"no QEMU":             {SNPHost{Root: good.Root, QEMUVersion: func() (string, error) { return "", errors.New("executable file not found") }}, []string{"executable file not found"}},
		"unknown QEMU output": {SNPHost{Root: good.Root, QEMUVersion: func() (string, error) { return "hello\n", nil }}, []string{`printed no QEMU version: "hello"`}},
		"not a device":        {SNPHost{Root: regular, QEMUVersion: qemuVersion("10.0.0")}, []string{"/dev/sev is not a character device"}},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.host.Check()
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.HasPrefix(err.Error(), "this host cannot launch SEV-SNP guests: ") {
				t.Errorf("error does not say what it refuses: %v", err)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

// TestThisHostSNP runs the check on this machine: an SEV-SNP host passes it, any other is refused with a
// clear error.
func TestThisHostSNP(t *testing.T) {
	err := SNPHost{}.Check()
	if err != nil && !strings.HasPrefix(err.Error(), "this host cannot launch SEV-SNP guests: ") {
		t.Fatalf("unclear refusal: %v", err)
	}
	t.Logf("this host: %v", err)
}

// testUKI builds a UKI with objcopy from Debian's systemd-stub, which also serves as its kernel (any PE).
func testUKI(t *testing.T, cmdline string) (uki, kernel []byte) {
	t.Helper()
	stub, err := os.ReadFile("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
	if err != nil {
		t.Skipf("systemd-stub not installed (%v); run scripts/setup.sh", err)
	}
	uki, err = bootimage.BuildUKI(context.Background(), bootimage.UKI{Stub: stub, Kernel: stub, Initrd: []byte("the initrd"), Cmdline: cmdline, OSRel: []byte("ID=test\n")})
	if err != nil {
		t.Fatal(err)
	}
	return uki, stub
}

const testCmdline = "console=ttyS0 roothash=0123"

func testSNPLaunch(t *testing.T, firmware string) (SNPLaunch, []byte) {
	t.Helper()
	raw, kernel := testUKI(t, testCmdline)
	uki := filepath.Join(t.TempDir(), "node-image.efi")
	if err := os.WriteFile(uki, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return SNPLaunch{
		Firmware: filepath.Join("..", "..", "attestation", "snp", "launch", "testdata", firmware),
		UKI:      uki, VCPUType: "EPYC-Milan", GuestFeatures: launch.FeatureSNPActive,
	}, kernel
}

// The launch measurement covers the firmware, the UKI's kernel, initrd and command line, CPUs vCPUs of the
// configured type and the guest features.
func TestSNPLaunchMeasurement(t *testing.T) {
	l, kernel := testSNPLaunch(t, "ovmf_AmdSev_suffix.bin")
	got, err := l.Measurement()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(l.Firmware)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := launch.ParseFirmware(raw)
	if err != nil {
		t.Fatal(err)
	}
	kh, err := launch.NewKernelHashes(kernel, []byte("the initrd"), testCmdline)
	if err != nil {
		t.Fatal(err)
	}
	want, err := launch.Measure(fw, launch.Launch{VCPUs: CPUs, VCPUType: "EPYC-Milan", GuestFeatures: 1, KernelHashes: kh})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("measurement %x, want %x (CPUs vCPUs, the UKI's kernel, initrd and command line)", got, want)
	}
	// Debian 12's OVMF.fd, like this OvmfPkgX64 build, has no kernel hashes page: it cannot measure the UKI.
	noHashes := l
	noHashes.Firmware = filepath.Join(filepath.Dir(l.Firmware), "ovmf_OvmfX64_suffix.bin")
	if _, err := noHashes.Measurement(); err == nil || !strings.Contains(err.Error(), "no kernel hashes section") {
		t.Errorf("firmware without kernel hashes: %v", err)
	}
	missing := l
	missing.Firmware = filepath.Join(t.TempDir(), "none.fd")
	if _, err := missing.Measurement(); err == nil || !strings.Contains(err.Error(), "the SEV-SNP firmware") {
		t.Errorf("missing firmware: %v", err)
	}
	notUKI := l
	notUKI.UKI = filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(notUKI.UKI, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := notUKI.Measurement(); err == nil || !strings.Contains(err.Error(), "no .linux section") {
		t.Errorf("a PE without .linux: %v", err)
	}
}

// The provider refuses to launch SEV-SNP machines on a host that cannot, and machines whose launch
// measurement the policy does not accept; otherwise it boots the UKI's parts, written from the bytes it
// measured.
func TestCheckSNP(t *testing.T) {
	l, kernel := testSNPLaunch(t, "ovmf_AmdSev_suffix.bin")
	m, err := l.Measurement()
	if err != nil {
		t.Fatal(err)
	}
	host := SNPHost{Root: snpRoot(t, []string{"sev", "kvm"}, "Y"), QEMUVersion: qemuVersion("9.2.0")}
	spec := Spec{SNP: &l, SNPMeasurements: [][]byte{bytes.Repeat([]byte{1}, 48), m[:]}}
	dir := t.TempDir()
	b, err := checkSNP(spec, host, dir)
	if err != nil {
		t.Fatalf("expected launch refused: %v", err)
	}
	if b.Firmware != l.Firmware || b.Cmdline != testCmdline || b.VCPUType != "EPYC-Milan" {
		t.Errorf("boot %+v", b)
	}
	for path, want := range map[string][]byte{b.Kernel: kernel, b.Initrd: []byte("the initrd")} {
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, %v", path, len(got), err)
		}
	}
	if _, err := checkSNP(spec, SNPHost{Root: t.TempDir(), QEMUVersion: qemuVersion("7.2.0")}, dir); err == nil || !strings.HasPrefix(err.Error(), "this host cannot launch SEV-SNP guests") {
		t.Errorf("host without SEV-SNP: %v", err)
	}
	other := l
	other.VCPUType = "EPYC-Genoa"
	spec.SNP = &other
	if _, err := checkSNP(spec, host, dir); err == nil || !strings.Contains(err.Error(), "does not accept") {
		t.Errorf("launch with another vCPU type than the policy's: %v", err)
	}
}

func TestSNPMachineArgs(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:0a:db:0a")
	s := machineSpec{Dir: "/ws/nodes/control-plane-0", Image: "/img/node-image.raw", MAC: mac, Tap: "tap0", MemoryMiB: 2048, Name: "control-plane-0"}
	b := snpBoot{Firmware: "/usr/share/OVMF/OVMF.amdsev.fd", Kernel: "/ws/snp/snp-kernel", Initrd: "/ws/snp/snp-initrd", Cmdline: testCmdline, VCPUType: "EPYC-Milan"}
	args := snpMachineArgs(s, b)
	pairs := map[string]string{}
	flags := map[string]bool{"-nodefaults": true, "-no-user-config": true, "-no-reboot": true}
	for i := 0; i < len(args); i++ {
		if !strings.HasPrefix(args[i], "-") {
			t.Fatalf("argument %d %q is not an option (arguments out of step: %q)", i, args[i], args)
		}
		if flags[args[i]] {
			continue
		}
		if i+1 == len(args) {
			t.Fatalf("option %s without value", args[i])
		}
		if _, dup := pairs[args[i]]; !dup {
			pairs[args[i]] = args[i+1]
		}
		i++
	}
	for opt, want := range map[string]string{
		"-accel": "kvm", "-cpu": "EPYC-Milan", "-smp": "2", "-m": "2048", "-bios": b.Firmware,
		"-kernel": b.Kernel, "-initrd": b.Initrd, "-append": testCmdline,
		"-machine": "q35,smm=off,confidential-guest-support=sev0,memory-backend=ram0",
	} {
		if pairs[opt] != want {
			t.Errorf("%s %q, want %q", opt, pairs[opt], want)
		}
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{
		// HOST_DATA = SHA-256("constellation snp node name v1\x00control-plane-0"), the node's name.
		"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data=" + base64.StdEncoding.EncodeToString(func() []byte {
			h := sha256.Sum256([]byte("constellation snp node name v1\x00control-plane-0"))
			return h[:]
		}()),
		"memory-backend-memfd,id=ram0,size=2048M,share=true,prealloc=false",
		"file=/img/node-image.raw", "readonly=on",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("arguments lack %q: %s", want, joined)
		}
	}
	// What the measurement does not cover must not be there: a writable firmware or variable store, a TPM,
	// firmware configuration, option ROMs.
	for _, not := range []string{"pflash", "tpm", "-fw_cfg", "-option-rom"} {
		if strings.Contains(joined, not) {
			t.Errorf("arguments contain %q: %s", not, joined)
		}
	}
	devices := 0
	for i, a := range args {
		if a == "-device" && strings.HasPrefix(args[i+1], "virtio") {
			devices++
			if !strings.Contains(args[i+1], "iommu_platform=on") || !strings.Contains(args[i+1], "disable-legacy=on") {
				t.Errorf("virtio device without the DMA API: %s", args[i+1])
			}
		}
	}
	if devices != 3 || !slices.Contains(args, "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:0a:db:0a,disable-legacy=on,iommu_platform=on") {
		t.Errorf("%d virtio devices: %q", devices, args)
	}
	// A UKI without initrd and command line: QEMU gets neither (it measures the digests of nothing).
	b.Initrd, b.Cmdline = "", ""
	if joined := strings.Join(snpMachineArgs(s, b), " "); strings.Contains(joined, "-initrd") || strings.Contains(joined, "-append") {
		t.Errorf("arguments for a bare kernel: %s", joined)
	}
}
