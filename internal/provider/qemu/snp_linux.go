package qemu

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation/snp"
)

// MinSNPQEMU is the oldest QEMU that launches SEV-SNP guests (the sev-snp-guest object, QEMU 9.1).
var MinSNPQEMU = [2]int{9, 1}

// SNPHost checks whether a host can launch SEV-SNP guests.
type SNPHost struct {
	// Root is the file system root under which /dev and /sys are looked up ("" is "/").
	Root string
	// QEMUVersion returns the output of qemu-system-x86_64 --version; nil runs it.
	QEMUVersion func() (string, error)
}

// Check returns nil if the host can launch SEV-SNP guests, or an error that starts with "this host cannot
// launch SEV-SNP guests:" and names every missing piece: the SEV device of the AMD secure processor
// (/dev/sev), KVM (/dev/kvm), SEV-SNP enabled in kvm_amd (/sys/module/kvm_amd/parameters/sev_snp) and a QEMU
// with SEV-SNP support.
func (h SNPHost) Check() error {
	root := h.Root
	if root == "" {
		root = "/"
	}
	var missing []string
	for _, dev := range []struct{ path, what string }{
		{"dev/sev", "no SEV device /dev/sev (no AMD secure processor with SEV firmware, or the ccp driver is not loaded)"},
		{"dev/kvm", "no KVM device /dev/kvm (SEV-SNP guests run only under KVM)"},
	} {
		fi, err := os.Stat(filepath.Join(root, dev.path))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, dev.what)
		case err != nil:
			missing = append(missing, fmt.Sprintf("/%s: %v", dev.path, err))
		case fi.Mode()&fs.ModeCharDevice == 0:
			missing = append(missing, fmt.Sprintf("/%s is not a character device", dev.path))
		}
	}
	const param = "sys/module/kvm_amd/parameters/sev_snp"
	switch raw, err := os.ReadFile(filepath.Join(root, param)); {
	case errors.Is(err, fs.ErrNotExist):
		missing = append(missing, "kvm_amd is not loaded or has no SEV-SNP support (/"+param+" is missing; an SEV-SNP host needs Linux 6.11 or later on AMD EPYC Milan or later, with SNP enabled in the BIOS)")
	case err != nil:
		missing = append(missing, fmt.Sprintf("/%s: %v", param, err))
	default:
		if v := strings.TrimSpace(string(raw)); v != "Y" && v != "1" {
			missing = append(missing, fmt.Sprintf("kvm_amd has SEV-SNP disabled (/%s is %q; load it with sev_snp=1 and enable SNP in the BIOS)", param, v))
		}
	}
	version := h.QEMUVersion
	if version == nil {
		version = func() (string, error) {
			out, err := exec.Command("qemu-system-x86_64", "--version").Output()
			return string(out), err
		}
	}
	if out, err := version(); err != nil {
		missing = append(missing, fmt.Sprintf("qemu-system-x86_64 --version: %v", err))
	} else if v, err := parseQEMUVersion(out); err != nil {
		missing = append(missing, err.Error())
	} else if v[0] < MinSNPQEMU[0] || v[0] == MinSNPQEMU[0] && v[1] < MinSNPQEMU[1] {
		missing = append(missing, fmt.Sprintf("QEMU %d.%d cannot launch SEV-SNP guests (it needs %d.%d or later)", v[0], v[1], MinSNPQEMU[0], MinSNPQEMU[1]))
	}
	if len(missing) > 0 {
		return fmt.Errorf("this host cannot launch SEV-SNP guests: %s", strings.Join(missing, "; "))
	}
	return nil
}

var qemuVersionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)`)

// parseQEMUVersion reads major and minor version from the output of qemu-system-x86_64 --version.
func parseQEMUVersion(out string) ([2]int, error) {
	m := qemuVersionRE.FindStringSubmatch(out)
	if m == nil {
		return [2]int{}, fmt.Errorf("qemu-system-x86_64 --version printed no QEMU version: %q", firstLine(out))
	}
	major, err1 := strconv.Atoi(m[1])
	minor, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return [2]int{}, fmt.Errorf("qemu-system-x86_64 --version: version %s.%s out of range", m[1], m[2])
	}
	return [2]int{major, minor}, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// SEV-SNP address translation of the hosts this provider supports (EPYC Milan, Genoa, Turin): the C-bit is
// physical address bit 51, and enabling memory encryption reduces the physical address space by one bit.
// Neither enters the launch measurement.
const (
	snpCBitPos         = 51
	snpReducedPhysBits = 1
)

// snpMachineArgs are QEMU's arguments for an SEV-SNP machine: KVM with the configured CPU model, the SEV-SNP
// firmware as -bios (OVMF for SEV-SNP keeps no variable store), the UKI's kernel, initrd and command line
// booted directly with kernel hashes (the launch measurement covers their digests), no TPM (the evidence is
// the SEV-SNP report), and virtio devices that use the DMA API (iommu_platform), as encrypted guests require.
// The guest's memory is private (guest_memfd) apart from what it shares through the memfd backend. HOST_DATA
// names the node (snp.HostDataForNode): the secure processor signs it in every report, and the launch
// measurement does not cover it, so every node of an image has the same measurement and its own name.
func snpMachineArgs(s machineSpec, b snpBoot) []string {
	mem := strconv.Itoa(s.MemoryMiB)
	virtio := ",disable-legacy=on,iommu_platform=on"
	hostData := snp.HostDataForNode(s.Name)
	args := []string{
		"-accel", "kvm", "-cpu", b.VCPUType,
		"-machine", "q35,smm=off,confidential-guest-support=sev0,memory-backend=ram0",
		"-object", "memory-backend-memfd,id=ram0,size=" + mem + "M,share=true,prealloc=false",
		"-object", fmt.Sprintf("sev-snp-guest,id=sev0,cbitpos=%d,reduced-phys-bits=%d,policy=%#x,kernel-hashes=on,host-data=%s", snpCBitPos, snpReducedPhysBits, SNPGuestPolicy, base64.StdEncoding.EncodeToString(hostData[:])),
		"-smp", strconv.Itoa(CPUs), "-m", mem,
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
		"-bios", b.Firmware,
		"-kernel", b.Kernel,
	}
	if b.Initrd != "" {
		args = append(args, "-initrd", b.Initrd)
	}
	if b.Cmdline != "" {
		args = append(args, "-append", b.Cmdline)
	}
	return append(args,
		"-drive", "if=none,id=disk,format=raw,readonly=on,file="+s.Image, "-device", "virtio-blk-pci,drive=disk"+virtio,
		"-drive", "if=none,id=state,format=raw,file="+filepath.Join(s.Dir, stateFile), "-device", "virtio-blk-pci,drive=state"+virtio,
		"-netdev", "tap,id=net0,ifname="+s.Tap+",script=no,downscript=no", "-device", "virtio-net-pci,netdev=net0,romfile=,mac="+s.MAC.String()+virtio,
		"-chardev", "file,id=console,path="+ConsolePath(s.Dir), "-serial", "chardev:console",
	)
}
