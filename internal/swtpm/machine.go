package swtpm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// MachineTPM is a running swtpm that serves a virtual machine: QEMU's TPM emulator backend connects to its
// control socket and passes it the data channel. The machine's firmware starts the TPM (TPM2_Startup) and
// measures the boot into it; its guest sends TPM2_Shutdown when it powers off. swtpm exits by itself once
// QEMU closes the control connection.
type MachineTPM struct {
	ctrl    string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	output  *syncBuffer
}

// machineCtrlFile is the control socket of a machine's swtpm in its state directory.
const machineCtrlFile = "machine.ctrl"

// StartForMachine runs swtpm on the manufactured TPM state in stateDir for a virtual machine, with its
// control socket at [MachineTPM.CtrlPath] (QEMU: -chardev socket,path=... -tpmdev emulator). ctx bounds only
// the start-up.
func StartForMachine(ctx context.Context, stateDir string) (*MachineTPM, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	if err := checkOptionPath(stateDir); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, stateFile)); err != nil {
		return nil, fmt.Errorf("starting swtpm: no TPM state in %s: %w (manufacture it first)", stateDir, err)
	}
	t := &MachineTPM{ctrl: filepath.Join(stateDir, machineCtrlFile), exited: make(chan struct{}), output: &syncBuffer{}}
	if len(t.ctrl) > maxSunPath {
		return nil, fmt.Errorf("starting swtpm: socket path %s is longer than %d bytes", t.ctrl, maxSunPath)
	}
	// A socket file left here is stale: the swtpm that made it exited with its machine (--terminate), and
	// a machine dies with its provider. (A probe connection would end a live one, so none is made.)
	if err := os.Remove(t.ctrl); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	t.cmd = exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+stateDir,
		"--ctrl", "type=unixio,mode=0600,path="+t.ctrl, "--terminate")
	t.cmd.Stdout, t.cmd.Stderr = t.output, t.output
	configureCmd(t.cmd, syscall.SIGTERM)
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	go func() {
		t.waitErr = t.cmd.Wait()
		close(t.exited)
	}()
	for delay := 2 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		if _, err := os.Stat(t.ctrl); err == nil {
			return t, nil
		}
		select {
		case <-t.exited:
			return nil, fmt.Errorf("starting swtpm: it exited early (%v): %s", t.waitErr, t.output.String())
		case <-ctx.Done():
			t.Kill()
			return nil, fmt.Errorf("starting swtpm: %w", ctx.Err())
		case <-time.After(delay):
		}
	}
}

// CtrlPath is the control socket QEMU connects to.
func (t *MachineTPM) CtrlPath() string { return t.ctrl }

// Exited is closed when swtpm has exited.
func (t *MachineTPM) Exited() <-chan struct{} { return t.exited }

// Kill stops swtpm if it still runs (after its machine stopped it exits by itself) and waits for it.
func (t *MachineTPM) Kill() {
	select {
	case <-t.exited:
	default:
		_ = t.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-t.exited:
		case <-time.After(ioTimeout):
			_ = t.cmd.Process.Kill()
			<-t.exited
		}
	}
	_ = os.Remove(t.ctrl)
}
