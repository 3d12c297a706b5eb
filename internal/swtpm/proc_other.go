//go:build !linux

package swtpm

import (
	"os/exec"
	"syscall"
)

func configureCmd(*exec.Cmd, syscall.Signal) {}
