// Package config is the cluster configuration file, constellation-conf.yaml: the provider, the attestation
// variant with the expected measurements, and the optional external KMS. Parsing is strict (unknown fields are
// errors) and Validate reports every problem with the field it concerns.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/kms"
)

// FileName is the configuration file of a workspace.
const FileName = "constellation-conf.yaml"

// Version is the configuration format version.
const Version = "v1"

// Config is the content of constellation-conf.yaml.
type Config struct {
	Version     string      `json:"version"`
	Provider    Provider    `json:"provider"`
	Attestation Attestation `json:"attestation"`
	KMS         *KMS        `json:"kms,omitempty"`
}

// Provider selects and configures where nodes run. Exactly one provider is set.
type Provider struct {
	Mini *Mini `json:"mini,omitempty"`
}

// Mini configures the local provider.
type Mini struct {
	// ControlPlanes and Workers are the node counts.
	ControlPlanes int `json:"controlPlanes"`
	Workers       int `json:"workers"`
	// Image is the node image file (squashfs); relative paths are relative to the configuration file.
	Image string `json:"image"`
	// ImageDigest is the expected SHA-256 of the image ("sha256:<hex>"); a node never boots another image.
	ImageDigest string `json:"imageDigest"`
}

// Attestation is what a node must prove.
type Attestation struct {
	Variant      string         `json:"variant"`
	Measurements measurements.M `json:"measurements"`
}

// KMS configures an external key management service for the master secret.
type KMS struct {
	KMIP *kms.KMIPConfig `json:"kmip,omitempty"`
}

// Parse reads a configuration strictly and validates it.
func Parse(raw []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return nil, fmt.Errorf("parsing configuration: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Load reads and validates a configuration file.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	c, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.KMS != nil {
		// File paths in the KMS section are relative to the configuration file.
		if err := c.KMS.KMIP.Resolve(filepath.Dir(path)); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return c, nil
}

// ValidationError lists every invalid field.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var p []string
	if c.Version != Version {
		p = append(p, fmt.Sprintf("version: %q is not supported, want %q", c.Version, Version))
	}
	switch {
	case c.Provider.Mini == nil:
		p = append(p, "provider: no provider configured (set provider.mini)")
	default:
		m := c.Provider.Mini
		if m.ControlPlanes < 1 || m.ControlPlanes > 5 {
			p = append(p, fmt.Sprintf("provider.mini.controlPlanes: %d, want 1 to 5", m.ControlPlanes))
		}
		if m.Workers < 0 || m.Workers > 10 {
			p = append(p, fmt.Sprintf("provider.mini.workers: %d, want 0 to 10", m.Workers))
		}
		if m.Image == "" {
			p = append(p, "provider.mini.image: no node image; build one with 'make node-image'")
		}
		if !validDigest(m.ImageDigest) {
			p = append(p, fmt.Sprintf("provider.mini.imageDigest: %q is not sha256:<64 hex digits>", m.ImageDigest))
		}
	}
	if _, err := attestation.VariantByName(c.Attestation.Variant); err != nil {
		p = append(p, "attestation.variant: "+err.Error())
	}
	if err := c.Attestation.Measurements.Validate(); err != nil {
		p = append(p, "attestation.measurements: "+err.Error())
	}
	if c.KMS != nil {
		if c.KMS.KMIP == nil {
			p = append(p, "kms: set kms.kmip or remove the kms section")
		} else {
			check := *c.KMS.KMIP // Resolve rewrites the paths; here it only checks them
			if err := check.Resolve(""); err != nil {
				p = append(p, "kms: "+err.Error())
			}
		}
	}
	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

func validDigest(s string) bool {
	hexPart, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hexPart) != 64 {
		return false
	}
	for _, r := range hexPart {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// Marshal encodes the configuration as YAML.
func (c *Config) Marshal() ([]byte, error) {
	return yaml.Marshal(c)
}

// Write writes the configuration to path atomically; an existing file is replaced only with overwrite.
func (c *Config) Write(path string, overwrite bool) error {
	if err := c.Validate(); err != nil {
		return err
	}
	raw, err := c.Marshal()
	if err != nil {
		return err
	}
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s already exists; remove it or pass --force", path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	header := []byte("# Constellation cluster configuration. The measurements are what every node must present.\n")
	return atomicfile.Write(path, append(header, raw...), 0o644)
}

// ImagePath resolves the node image path relative to the configuration file's directory.
func (c *Config) ImagePath(configPath string) string {
	if c.Provider.Mini == nil {
		return ""
	}
	if filepath.IsAbs(c.Provider.Mini.Image) {
		return c.Provider.Mini.Image
	}
	return filepath.Join(filepath.Dir(configPath), c.Provider.Mini.Image)
}
