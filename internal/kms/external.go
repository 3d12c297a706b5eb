package kms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/kms/kmip"
)

// KMIPConfig names an external KMS reached over KMIP with mutual TLS, and the key-encryption key (KEK) on it.
// File paths are relative to the configuration file.
type KMIPConfig struct {
	// Endpoint is the KMS address, host:port.
	Endpoint string `json:"endpoint"`
	// ServerCA is a PEM file with the CA certificate of the KMS server.
	ServerCA string `json:"serverCA"`
	// ClientCert and ClientKey are PEM files with this client's certificate and key.
	ClientCert string `json:"clientCert"`
	ClientKey  string `json:"clientKey"`
	// KeyID is the KMS's unique identifier of the KEK that wraps the master secret.
	KeyID string `json:"keyID"`
}

// KMSConfigFile is the file format of `--kms-config`.
type KMSConfigFile struct {
	KMIP *KMIPConfig `json:"kmip"`
}

// LoadKMIPConfig reads a KMS configuration file and resolves its paths.
func LoadKMIPConfig(path string) (*KMIPConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading KMS configuration: %w", err)
	}
	var f KMSConfigFile
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return nil, fmt.Errorf("parsing KMS configuration %s: %w", path, err)
	}
	if f.KMIP == nil {
		return nil, fmt.Errorf("KMS configuration %s has no kmip section", path)
	}
	if err := f.KMIP.Resolve(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("KMS configuration %s: %w", path, err)
	}
	return f.KMIP, nil
}

// Resolve checks that every field but KeyID is set and makes relative file paths relative to dir.
func (c *KMIPConfig) Resolve(dir string) error {
	var missing []string
	for name, p := range map[string]*string{"endpoint": &c.Endpoint, "serverCA": &c.ServerCA, "clientCert": &c.ClientCert, "clientKey": &c.ClientKey} {
		if strings.TrimSpace(*p) == "" {
			missing = append(missing, name)
			continue
		}
		if name != "endpoint" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("kmip.%s not set", strings.Join(missing, ", kmip."))
	}
	return nil
}

// ClientConfig reads the certificate files and returns the KMIP client configuration.
func (c *KMIPConfig) ClientConfig() (kmip.Config, error) {
	read := func(what, path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading KMS %s: %w", what, err)
		}
		return b, nil
	}
	ca, err := read("server CA", c.ServerCA)
	if err != nil {
		return kmip.Config{}, err
	}
	cert, err := read("client certificate", c.ClientCert)
	if err != nil {
		return kmip.Config{}, err
	}
	key, err := read("client key", c.ClientKey)
	if err != nil {
		return kmip.Config{}, err
	}
	cfg := kmip.Config{Endpoint: c.Endpoint, ServerCA: ca, ClientCert: cert, ClientKey: key}
	return cfg, cfg.Validate()
}

// KEK is what wraps and unwraps master secrets: a key on an external KMS.
type KEK interface {
	Wrap(ctx context.Context, keyID string, plaintext, aad []byte) (*kmip.Wrapped, error)
	Unwrap(ctx context.Context, w *kmip.Wrapped, aad []byte) ([]byte, error)
}

// wrapAAD binds a wrapped master key to its salt and to its purpose: swapping the salt in the file, or using
// the wrapped blob as anything else, fails authentication on the KMS.
func wrapAAD(salt []byte) []byte {
	return append([]byte("constellation master secret v1\x00"), salt...)
}

// WrapMasterSecret wraps ms with the KEK keyID and returns the file content that holds it only wrapped. It
// unwraps the result once to prove that it can be recovered before anyone relies on it.
func WrapMasterSecret(ctx context.Context, kek KEK, keyID string, ms *MasterSecret) (*SecretFile, error) {
	if err := ms.Validate(); err != nil {
		return nil, err
	}
	if keyID == "" {
		return nil, errors.New("no key-encryption key ID configured (kmip.keyID); create one with 'constellation kms create-kek'")
	}
	w, err := kek.Wrap(ctx, keyID, ms.Key, wrapAAD(ms.Salt))
	if err != nil {
		return nil, fmt.Errorf("wrapping master secret with KEK %s: %w", keyID, err)
	}
	f := &SecretFile{Wrapped: w, Salt: append([]byte(nil), ms.Salt...)}
	back, err := UnwrapMasterSecret(ctx, kek, f)
	if err != nil {
		return nil, fmt.Errorf("checking the wrapped master secret: %w", err)
	}
	if string(back.Key) != string(ms.Key) {
		return nil, errors.New("checking the wrapped master secret: the KMS returned another key")
	}
	return f, nil
}

// UnwrapMasterSecret returns the master secret of a file, unwrapping it with the KMS if needed.
func UnwrapMasterSecret(ctx context.Context, kek KEK, f *SecretFile) (*MasterSecret, error) {
	if !f.IsWrapped() {
		return f.Plain, nil
	}
	if kek == nil {
		return nil, errors.New("the master secret is wrapped by an external KMS, but no KMS is configured")
	}
	key, err := kek.Unwrap(ctx, f.Wrapped, wrapAAD(f.Salt))
	if err != nil {
		return nil, fmt.Errorf("unwrapping master secret with KEK %s: %w", f.Wrapped.KeyID, err)
	}
	ms := &MasterSecret{Key: key, Salt: append([]byte(nil), f.Salt...)}
	if err := ms.Validate(); err != nil {
		return nil, fmt.Errorf("unwrapped master secret: %w", err)
	}
	return ms, nil
}

// RewrapMasterSecret moves a wrapped master secret to another KEK without changing the secret.
func RewrapMasterSecret(ctx context.Context, kek KEK, f *SecretFile, newKeyID string) (*SecretFile, error) {
	if !f.IsWrapped() {
		return nil, errors.New("the master secret is not wrapped; wrap it first with 'constellation kms init'")
	}
	if newKeyID == f.Wrapped.KeyID {
		return nil, fmt.Errorf("the master secret is already wrapped with KEK %s", newKeyID)
	}
	ms, err := UnwrapMasterSecret(ctx, kek, f)
	if err != nil {
		return nil, err
	}
	return WrapMasterSecret(ctx, kek, newKeyID, ms)
}
