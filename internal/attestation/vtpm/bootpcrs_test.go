package vtpm

import (
	"slices"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/measuredboot"
)

// A node pins its peers' boot PCRs by its own: for qemu-vtpm the UEFI firmware's and the image's, which the
// variant's image scheme requires (a policy of the mini scheme's PCRs is refused for qemu-vtpm evidence).
func TestBootPCRs(t *testing.T) {
	if got := BootPCRs(attestation.MiniVTPM); !slices.Equal(got, measuredboot.BootPCRs) {
		t.Errorf("mini-vtpm: %v, want %v", got, measuredboot.BootPCRs)
	}
	got := BootPCRs(attestation.QEMUVTPM)
	for _, want := range append([]uint32{0, 1, 2, 3, 5, 7}, ImageScheme(attestation.QEMUVTPM).ImagePCRs...) {
		if !slices.Contains(got, want) {
			t.Errorf("qemu-vtpm: %v lacks PCR %d", got, want)
		}
	}
	// The result is the caller's to extend.
	a := BootPCRs(attestation.MiniVTPM)
	a[0] = 99
	if measuredboot.BootPCRs[0] == 99 {
		t.Error("BootPCRs returned measuredboot.BootPCRs itself")
	}
}
