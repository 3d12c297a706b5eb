package snp

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// FirmwareVersion is the version of the SEV-SNP firmware of the AMD secure processor: the major and minor
// version of the firmware ABI and the build number of the firmware image. AMD publishes firmware releases
// as "major.minor.build", for instance 1.55.21. Versions compare numerically, component by component.
type FirmwareVersion struct {
	Major, Minor, Build uint8
}

// CurrentFirmware is the firmware the report says the platform runs (CURRENT_MAJOR, CURRENT_MINOR,
// CURRENT_BUILD). Firmware that predates these fields leaves them zero.
func (r *Report) CurrentFirmware() FirmwareVersion {
	return FirmwareVersion{Major: r.CurrentMajor, Minor: r.CurrentMinor, Build: r.CurrentBuild}
}

// CommittedFirmware is the firmware version the platform has committed (COMMITTED_MAJOR, COMMITTED_MINOR,
// COMMITTED_BUILD): the lowest version the platform can be rolled back to. It is never above the current
// version. Firmware that predates these fields leaves them zero.
func (r *Report) CommittedFirmware() FirmwareVersion {
	return FirmwareVersion{Major: r.CommittedMajor, Minor: r.CommittedMinor, Build: r.CommittedBuild}
}

// IsZero reports whether v is 0.0.0, which a report states when its firmware does not fill in the version.
func (v FirmwareVersion) IsZero() bool { return v == FirmwareVersion{} }

// Compare returns -1, 0 or +1 as v is lower than, equal to or higher than w, comparing major, then minor,
// then build as numbers.
func (v FirmwareVersion) Compare(w FirmwareVersion) int {
	for _, c := range [][2]uint8{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Build, w.Build}} {
		switch {
		case c[0] < c[1]:
			return -1
		case c[0] > c[1]:
			return 1
		}
	}
	return 0
}

// String returns "major.minor.build".
func (v FirmwareVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Build) }

// MarshalText encodes v as "major.minor.build".
func (v FirmwareVersion) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText decodes "major.minor.build" (see [ParseFirmwareVersion]).
func (v *FirmwareVersion) UnmarshalText(text []byte) error {
	p, err := ParseFirmwareVersion(string(text))
	if err != nil {
		return err
	}
	*v = p
	return nil
}

// UnmarshalJSON decodes a JSON string "major.minor.build". A number (which YAML makes of an unquoted 1.55)
// is an error that says how to write the version.
func (v *FirmwareVersion) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("firmware version %s: want a string \"major.minor.build\", for instance \"1.55.21\" (quote it in YAML)", data)
	}
	return v.UnmarshalText([]byte(s))
}

// ParseFirmwareVersion parses "major.minor.build": three decimal numbers from 0 to 255, separated by dots,
// without signs, spaces or leading zeros.
func ParseFirmwareVersion(s string) (FirmwareVersion, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return FirmwareVersion{}, fmt.Errorf("firmware version %q: want major.minor.build, for instance 1.55.21", s)
	}
	var out [3]uint8
	for i, part := range parts {
		if part == "" || len(part) > 3 || (len(part) > 1 && part[0] == '0') || strings.TrimLeft(part, "0123456789") != "" {
			return FirmwareVersion{}, fmt.Errorf("firmware version %q: component %q is not a decimal number from 0 to 255", s, part)
		}
		n, err := strconv.ParseUint(part, 10, 8)
		if err != nil {
			return FirmwareVersion{}, fmt.Errorf("firmware version %q: component %q is not a decimal number from 0 to 255", s, part)
		}
		out[i] = uint8(n)
	}
	return FirmwareVersion{Major: out[0], Minor: out[1], Build: out[2]}, nil
}
