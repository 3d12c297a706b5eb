package launch_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
)

// TestHostLaunchesAnotherGuest plays a host that launches the guest otherwise than the verifier expects: a
// firmware image with one byte changed, another kernel command line (for instance one that drops the root
// file system's verity hash), another vCPU count or type, or another kernel. The secure processor measures
// what the host launched, so the guest's report carries that launch's measurement; the verifier's policy
// holds the measurement computed from the genuine inputs, and every changed launch is refused, while the
// genuine one is accepted.
func TestHostLaunchesAnotherGuest(t *testing.T) {
	genuineFW, err := os.ReadFile("testdata/ovmf_AmdSev_suffix.bin")
	if err != nil {
		t.Fatal(err)
	}
	kernel := []byte("the node's unified kernel image")
	const cmdline = "console=ttyS0 roothash=0123abcd"
	type launchInputs struct {
		firmware []byte
		kernel   []byte
		cmdline  string
		vcpus    int
		vcpuType string
	}
	genuine := launchInputs{genuineFW, kernel, cmdline, 2, "EPYC-Milan"}
	measure := func(t *testing.T, in launchInputs) [snp.MeasurementSize]byte {
		t.Helper()
		fw, err := launch.ParseFirmware(in.firmware)
		if err != nil {
			t.Fatal(err)
		}
		kh, err := launch.NewKernelHashes(in.kernel, nil, in.cmdline)
		if err != nil {
			t.Fatal(err)
		}
		m, err := launch.Measure(fw, launch.Launch{VCPUs: in.vcpus, VCPUType: in.vcpuType, GuestFeatures: launch.FeatureSNPActive, KernelHashes: kh})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.Roots()
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := snp.NewVerifier(snp.VerifierOptions{Roots: roots, Now: func() time.Time { return snptest.Now }})
	if err != nil {
		t.Fatal(err)
	}
	// The verifier's policy: the measurement computed from the genuine launch.
	expected, err := pki.NewPlatform(measure(t, genuine))
	if err != nil {
		t.Fatal(err)
	}
	validator, err := snp.NewValidator(verifier, expected.Policy())
	if err != nil {
		t.Fatal(err)
	}
	attest := func(t *testing.T, in launchInputs) error {
		t.Helper()
		// The host launches in; the platform reports the measurement of what it launched.
		platform, err := pki.NewPlatform(measure(t, in))
		if err != nil {
			t.Fatal(err)
		}
		nonce := bytes.Repeat([]byte{7}, 32)
		evidence, err := snp.NewIssuer(platform).Issue(context.Background(), nonce, []byte("tls key"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = validator.Validate(context.Background(), evidence, nonce)
		return err
	}
	if err := attest(t, genuine); err != nil {
		t.Fatalf("the genuine launch is refused: %v", err)
	}
	oneByte := bytes.Clone(genuineFW)
	oneByte[100] ^= 0x80
	for name, in := range map[string]launchInputs{
		"one byte of the firmware":    {oneByte, kernel, cmdline, 2, "EPYC-Milan"},
		"another kernel command line": {genuineFW, kernel, "console=ttyS0 roothash=0123abce", 2, "EPYC-Milan"},
		"an empty command line":       {genuineFW, kernel, "", 2, "EPYC-Milan"},
		"another kernel":              {genuineFW, []byte("the host's kernel"), cmdline, 2, "EPYC-Milan"},
		"one vCPU more":               {genuineFW, kernel, cmdline, 3, "EPYC-Milan"},
		"another vCPU type":           {genuineFW, kernel, cmdline, 2, "EPYC-Genoa"},
	} {
		t.Run(name, func(t *testing.T) {
			err := attest(t, in)
			if err == nil {
				t.Fatal("the validator accepted a guest launched otherwise than expected")
			}
			if !errors.Is(err, snp.ErrPolicy) || !strings.Contains(err.Error(), "measurement") {
				t.Errorf("refused, but not for its measurement: %v", err)
			}
		})
	}
}
