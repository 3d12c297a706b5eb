package snp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The guest's reporter is chosen by what the kernel offers: configfs-tsm first, the sev-guest device
// otherwise, and nothing (an error) on a machine with neither.
func TestGuestReporter(t *testing.T) {
	dir := t.TempDir()
	tsm := filepath.Join(dir, "tsm-report")
	if err := os.Mkdir(tsm, 0o700); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	// /dev/null is a character device, as /dev/sev-guest is.
	const charDevice = "/dev/null"
	plainFile := filepath.Join(dir, "file")
	if err := os.WriteFile(plainFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	r, desc, err := GuestReporter(tsm, charDevice)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := r.(*ConfigFSReporter); !ok || c.Root != tsm || !strings.Contains(desc, "configfs-tsm") {
		t.Errorf("with both interfaces: got %T %q, want configfs-tsm at %s", r, desc, tsm)
	}
	r, desc, err = GuestReporter(missing, charDevice)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := r.(*DeviceReporter); !ok || d.Path != charDevice || !strings.Contains(desc, "sev-guest") {
		t.Errorf("without configfs-tsm: got %T %q, want the device %s", r, desc, charDevice)
	}
	for name, args := range map[string][2]string{
		"neither":                     {missing, missing},
		"configfs root is a file":     {plainFile, charDevice},
		"device is not a char device": {missing, plainFile},
		"device is a directory":       {missing, dir},
	} {
		if r, _, err := GuestReporter(args[0], args[1]); err == nil {
			t.Errorf("%s: got reporter %T, want an error", name, r)
		}
	}
	if _, _, err := GuestReporter(missing, missing); err == nil || !strings.Contains(err.Error(), "no SEV-SNP guest") {
		t.Errorf("neither: error %v does not say that this is no SEV-SNP guest", err)
	}
}
