package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/swtpm"
)

// DefaultMemoryMiB is a machine's memory unless the configuration sets another. The firmware measures the
// memory size (SMBIOS tables, PCR 1): the pinned firmware PCRs hold for this size.
const DefaultMemoryMiB = 2048

// CPUs is a machine's number of virtual CPUs (measured with the SMBIOS tables, PCR 1, like the memory).
const CPUs = 2

// stateDiskSize is the size of a node's state disk file (sparse). It holds the node's container images
// (about 450 MiB unpacked and in containerd's content store), etcd and the logs. The node formats it as
// LUKS2 with dm-integrity at its first boot, which writes every sector once: under TCG at some 5-10 MB/s, so
// the disk is no larger than it needs to be.
const stateDiskSize = 1536 << 20

// machineSpec is one machine to boot.
type machineSpec struct {
	// Dir holds the machine's files: its TPM state, firmware variable store, disk overlay, state disk and
	// serial console.
	Dir string
	// Image is the bootable disk image, which the machine gets read-only (its root is dm-verity, its ESP
	// only read by the firmware), so that every machine can boot the same file.
	Image     string
	MAC       net.HardwareAddr
	Tap       string
	MemoryMiB int
	// Accel is the accelerator: AccelAuto, AccelKVM or AccelTCG.
	Accel string
	// SNP, if set, launches the machine as an SEV-SNP guest (KVM, no TPM, the UKI's parts booted directly).
	SNP *snpBoot
	// Name is the node's name, which an SEV-SNP guest's HOST_DATA binds (snp.HostDataForNode).
	Name string
}

// machine is a running virtual machine and its TPM (none for an SEV-SNP machine).
type machine struct {
	tpm     *swtpm.MachineTPM
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	// Accel is how QEMU runs the machine: "kvm" or "tcg".
	Accel string
}

// Files of a machine in its directory.
const (
	consoleFile = "console.log"
	varsFile    = "OVMF_VARS.fd"
	stateFile   = "state-disk.img"
	tpmDir      = "tpm"
)

// ConsolePath is the serial console of the machine in dir.
func ConsolePath(dir string) string { return filepath.Join(dir, consoleFile) }

// Accelerators of a machine.
const (
	// AccelAuto is KVM where /dev/kvm can be opened, TCG otherwise.
	AccelAuto = "auto"
	// AccelKVM runs the machine under KVM with the host's CPU.
	AccelKVM = "kvm"
	// AccelTCG emulates the machine (no hardware virtualisation). The pinned firmware PCRs were recorded
	// under TCG: KVM presents the host's CPU to the firmware, which measures it (SMBIOS, PCR 1).
	AccelTCG = "tcg"
)

// accel returns the accelerator for mode and QEMU's arguments for it.
func accel(mode string) (string, []string, error) {
	switch mode {
	case AccelAuto, "":
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			return accel(AccelKVM)
		}
		return accel(AccelTCG)
	case AccelKVM:
		return AccelKVM, []string{"-accel", "kvm", "-cpu", "host"}, nil
	case AccelTCG:
		return AccelTCG, []string{"-accel", "tcg"}, nil
	}
	return "", nil, fmt.Errorf("accelerator %q: want %s, %s or %s", mode, AccelAuto, AccelKVM, AccelTCG)
}

// machineArgs are QEMU's arguments for a machine: the machine definition is fixed, because the firmware
// measures it (the pinned firmware PCRs hold only for it). The network card has no option ROM and the
// firmware offers no network boot, so that neither the ROM nor a boot option naming the card's MAC address
// is measured.
func machineArgs(s machineSpec, ctrl string, accelArgs []string) []string {
	args := append([]string{}, accelArgs...)
	return append(args,
		"-machine", "q35", "-smp", strconv.Itoa(CPUs), "-m", strconv.Itoa(s.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+bootimage.OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file="+filepath.Join(s.Dir, varsFile),
		"-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
		"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
		"-chardev", "socket,id=chrtpm,path="+ctrl, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
		"-drive", "if=none,id=disk,format=raw,readonly=on,file="+s.Image, "-device", "virtio-blk-pci,drive=disk,bootindex=0",
		"-drive", "if=none,id=state,format=raw,file="+filepath.Join(s.Dir, stateFile), "-device", "virtio-blk-pci,drive=state",
		"-netdev", "tap,id=net0,ifname="+s.Tap+",script=no,downscript=no", "-device", "virtio-net-pci,netdev=net0,romfile=,mac="+s.MAC.String(),
		"-chardev", "file,id=console,path="+ConsolePath(s.Dir), "-serial", "chardev:console",
	)
}

// startMachine powers on a machine: its TPM (manufactured with an EK certificate from ekCA the first time),
// a fresh firmware variable store, the image read-only, and QEMU in the node
// network's namespace. The machine runs until stop.
//
// register is called with the TPM's EK certificates before the machine powers on, so that the metadata
// service knows the node before it can ask.
func startMachine(ctx context.Context, s machineSpec, ekCA *swtpm.CA, register func(ekCerts [][]byte)) (*machine, error) {
	if s.SNP != nil {
		return startSNPMachine(s, register)
	}
	if err := bootimage.QEMUPrerequisites(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	state := filepath.Join(s.Dir, tpmDir)
	if err := swtpm.ManufactureOnce(ctx, state, ekCA); err != nil {
		return nil, err
	}
	ekCerts, err := prepareTPM(ctx, state)
	if err != nil {
		return nil, err
	}
	register(ekCerts)
	vars, err := os.ReadFile(bootimage.OVMFVars)
	if err != nil {
		return nil, fmt.Errorf("the firmware's variable store: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, varsFile), vars, 0o600); err != nil {
		return nil, err
	}
	if err := createStateDisk(s.Dir); err != nil {
		return nil, err
	}
	os.Remove(ConsolePath(s.Dir))
	name, accelArgs, err := accel(s.Accel)
	if err != nil {
		return nil, err
	}
	tpm, err := swtpm.StartForMachine(ctx, state)
	if err != nil {
		return nil, err
	}
	m := &machine{tpm: tpm, exited: make(chan struct{}), Accel: name}
	if err := m.start(s.Dir, machineArgs(s, tpm.CtrlPath(), accelArgs)); err != nil {
		tpm.Kill()
		return nil, err
	}
	return m, nil
}

// startSNPMachine powers on an SEV-SNP machine: no TPM (its evidence is the SEV-SNP report), the firmware,
// kernel, initrd and command line of s.SNP, KVM.
func startSNPMachine(s machineSpec, register func(ekCerts [][]byte)) (*machine, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := createStateDisk(s.Dir); err != nil {
		return nil, err
	}
	register(nil)
	os.Remove(ConsolePath(s.Dir))
	m := &machine{exited: make(chan struct{}), Accel: AccelKVM}
	if err := m.start(s.Dir, snpMachineArgs(s, *s.SNP)); err != nil {
		return nil, err
	}
	return m, nil
}

// createStateDisk creates the machine's state disk file (sparse) unless it exists.
func createStateDisk(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, stateFile)); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, stateFile), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(stateDiskSize)
	f.Close()
	return err
}

// start runs QEMU with args in the node network's namespace, its output in the machine's qemu.log.
func (m *machine) start(dir string, args []string) error {
	m.cmd = exec.Command("nsenter", append([]string{"--net=" + netnsPath, "--", "qemu-system-x86_64"}, args...)...)
	out, err := os.OpenFile(filepath.Join(dir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	m.cmd.Stdout, m.cmd.Stderr = out, out
	// The machine powers off with its provider.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("starting qemu-system-x86_64: %w", err)
	}
	out.Close()
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.exited)
	}()
	return nil
}

// prepareTPM powers the TPM on once before the machine does: it clears the lockout counter an earlier
// unclean stop left (the provider is the platform owner) and reads the EK certificates, then stops the TPM
// cleanly.
func prepareTPM(ctx context.Context, state string) ([][]byte, error) {
	tpm, err := swtpm.Start(ctx, state)
	if err != nil {
		return nil, err
	}
	conn, err := tpm.Dial()
	if err != nil {
		tpm.Close()
		return nil, err
	}
	err = swtpm.ResetLockout(conn)
	var certs [][]byte
	if err == nil {
		certs, err = swtpm.EKCertificates(conn)
	}
	conn.Close()
	if cerr := tpm.Close(); err == nil {
		err = cerr
	}
	return certs, err
}

// PID is QEMU's process ID.
func (m *machine) PID() int { return m.cmd.Process.Pid }

// Exited is closed when the machine has powered off.
func (m *machine) Exited() <-chan struct{} { return m.exited }

// stop powers the machine off (it is the host's power switch: the guest gets no chance to shut down) and
// waits for it and its TPM.
func (m *machine) stop() {
	select {
	case <-m.exited:
	default:
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.exited:
		case <-time.After(20 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.exited
		}
	}
	if m.tpm != nil {
		m.tpm.Kill()
	}
}
