// Package cli implements the constellation command line: its commands, their flags, output and exit codes.
//
// Exit codes: 0 success; 1 the command failed (for example evidence that does not verify, or a KMS that
// cannot be reached); 2 the input is unusable (a missing file, a malformed flag value), with a message saying what is wrong.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/version"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitCheckFailed = 1
	ExitFailed      = 1
	ExitBadInput    = 2
)

// exitError carries an exit code with an error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// badInput marks err as unusable input (exit code 2).
func badInput(format string, args ...any) error {
	return &exitError{code: ExitBadInput, err: fmt.Errorf(format, args...)}
}

// failed marks err as a failed operation (exit code 1).
func failed(err error) error {
	return &exitError{code: ExitFailed, err: err}
}

// checkFailed marks err as a failed check (exit code 1).
func checkFailed(err error) error {
	return &exitError{code: ExitCheckFailed, err: err}
}

// ExitCode returns the process exit code for an error returned by a command.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	// Errors from cobra itself (unknown flags, wrong argument counts) are usage errors.
	return ExitBadInput
}

// NewRootCmd returns the constellation command tree writing to out and errOut.
func NewRootCmd(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "constellation",
		Short: "Manage always-encrypted Kubernetes clusters",
		Long: "constellation creates and manages Kubernetes clusters whose nodes run in confidential VMs and\n" +
			"prove by remote attestation what they run before they get any key.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddCommand(newVersionCmd(), newConfigCmd(), newApplyCmd(), newStatusCmd(), newRecoverCmd(), newTerminateCmd(), newMiniCmd(), newQEMUCmd(), newVerifyCmd(), newVerifyReportCmd(), newAttestationCmd(), newKMSCmd(), newImageCmd(), newUpgradeCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "constellation %s\ncommit: %s\ngo: %s\n", version.Version, version.Commit, version.GoVersion())
			return nil
		},
	}
}

// logger returns a logger writing warnings and errors to the command's error output.
func logger(cmd *cobra.Command) *slog.Logger {
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}
