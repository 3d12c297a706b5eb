package snp

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// GuestReporter returns the reporter of the SEV-SNP guest this code runs in, by what its kernel offers:
// the configfs-tsm report interface at configFSRoot if it exists (Linux 6.7 and later; the kernel serialises
// report requests there and every request has its own entry), the sev-guest device at device otherwise.
// Empty arguments mean [DefaultConfigFSRoot] and [DefaultSevGuestDevice]. It returns a description of the
// chosen interface for the log.
//
// Neither interface is trusted for what it returns: the issuer checks that a report parses and carries the
// requested REPORT_DATA, and only a verifier that checks its signature to the AMD root decides. A machine
// that offers neither is no SEV-SNP guest (or its kernel lacks the sev-guest driver), and this is an error:
// a node never falls back to evidence of another kind.
func GuestReporter(configFSRoot, device string) (Reporter, string, error) {
	if configFSRoot == "" {
		configFSRoot = DefaultConfigFSRoot
	}
	if device == "" {
		device = DefaultSevGuestDevice
	}
	fi, err := os.Stat(configFSRoot)
	switch {
	case err == nil && fi.IsDir():
		return &ConfigFSReporter{Root: configFSRoot}, "configfs-tsm " + configFSRoot, nil
	case err == nil:
		return nil, "", fmt.Errorf("%s is not a directory; is configfs mounted at /sys/kernel/config?", configFSRoot)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", fmt.Errorf("the configfs-tsm report interface: %w", err)
	}
	fi, err = os.Stat(device)
	switch {
	case err == nil && fi.Mode()&fs.ModeCharDevice != 0:
		return &DeviceReporter{Path: device}, "sev-guest device " + device, nil
	case err == nil:
		return nil, "", fmt.Errorf("%s is not a character device", device)
	case errors.Is(err, fs.ErrNotExist):
		return nil, "", fmt.Errorf("this machine offers no SEV-SNP guest interface (neither %s nor %s): it is no SEV-SNP guest, or its kernel lacks the sev-guest driver (CONFIG_SEV_GUEST) and configfs-tsm (CONFIG_TSM_REPORTS)", configFSRoot, device)
	default:
		return nil, "", fmt.Errorf("the SEV-SNP guest device: %w", err)
	}
}
