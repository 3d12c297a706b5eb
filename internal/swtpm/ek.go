package swtpm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// ManufactureOnce manufactures the TPM whose state lives in stateDir with EK certificates from ca, unless it
// was manufactured before: a node keeps its TPM, and so its identity, across boots.
func ManufactureOnce(ctx context.Context, stateDir string, ca *CA) error {
	if _, err := os.Stat(filepath.Join(stateDir, stateFile)); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	if err := Manufacture(ctx, stateDir, ca); err != nil {
		return fmt.Errorf("manufacturing the node's TPM: %w", err)
	}
	return nil
}

// EKCertificates reads the EK certificates a TPM was manufactured with (TCG EK credential profile NV
// indices), so that a provider knows which TPM belongs to which node.
func EKCertificates(rw io.ReadWriter) ([][]byte, error) {
	var certs [][]byte
	for _, idx := range []uint32{client.EKCertNVIndexRSA, client.EKCertNVIndexECC} {
		der, err := tpm2.NVReadEx(rw, tpmutil.Handle(idx), tpm2.HandleOwner, "", 0)
		if err != nil {
			continue // this TPM has no certificate of that kind
		}
		certs = append(certs, der)
	}
	if len(certs) == 0 {
		return nil, errors.New("the node's TPM holds no EK certificate")
	}
	return certs, nil
}

// ResetLockout clears the TPM's dictionary-attack lockout counter. A provider is the platform owner: a node
// or provider that died without TPM2_Shutdown is a power loss, not a dictionary attack, but swtpm counts it as
// one (after a few, every authorised command fails with TPM_RC_LOCKOUT).
func ResetLockout(rw io.ReadWriter) error {
	if err := tpm2.DictionaryAttackLockReset(rw, tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}); err != nil {
		return fmt.Errorf("resetting the TPM's lockout counter: %w", err)
	}
	return nil
}
