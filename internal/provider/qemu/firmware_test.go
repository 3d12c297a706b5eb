package qemu

import (
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

func TestPinnedFirmware(t *testing.T) {
	fw, err := PinnedFirmware()
	if err != nil {
		t.Fatal(err)
	}
	if fw.OVMF == "" || fw.Machine == "" {
		t.Errorf("the pinned firmware PCRs name no OVMF version or machine: %+v", fw)
	}
	for idx, m := range fw.PCRs {
		if m.WarnOnly || m.Expected == (measurements.Digest{}) {
			t.Errorf("pinned PCR %d: %+v", idx, m)
		}
	}
}

// The policy enforces the image's PCRs and the firmware's; an image policy that does not pin the UEFI
// scheme, or that names a firmware PCR, is refused.
func TestPolicy(t *testing.T) {
	image := measurements.M{4: {Expected: measurements.Digest{4}}, 11: {Expected: measurements.Digest{11}}, 12: {}, 13: {}}
	p, err := Policy(image)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Indices(); len(got) != 9 {
		t.Fatalf("policy PCRs %v, want 0-3, 4, 7, 11-13", got)
	}
	for idx, m := range p {
		if m.WarnOnly {
			t.Errorf("PCR %d warn-only", idx)
		}
	}
	if err := p.ValidateScheme(measurements.UEFIScheme); err != nil {
		t.Error(err)
	}
	missing := measurements.M{4: {}, 11: {}, 12: {}}
	if _, err := Policy(missing); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
		t.Errorf("an image policy without PCR 13: %v", err)
	}
	warn := measurements.M{4: {}, 11: {WarnOnly: true}, 12: {}, 13: {}}
	if _, err := Policy(warn); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
		t.Errorf("an image policy with PCR 11 warn-only: %v", err)
	}
	firmware := measurements.M{0: {}, 4: {}, 11: {}, 12: {}, 13: {}}
	if _, err := Policy(firmware); err == nil || !strings.Contains(err.Error(), "firmware PCR 0") {
		t.Errorf("an image policy naming PCR 0: %v", err)
	}
}
