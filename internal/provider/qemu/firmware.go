package qemu

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// FirmwareFile is the file of the pinned firmware measurements, next to this code.
const FirmwareFile = "firmware-pcrs.json"

//go:embed firmware-pcrs.json
var firmwareJSON []byte

// Firmware are the PCRs of the firmware's part of a machine's boot, recorded from a reference boot of a
// provider machine (TestFirmwarePCRs, with -update) for the OVMF build they belong to.
type Firmware struct {
	// OVMF is the version of the Debian package ovmf whose OVMF_CODE_4M.fd measured these values.
	OVMF string `json:"ovmf"`
	// Machine describes the machine definition the values hold for (machineArgs).
	Machine string `json:"machine"`
	// PCRs are the firmware's PCRs: 0 (firmware code), 1 (platform configuration: SMBIOS, boot variables),
	// 2 (option ROMs), 3 (their configuration), 7 (Secure Boot state).
	PCRs measurements.M `json:"pcrs"`
}

// FirmwarePCRs are the PCRs the pinned firmware measurements cover.
var FirmwarePCRs = []uint32{0, 1, 2, 3, 7}

// PinnedFirmware returns the pinned firmware measurements.
func PinnedFirmware() (*Firmware, error) {
	var f Firmware
	if err := strictjson.Decode(firmwareJSON, &f, 1<<20); err != nil {
		return nil, fmt.Errorf("the pinned firmware measurements (%s): %w", FirmwareFile, err)
	}
	for _, idx := range FirmwarePCRs {
		if _, ok := f.PCRs[idx]; !ok {
			return nil, fmt.Errorf("the pinned firmware measurements (%s) lack PCR %d; record them again (go test ./internal/provider/qemu -run TestFirmwarePCRs -update)", FirmwareFile, idx)
		}
	}
	if len(f.PCRs) != len(FirmwarePCRs) {
		return nil, fmt.Errorf("the pinned firmware measurements (%s) hold %d PCRs, want exactly %v", FirmwareFile, len(f.PCRs), FirmwarePCRs)
	}
	return &f, nil
}

// Policy is the measurement policy of the provider's machines booting a disk image whose expected image
// measurements (measurements-uefi.json: PCRs 4, 11, 12, 13) are image: those, and the pinned firmware PCRs,
// all enforced. It fails if image is not a policy of the UEFI scheme or names a firmware PCR.
func Policy(image measurements.M) (measurements.M, error) {
	if err := image.ValidateScheme(measurements.UEFIScheme); err != nil {
		return nil, fmt.Errorf("the disk image's measurements: %w", err)
	}
	fw, err := PinnedFirmware()
	if err != nil {
		return nil, err
	}
	out := maps.Clone(image)
	for idx, m := range fw.PCRs {
		if _, ok := out[idx]; ok {
			return nil, fmt.Errorf("the disk image's measurements name firmware PCR %d, which only the firmware measures", idx)
		}
		m.WarnOnly = false
		out[idx] = m
	}
	return out, out.ValidateScheme(measurements.UEFIScheme)
}

// marshalFirmware writes the pinned file's content.
func marshalFirmware(f *Firmware) ([]byte, error) {
	raw, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(raw, '\n'), nil
}
