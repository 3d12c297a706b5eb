package kms

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// Purpose names what a derived key is for; it is part of the HKDF info label.
type Purpose string

// Purposes of derived keys. The strings are part of the derivation and never change.
const (
	PurposeDiskKey   Purpose = "disk-key"
	PurposeVolumeKey Purpose = "volume-key"
	PurposeDataKey   Purpose = "data-key"
	PurposeClusterID Purpose = "cluster-id"
	PurposeCASeed    Purpose = "ca-seed"
	// PurposeJoinConfig keys authenticate the join service's configuration (see [Deriver.JoinConfigKey]).
	PurposeJoinConfig Purpose = "join-config"
	// PurposeMeasurementPolicy keys authenticate the measurement policy updates the CLI sends the key services
	// (see [Deriver.MeasurementPolicyKey]).
	PurposeMeasurementPolicy Purpose = "measurement-policy"
)

// labelPrefix versions the derivation scheme.
const labelPrefix = "constellation/v1/"

// Bounds of derived keys and their identifiers.
const (
	MinKeyLength = 16
	MaxKeyLength = 64
	MaxIDLength  = 128
)

// validID reports whether an identifier has only letters, digits and . _ : -, so that a label can be read
// unambiguously and never contains the separator "/". (A loop: a regular expression would cost more than the
// derivation itself.)
func validID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// Deriver derives keys from a master secret. It precomputes HKDF's extract step once; each key then costs one
// HKDF expand. It is safe for concurrent use.
type Deriver struct {
	prk []byte
}

// NewDeriver returns a deriver for ms.
func NewDeriver(ms *MasterSecret) (*Deriver, error) {
	if err := ms.Validate(); err != nil {
		return nil, err
	}
	prk, err := hkdf.Extract(sha256.New, ms.Key, ms.Salt)
	if err != nil {
		return nil, err
	}
	return &Deriver{prk: prk}, nil
}

// Label returns the HKDF info label of a key.
func Label(purpose Purpose, id string) (string, error) {
	switch purpose {
	case PurposeClusterID:
		if id != "" {
			return "", fmt.Errorf("purpose %s takes no identifier", purpose)
		}
		return labelPrefix + string(purpose), nil
	case PurposeDiskKey, PurposeVolumeKey, PurposeDataKey, PurposeCASeed, PurposeJoinConfig, PurposeMeasurementPolicy:
		if !validID(id) {
			return "", fmt.Errorf("key identifier %q is invalid: 1 to %d characters of A-Z a-z 0-9 . _ : -", truncate(id, 80), MaxIDLength)
		}
		return labelPrefix + string(purpose) + "/" + id, nil
	default:
		return "", fmt.Errorf("unknown key purpose %q", truncate(string(purpose), 40))
	}
}

// Derive returns the key of length bytes for purpose and id.
func (d *Deriver) Derive(purpose Purpose, id string, length int) ([]byte, error) {
	if length < MinKeyLength || length > MaxKeyLength {
		return nil, fmt.Errorf("key length %d out of range %d to %d bytes", length, MinKeyLength, MaxKeyLength)
	}
	label, err := Label(purpose, id)
	if err != nil {
		return nil, err
	}
	return hkdf.Expand(sha256.New, d.prk, label, length)
}

// DiskKeySize is the length of a state disk key: 64 bytes, as AES-256-XTS (LUKS2 aes-xts-plain64, fscrypt)
// takes two 256-bit keys.
const DiskKeySize = 64

// DiskKey returns the key of the state disk with the given UUID.
func (d *Deriver) DiskKey(diskUUID string) ([]byte, error) {
	return d.Derive(PurposeDiskKey, diskUUID, DiskKeySize)
}

// JoinConfigKeyID is the key ID ("<purpose>/<identifier>") of the join configuration's MAC key.
const JoinConfigKeyID = string(PurposeJoinConfig) + "/mac"

// JoinConfigKey returns the 32-byte key of the MAC that authenticates the join service's configuration: only
// who holds the master secret (the CLI, the first control-plane node, the key service) can write a
// configuration the join service accepts.
func (d *Deriver) JoinConfigKey() ([]byte, error) {
	return d.Derive(PurposeJoinConfig, "mac", 32)
}

// MeasurementPolicyKey returns the 32-byte key of the MAC that authenticates a measurement policy update (the
// measurement sets the key services and the join service accept, see package policyupdate): only who holds
// the master secret (the CLI) can author one. It is never handed to a remote caller.
func (d *Deriver) MeasurementPolicyKey() ([]byte, error) {
	return d.Derive(PurposeMeasurementPolicy, "mac", 32)
}

// ClusterIDSecret returns the 32-byte secret from which the cluster ID is computed.
func (d *Deriver) ClusterIDSecret() ([]byte, error) {
	return d.Derive(PurposeClusterID, "", 32)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// ClusterID returns the cluster's public identifier, derived from the cluster-ID secret. Nodes extend it into
// PCR 15 after init or join.
func (d *Deriver) ClusterID() ([]byte, error) {
	secret, err := d.ClusterIDSecret()
	if err != nil {
		return nil, err
	}
	id := sha256.Sum256(append([]byte("constellation cluster id v1\x00"), secret...))
	return id[:], nil
}
