package cli

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
)

// InitSecretFile is the workspace file that holds the cluster's init secret (hex, mode 0600). 'apply'
// generates it when it creates the nodes and hands the provider only its SHA-256, which every node reads from
// its instance metadata; the first control-plane node accepts Init, and a waiting control-plane node
// Recover, only with the secret itself. It stays in the workspace for retries of 'apply' and for 'recover'.
const InitSecretFile = "constellation-init-secret"

// loadOrCreateInitSecret returns the workspace's init secret, generating it (random bytes from crypto/rand)
// when the workspace has none, so that a retried 'apply' keeps the secret whose hash the nodes know.
func loadOrCreateInitSecret(ws string) ([]byte, error) {
	secret, err := readInitSecret(ws)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return secret, err
	}
	secret = make([]byte, initpb.InitSecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("generating the init secret: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(ws, InitSecretFile), []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("keeping the init secret: %w", err)
	}
	return secret, nil
}

// readInitSecret reads the workspace's init secret. A file that others can read is refused, as the master
// secret's is. The error wraps fs.ErrNotExist when there is none.
func readInitSecret(ws string) ([]byte, error) {
	path := filepath.Join(ws, InitSecretFile)
	raw, err := atomicfile.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("reading the init secret: %w", err)
	}
	secret, err := hex.DecodeString(string(bytes.TrimSpace(raw)))
	if err != nil || len(secret) != initpb.InitSecretSize {
		// Never print the content: it may be the secret, slightly damaged.
		return nil, fmt.Errorf("init secret file %s does not hold %d bytes in hex; restore it from a backup (without it the nodes of this cluster cannot be initialised or recovered)", path, initpb.InitSecretSize)
	}
	return secret, nil
}

// requireInitSecret reads the workspace's init secret for a request to the nodes, with an error that says
// what to do when it is missing.
func requireInitSecret(ws string) ([]byte, error) {
	secret, err := readInitSecret(ws)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, badInput("no %s in %s: the nodes accept Init and Recover only with the init secret that 'constellation apply' generated when it created them; restore the file, or recreate the cluster with 'constellation apply'", InitSecretFile, ws)
	}
	if err != nil {
		return nil, badInput("%w", err)
	}
	return secret, nil
}

// initSecretHash is what the provider hands the nodes: the hex SHA-256 of the init secret.
func initSecretHash(secret []byte) string {
	sum := sha256.Sum256(secret)
	return hex.EncodeToString(sum[:])
}
