// Package kms holds the cluster's master secret and derives every other key from it.
//
// The master secret is 32 random bytes plus a 32-byte salt. Keys derive from it with HKDF-SHA256: the master
// key is the input keying material, the salt is HKDF's salt, and the info is a label that names the purpose
// and, where a purpose has many keys, the key's identifier:
//
//	constellation/v1/disk-key/<disk UUID>     state disk keys
//	constellation/v1/volume-key/<volume ID>   persistent volume keys
//	constellation/v1/data-key/<ID>            other data keys (the key service's generic keys)
//	constellation/v1/cluster-id               the cluster-ID secret
//	constellation/v1/ca-seed/<CA name>        seeds of cluster certificate authorities
//
// These labels are a compatibility promise: a key derived today must be derivable by every later version, so
// they never change; known-answer tests pin them.
//
// On disk the master secret lives in constellation-mastersecret.json (mode 0600), either in plain form or,
// with an external KMS, wrapped by a key-encryption key that never leaves the KMS.
package kms

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// Sizes of the master secret's parts.
const (
	MasterKeySize  = 32
	MasterSaltSize = 32
)

// MasterSecretFileName is the workspace file that holds the master secret.
const MasterSecretFileName = "constellation-mastersecret.json"

// MasterSecret is the root of every key of a cluster.
type MasterSecret struct {
	Key  []byte
	Salt []byte
}

// GenerateMasterSecret returns a new random master secret.
func GenerateMasterSecret() (*MasterSecret, error) {
	ms := &MasterSecret{Key: make([]byte, MasterKeySize), Salt: make([]byte, MasterSaltSize)}
	if _, err := rand.Read(ms.Key); err != nil {
		return nil, fmt.Errorf("generating master secret: %w", err)
	}
	if _, err := rand.Read(ms.Salt); err != nil {
		return nil, fmt.Errorf("generating master secret salt: %w", err)
	}
	return ms, nil
}

// Validate checks the sizes.
func (ms *MasterSecret) Validate() error {
	if len(ms.Key) != MasterKeySize {
		return fmt.Errorf("master secret key has %d bytes, want %d", len(ms.Key), MasterKeySize)
	}
	if len(ms.Salt) != MasterSaltSize {
		return fmt.Errorf("master secret salt has %d bytes, want %d", len(ms.Salt), MasterSaltSize)
	}
	return nil
}

// String never prints the secret.
func (ms *MasterSecret) String() string { return "MasterSecret(redacted)" }

// GoString never prints the secret.
func (ms *MasterSecret) GoString() string { return ms.String() }

// secretFile is the on-disk format. Exactly one of Key and Wrapped is set.
type secretFile struct {
	Version int           `json:"version"`
	Key     []byte        `json:"key,omitempty"`
	Wrapped *kmip.Wrapped `json:"wrapped,omitempty"`
	Salt    []byte        `json:"salt"`
}

const secretFileVersion = 1

// SecretFile is a parsed master secret file: the secret itself, or its wrapped form.
type SecretFile struct {
	// Plain is set for a file that holds the secret in plain form.
	Plain *MasterSecret
	// Wrapped and Salt are set for a file whose key is wrapped by a KMS key-encryption key.
	Wrapped *kmip.Wrapped
	Salt    []byte
}

// IsWrapped reports whether the file holds the key only wrapped.
func (f *SecretFile) IsWrapped() bool { return f.Wrapped != nil }

// Marshal encodes the file.
func (f *SecretFile) Marshal() ([]byte, error) {
	out := secretFile{Version: secretFileVersion}
	switch {
	case f.Plain != nil && f.Wrapped == nil:
		if err := f.Plain.Validate(); err != nil {
			return nil, err
		}
		out.Key, out.Salt = f.Plain.Key, f.Plain.Salt
	case f.Plain == nil && f.Wrapped != nil:
		if len(f.Salt) != MasterSaltSize {
			return nil, fmt.Errorf("master secret salt has %d bytes, want %d", len(f.Salt), MasterSaltSize)
		}
		out.Wrapped, out.Salt = f.Wrapped, f.Salt
	default:
		return nil, errors.New("a master secret file holds either the plain or the wrapped secret")
	}
	return json.MarshalIndent(out, "", "  ")
}

// maxSecretFile bounds a master secret file; a wrapped one with its KMS key ID takes a few hundred bytes.
const maxSecretFile = 64 << 10

// ParseSecretFile parses a master secret file strictly (package strictjson: one object, known keys spelled
// exactly and once).
func ParseSecretFile(raw []byte) (*SecretFile, error) {
	var in secretFile
	if err := strictjson.Decode(raw, &in, maxSecretFile); err != nil {
		return nil, fmt.Errorf("parsing master secret file: %w", err)
	}
	if in.Version != secretFileVersion {
		return nil, fmt.Errorf("master secret file version %d, this version reads %d", in.Version, secretFileVersion)
	}
	if len(in.Salt) != MasterSaltSize {
		return nil, fmt.Errorf("master secret salt has %d bytes, want %d", len(in.Salt), MasterSaltSize)
	}
	switch {
	case in.Key != nil && in.Wrapped == nil:
		ms := &MasterSecret{Key: in.Key, Salt: in.Salt}
		if err := ms.Validate(); err != nil {
			return nil, err
		}
		return &SecretFile{Plain: ms}, nil
	case in.Key == nil && in.Wrapped != nil:
		// Re-validate the wrapped part with its own strict parser.
		raw, err := json.Marshal(in.Wrapped)
		if err != nil {
			return nil, err
		}
		w, err := kmip.ParseWrapped(raw)
		if err != nil {
			return nil, fmt.Errorf("master secret file: %w", err)
		}
		return &SecretFile{Wrapped: w, Salt: in.Salt}, nil
	default:
		return nil, errors.New("master secret file must hold either \"key\" or \"wrapped\", not both or neither")
	}
}

// ReadSecretFile reads and parses a master secret file. A file readable by group or others is refused.
func ReadSecretFile(path string) (*SecretFile, error) {
	raw, err := atomicfile.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("reading master secret: %w", err)
	}
	return ParseSecretFile(raw)
}

// WriteSecretFile writes f to path atomically with mode 0600. With overwrite false an existing file is never
// replaced: losing a master secret loses the cluster's data.
func WriteSecretFile(path string, f *SecretFile, overwrite bool) error {
	raw, err := f.Marshal()
	if err != nil {
		return err
	}
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s already exists; refusing to overwrite a master secret", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return atomicfile.Write(path, raw, 0o600)
}
