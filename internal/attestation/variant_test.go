package attestation

import (
	"strings"
	"testing"
)

// The variants whose vTPM the hypervisor implements say so, in their description and in a warning line; the
// others, whose PCRs the hardware or the mini provider's TPM roots, have no warning.
func TestHostVTPMWarning(t *testing.T) {
	for _, v := range Variants() {
		host := v.Name == AWSSEVSNP.Name || v.Name == GCPSEVSNP.Name
		if v.HostVTPM != host {
			t.Errorf("%s: HostVTPM = %v, want %v", v, v.HostVTPM, host)
		}
		w := v.Warning()
		if !host {
			if w != "" {
				t.Errorf("%s: unexpected warning %q", v, w)
			}
			continue
		}
		for _, want := range []string{"WARNING: " + v.Name + " PCRs are not hardware-rooted", "the vTPM runs in the hypervisor", "binds only its attestation key", "launch measurement"} {
			if !strings.Contains(w, want) {
				t.Errorf("%s: warning %q lacks %q", v, w, want)
			}
		}
		if strings.Contains(w, "\n") {
			t.Errorf("%s: warning is not one line: %q", v, w)
		}
		if !strings.Contains(v.Description, "the vTPM is the hypervisor's, so its PCRs are not hardware-rooted") {
			t.Errorf("%s: description %q does not say that its PCRs are not hardware-rooted", v, v.Description)
		}
	}
}
