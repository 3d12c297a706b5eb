// Package mini is the local provider: it plays the cloud and its firmware for node sandboxes on this machine.
// Each node has a software TPM the provider owns, manufactured with an endorsement-key certificate from the
// provider's CA; before a node's first process starts, the provider measures the node image and the boot
// command line into that TPM (internal/measuredboot) and keeps the event log, which it serves to the node
// through the metadata service (internal/provider/mini/metadata). It also keeps the container image archives
// its user loads (`constellation mini load`), imports them into the running nodes and shows them read-only to
// every node it boots; only this provider creates that directory, so only mini nodes import such images.
package mini

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/swtpm"
)

// VTPM is a node's TPM as the provider owns it.
type VTPM struct {
	state   string
	tpm     *swtpm.TPM
	ekCerts [][]byte
}

// NewVTPM returns the TPM whose state lives in dir, manufacturing it with an EK certificate from ekCA the
// first time.
func NewVTPM(ctx context.Context, dir string, ekCA *swtpm.CA) (*VTPM, error) {
	state := filepath.Join(dir, "tpm")
	if err := swtpm.ManufactureOnce(ctx, state, ekCA); err != nil {
		return nil, err
	}
	return &VTPM{state: state}, nil
}

// Boot power-cycles the TPM (which resets its PCRs), measures the boot as the firmware does, and returns the
// TCG event log. The node's first process may connect to SocketPath afterwards.
func (v *VTPM) Boot(ctx context.Context, b measuredboot.Boot) ([]byte, error) {
	if v.tpm != nil {
		if err := v.tpm.Close(); err != nil {
			return nil, fmt.Errorf("powering off the node's TPM: %w", err)
		}
		v.tpm = nil
	}
	tpm, err := swtpm.Start(ctx, v.state)
	if err != nil {
		return nil, fmt.Errorf("powering on the node's TPM: %w", err)
	}
	conn, err := tpm.Dial()
	if err != nil {
		tpm.Close()
		return nil, err
	}
	// The provider is the platform owner: a node or provider that died without TPM2_Shutdown is a power loss,
	// not a dictionary attack, so clear the lockout counter it left (swtpm counts unclean stops).
	if err := swtpm.ResetLockout(conn); err != nil {
		conn.Close()
		tpm.Close()
		return nil, err
	}
	log, err := measuredboot.Measure(conn, b)
	if err != nil {
		conn.Close()
		tpm.Close()
		return nil, fmt.Errorf("measured boot: %w", err)
	}
	ekCerts, err := swtpm.EKCertificates(conn)
	conn.Close()
	if err != nil {
		tpm.Close()
		return nil, err
	}
	v.tpm, v.ekCerts = tpm, ekCerts
	return log, nil
}

// EKCertificates are the DER EK certificates of the node's TPM, known after Boot.
func (v *VTPM) EKCertificates() [][]byte { return v.ekCerts }

// SocketPath is where the node reaches its TPM.
func (v *VTPM) SocketPath() string {
	if v.tpm == nil {
		return ""
	}
	return v.tpm.SocketPath()
}

// Dial connects to the running TPM.
func (v *VTPM) Dial() (net.Conn, error) {
	if v.tpm == nil {
		return nil, errors.New("the node's TPM is not running; boot it first")
	}
	return v.tpm.Dial()
}

// Shutdown stops the TPM cleanly.
func (v *VTPM) Shutdown() error {
	if v.tpm == nil {
		return nil
	}
	err := v.tpm.Close()
	v.tpm = nil
	return err
}
