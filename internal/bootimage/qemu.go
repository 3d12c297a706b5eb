package bootimage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// OVMF firmware of the Debian package ovmf: the code (read-only) and the template of its variable store.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// QEMUPrerequisites returns what is missing on this machine to boot a disk image with BootQEMU, naming the
// Debian packages that bring it, or nil.
func QEMUPrerequisites() error {
	var missing []string
	for tool, pkg := range map[string]string{"qemu-system-x86_64": "qemu-system-x86", "swtpm": "swtpm"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", tool, pkg))
		}
	}
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f+" (Debian package ovmf)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s; scripts/setup.sh installs them", strings.Join(missing, ", "))
	}
	return nil
}

// Boot is the outcome of one boot.
type Boot struct {
	Console string
	// Lines are the console's lines, each with the time since QEMU started.
	Lines []Line
}

// Line is one line of the console.
type Line struct {
	At   time.Duration
	Text string
}

// Find returns the first line with the prefix (after any leading console noise) and whether there is one.
func (b Boot) Find(prefix string) (Line, bool) {
	for _, l := range b.Lines {
		if i := strings.Index(l.Text, prefix); i >= 0 {
			return Line{At: l.At, Text: l.Text[i:]}, true
		}
	}
	return Line{}, false
}

// BootQEMU boots a raw disk image as a UEFI machine under QEMU with TCG (no KVM needed): q35, OVMF firmware
// from pflash with a fresh copy of its variable store, a fresh swtpm as the machine's TPM 2.0 (TIS), the image
// as a virtio disk, no network, the serial console on stdout. It returns when the machine powers off or
// ctx ends. workDir holds the variable store and the TPM's state. extra are further QEMU arguments.
func BootQEMU(ctx context.Context, image, workDir string, extra ...string) (Boot, error) {
	var b Boot
	if err := QEMUPrerequisites(); err != nil {
		return b, err
	}
	vars := filepath.Join(workDir, "OVMF_VARS.fd")
	raw, err := os.ReadFile(OVMFVars)
	if err != nil {
		return b, err
	}
	if err := os.WriteFile(vars, raw, 0o600); err != nil {
		return b, err
	}
	tpmDir := filepath.Join(workDir, "tpm")
	if err := os.RemoveAll(tpmDir); err != nil {
		return b, err
	}
	if err := os.MkdirAll(tpmDir, 0o700); err != nil {
		return b, err
	}
	sock := filepath.Join(tpmDir, "ctrl.sock")
	swtpm := exec.CommandContext(ctx, "swtpm", "socket", "--tpm2", "--tpmstate", "dir="+tpmDir,
		"--ctrl", "type=unixio,path="+sock, "--terminate")
	var swtpmOut strings.Builder
	swtpm.Stdout, swtpm.Stderr = &swtpmOut, &swtpmOut
	if err := swtpm.Start(); err != nil {
		return b, fmt.Errorf("starting swtpm: %w", err)
	}
	swtpmDone := make(chan error, 1)
	go func() { swtpmDone <- swtpm.Wait() }()
	defer func() {
		swtpm.Process.Kill()
		<-swtpmDone
	}()
	// swtpm creates its control socket before it accepts; wait for it (or for swtpm to fail).
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-swtpmDone:
			swtpmDone <- err
			return b, fmt.Errorf("swtpm exited: %v: %s", err, swtpmOut.String())
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	disk := "virtio-blk-pci,drive=disk,bootindex=0"
	if slices.Contains(extra, "-kernel") { // QEMU's direct kernel boot takes boot index 0
		disk = "virtio-blk-pci,drive=disk"
	}
	args := append([]string{"-accel", "tcg", "-machine", "q35", "-smp", "2", "-m", "1024",
		"-nographic", "-no-reboot", "-no-user-config", "-nic", "none",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
		"-chardev", "socket,id=chrtpm,path=" + sock, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
		"-drive", "if=none,id=disk,format=raw,file=" + image, "-device", disk}, extra...)
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	out, err := qemu.StdoutPipe()
	if err != nil {
		return b, err
	}
	qemu.Stderr = qemu.Stdout
	start := time.Now()
	if err := qemu.Start(); err != nil {
		return b, fmt.Errorf("starting qemu-system-x86_64: %w", err)
	}
	var console strings.Builder
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		console.WriteString(line + "\n")
		b.Lines = append(b.Lines, Line{At: time.Since(start), Text: line})
	}
	werr := qemu.Wait()
	b.Console = console.String()
	if ctx.Err() != nil {
		return b, fmt.Errorf("booting %s: %w", image, ctx.Err())
	}
	if werr != nil {
		return b, fmt.Errorf("qemu-system-x86_64: %w", werr)
	}
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		return b, err
	}
	return b, nil
}
