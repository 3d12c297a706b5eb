package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func valid() *Config {
	return &Config{
		Version:  Version,
		Provider: Provider{Mini: &Mini{ControlPlanes: 1, Workers: 2, Image: "node-image.squashfs", ImageDigest: "sha256:" + strings.Repeat("ab", 32)}},
		Attestation: Attestation{Variant: "mini-vtpm", Measurements: measurements.M{
			4: {Expected: measurements.Digest{1}}, 8: {Expected: measurements.Digest{2}}, 9: {Expected: measurements.Digest{3}, WarnOnly: true},
		}},
	}
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	c := valid()
	if err := c.Write(path, false); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.Provider.Mini.Workers != 2 || got.Attestation.Measurements[4] != c.Attestation.Measurements[4] || got.Attestation.Measurements[8] != c.Attestation.Measurements[8] || !got.Attestation.Measurements[9].WarnOnly {
		t.Fatalf("round trip changed the configuration: %+v", got)
	}
	if err := c.Write(path, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("overwrite without force: %v", err)
	}
	if got.ImagePath(path) != filepath.Join(filepath.Dir(path), "node-image.squashfs") {
		t.Fatalf("ImagePath = %s", got.ImagePath(path))
	}
}

// The KMS section's file paths are relative to the configuration file; a section lacking a field is refused.
func TestKMSPaths(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	c := valid()
	c.KMS = &KMS{KMIP: &kms.KMIPConfig{Endpoint: "10.217.0.1:5696", ServerCA: "kms/ca.pem", ClientCert: "/etc/client.pem", ClientKey: "kms/key.pem", KeyID: "1"}}
	if err := c.Write(path, false); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	k := got.KMS.KMIP
	if k.ServerCA != filepath.Join(filepath.Dir(path), "kms/ca.pem") || k.ClientCert != "/etc/client.pem" || k.ClientKey != filepath.Join(filepath.Dir(path), "kms/key.pem") {
		t.Fatalf("paths not resolved against the configuration's directory: %+v", k)
	}
	c.KMS.KMIP.ClientKey, c.KMS.KMIP.Endpoint = "", " "
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kmip.clientKey, kmip.endpoint not set") {
		t.Fatalf("incomplete kms section: %v", err)
	}
	if c.KMS.KMIP.ServerCA != "kms/ca.pem" {
		t.Fatal("Validate rewrote a path")
	}
}

func TestValidateListsEveryProblem(t *testing.T) {
	c := valid()
	c.Version = "v0"
	c.Provider.Mini.ControlPlanes = 0
	c.Provider.Mini.ImageDigest = "md5:1"
	c.Attestation.Variant = "tpm"
	c.Attestation.Measurements = nil
	err := c.Validate()
	for _, want := range []string{"version:", "provider.mini.controlPlanes", "provider.mini.imageDigest", "attestation.variant", "attestation.measurements"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error lacks %q: %v", want, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	base := "version: v1\nprovider:\n  mini: {controlPlanes: 1, workers: 1, image: x, imageDigest: \"sha256:" + strings.Repeat("0", 64) + "\"}\nattestation:\n  variant: mini-vtpm\n  measurements:\n"
	good := base + "    \"4\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n    \"8\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n"
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatalf("valid configuration rejected: %v", err)
	}
	for name, in := range map[string]string{
		"unknown field":    good + "extra: 1\n",
		"PCR leading zero": base + "    \"04\": {expected: \"" + strings.Repeat("00", 32) + "\"}\n",
		"short value":      base + "    \"4\": {expected: \"00\"}\n",
		"no measurements":  base,
		"not yaml":         "\x00\x01",
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	raw, _ := valid().Marshal()
	f.Add(raw)
	f.Add([]byte(hardwareConfig("qemu-sev-snp", snpSection)))
	f.Add([]byte(hardwareConfig("qemu-tdx", tdxSection)))
	f.Add([]byte(egressConfig))
	f.Add([]byte(strings.Replace(egressConfig, "password: "+testPassword, "password: \"p'\\n[plugins.x]\"", 1)))
	f.Add([]byte(strings.Replace(egressConfig, "- 10.0.0.53", "- \"10.0.0.53\\n}\\nforward . 6.6.6.6\"", 1)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Parse(raw)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if cs := c.MirrorCredentials(); len(cs) > 0 {
			// Marshal redacts credentials: what it writes shows none of them.
			for _, cred := range cs {
				for _, secret := range []string{cred.Password, cred.Token} {
					if len(secret) >= 4 && strings.Contains(string(out), secret) {
						t.Fatalf("Marshal shows a credential")
					}
				}
			}
			return
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-parse of a valid configuration: %v", err)
		}
	})
}

// A configuration whose measurements would accept any node image, or the genuine image booted with any boot
// parameters, is invalid: it is neither written nor loaded, so the CLI never sends it to a node nor verifies
// with it.
func TestRefusesAcceptAnyImage(t *testing.T) {
	for name, m := range tpmtest.AcceptAnyImage(valid().Attestation.Measurements) {
		t.Run(name, func(t *testing.T) {
			c := valid()
			c.Attestation.Measurements = m
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), "attestation.measurements: the measurement policy accepts any node image") {
				t.Fatalf("Validate = %v, want the measurements refused", err)
			}
			path := filepath.Join(t.TempDir(), FileName)
			if err := c.Write(path, false); err == nil {
				t.Fatal("Write accepted the configuration")
			}
			// Written by hand: neither the full load nor the attestation-only load (verify) takes it.
			raw, err := c.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "accepts any node image") {
				t.Errorf("Load = %v, want the measurements refused", err)
			}
			if _, err := LoadAttestation(path); err == nil || !strings.Contains(err.Error(), "accepts any node image") {
				t.Errorf("LoadAttestation = %v, want the measurements refused", err)
			}
		})
	}
}

// A configuration of a variant whose vTPM the hypervisor implements carries the variant's warning at its top.
func TestHeaderWarnsOfHostVTPM(t *testing.T) {
	for _, variant := range []string{"aws-sev-snp", "gcp-sev-snp"} {
		if h := string(Header(variant)); !strings.Contains(h, "\n# WARNING: "+variant+" PCRs are not hardware-rooted") {
			t.Errorf("%s: header %q lacks the warning", variant, h)
		}
	}
	for _, variant := range []string{"mini-vtpm", "azure-sev-snp", "qemu-tdx"} {
		if h := string(Header(variant)); strings.Contains(h, "WARNING") {
			t.Errorf("%s: header %q warns", variant, h)
		}
	}
}
