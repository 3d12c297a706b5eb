package config

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

func validQEMU() *Config {
	return &Config{
		Version:  Version,
		Provider: Provider{QEMU: &QEMU{ControlPlanes: 1, Image: "node-image.raw", ImageDigest: "sha256:" + strings.Repeat("cd", 32)}},
		Attestation: Attestation{Variant: "qemu-vtpm", Measurements: measurements.M{
			0: {Expected: measurements.Digest{9}}, 4: {Expected: measurements.Digest{1}}, 11: {Expected: measurements.Digest{2}}, 12: {}, 13: {},
		}},
	}
}

func TestQEMURoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := validQEMU().Write(path, false); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Provider.QEMU == nil || got.Provider.Mini != nil || got.ImagePath(path) != filepath.Join(filepath.Dir(path), "node-image.raw") {
		t.Fatalf("round trip: %+v", got.Provider)
	}
}

// A QEMU configuration is refused with every problem named: the provider's fields, a variant its machines
// cannot present, and a policy that does not pin the UEFI scheme's image PCRs.
func TestQEMUProblems(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(*Config)
		want   []string
	}{
		"counts":  {func(c *Config) { c.Provider.QEMU.ControlPlanes, c.Provider.QEMU.Workers = 0, 9 }, []string{"provider.qemu.controlPlanes", "provider.qemu.workers"}},
		"image":   {func(c *Config) { c.Provider.QEMU.Image, c.Provider.QEMU.ImageDigest = "", "sha256:x" }, []string{"provider.qemu.image:", "provider.qemu.imageDigest"}},
		"machine": {func(c *Config) { c.Provider.QEMU.MemoryMiB, c.Provider.QEMU.Accelerator = 512, "hvf" }, []string{"provider.qemu.memoryMiB", "provider.qemu.accelerator"}},
		"two":     {func(c *Config) { c.Provider.Mini = valid().Provider.Mini }, []string{"both mini and qemu"}},
		"mini variant": {func(c *Config) {
			c.Attestation = valid().Attestation
		}, []string{"present only qemu-vtpm evidence", "not mini-vtpm"}},
		"UKI PCR missing": {func(c *Config) { delete(c.Attestation.Measurements, 11) }, []string{"attestation.measurements", "PCR 11 missing"}},
		"ESP PCR warn-only": {func(c *Config) {
			c.Attestation.Measurements[12] = measurements.Measurement{WarnOnly: true}
		}, []string{"attestation.measurements", "PCR 12 warn-only"}},
	} {
		t.Run(name, func(t *testing.T) {
			c := validQEMU()
			tc.change(c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
	// A mini configuration whose policy is of the UEFI scheme is refused too: mini nodes have a PCR 8.
	c := valid()
	c.Attestation.Measurements = validQEMU().Attestation.Measurements
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "PCR 8 missing") {
		t.Errorf("mini with a UEFI policy: %v", err)
	}
}
