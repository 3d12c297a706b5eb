package swtpm

import (
	"os/exec"
	"syscall"
)

// configureCmd puts cmd into its own process group, so that cancelling a command created with
// exec.CommandContext also stops the swtpm that swtpm_setup spawns, and has the kernel send
// deathSig to cmd if this process dies.
func configureCmd(cmd *exec.Cmd, deathSig syscall.Signal) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if cmd.Cancel != nil {
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	}
}
