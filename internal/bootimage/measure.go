package bootimage

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

// PCRs of the UEFI boot scheme.
const (
	// PCRBootChain holds the UEFI boot chain (TCG PC Client PFP): the firmware's boot attempt, its
	// separator, and the Authenticode digest of every UEFI application it starts.
	PCRBootChain = 4
	// PCRKernelImage holds the UKI's sections as systemd-stub measures them.
	PCRKernelImage = 11
	// PCRKernelParameters holds what systemd-stub measures of a command line passed by the boot option
	// (which replaces the embedded one when Secure Boot is off) and credentials from the ESP.
	PCRKernelParameters = 12
	// PCRSysexts holds what systemd-stub measures of system extension images from the ESP.
	PCRSysexts = 13
)

// Event data the firmware measures into PCR 4 (edk2: EFI_CALLING_EFI_APPLICATION, EV_SEPARATOR).
var (
	callingEFIApplication = []byte("Calling EFI Application from Boot Option")
	separator             = []byte{0, 0, 0, 0}
)

// UKISections are the UKI sections systemd-stub (Debian 12, systemd 252) measures into PCR 11, in its order;
// .pcrsig is never measured.
var UKISections = []string{".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"}

// Event is one expected measurement: the PCR, a description and the SHA-256 digest extended.
type Event struct {
	PCR         uint32   `json:"pcr"`
	Description string   `json:"description"`
	Digest      [32]byte `json:"-"`
	DigestHex   string   `json:"digest"`
}

func event(pcr uint32, desc string, digest [32]byte) Event {
	return Event{PCR: pcr, Description: desc, Digest: digest, DigestHex: fmt.Sprintf("%x", digest)}
}

// UEFIEvents returns the events a boot of uki (started as the first application of the boot option,
// EFI/BOOT/BOOTX64.EFI) extends into PCRs 4 and 11, in order:
//
//	PCR 4   EV_EFI_ACTION                    "Calling EFI Application from Boot Option"
//	PCR 4   EV_SEPARATOR                     00000000
//	PCR 4   EV_EFI_BOOT_SERVICES_APPLICATION Authenticode SHA-256 of the UKI
//	PCR 4   EV_EFI_BOOT_SERVICES_APPLICATION Authenticode SHA-256 of the .linux section (systemd-stub
//	                                         starts the kernel with LoadImage, and the firmware measures it)
//	PCR 11  EV_IPL, for each section of UKISections present: its name with the terminating NUL, then its
//	        content (VirtualSize bytes)
//
// PCRs 12 and 13 are extended only when the boot option passes a command line or the ESP carries
// credentials or system extensions: a genuine boot leaves them zero.
func UEFIEvents(uki []byte) ([]Event, error) {
	ukiDigest, err := AuthenticodeSHA256(uki)
	if err != nil {
		return nil, fmt.Errorf("the UKI: %w", err)
	}
	kernel, ok, err := SectionData(uki, ".linux")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("the UKI has no .linux section")
	}
	kernelDigest, err := AuthenticodeSHA256(kernel)
	if err != nil {
		return nil, fmt.Errorf("the UKI's kernel: %w", err)
	}
	events := []Event{
		event(PCRBootChain, "EV_EFI_ACTION "+string(callingEFIApplication), sha256.Sum256(callingEFIApplication)),
		event(PCRBootChain, "EV_SEPARATOR", sha256.Sum256(separator)),
		event(PCRBootChain, "EV_EFI_BOOT_SERVICES_APPLICATION EFI/BOOT/BOOTX64.EFI", ukiDigest),
		event(PCRBootChain, "EV_EFI_BOOT_SERVICES_APPLICATION .linux", kernelDigest),
	}
	for _, name := range UKISections {
		data, ok, err := SectionData(uki, name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		events = append(events,
			event(PCRKernelImage, "EV_IPL section name "+name, sha256.Sum256(append([]byte(name), 0))),
			event(PCRKernelImage, "EV_IPL section "+name, sha256.Sum256(data)))
	}
	return events, nil
}

// Replay extends the events into zeroed SHA-256 PCRs.
func Replay(events []Event) map[uint32][32]byte {
	pcrs := map[uint32][32]byte{}
	for _, e := range events {
		cur := pcrs[e.PCR]
		pcrs[e.PCR] = sha256.Sum256(append(cur[:], e.Digest[:]...))
	}
	return pcrs
}

// ExpectedUEFI returns the PCR values a genuine boot of uki presents, computed from the UKI alone: PCRs 4
// and 11 from its events, PCRs 12 and 13 zero.
func ExpectedUEFI(uki []byte) (measurements.M, []Event, error) {
	events, err := UEFIEvents(uki)
	if err != nil {
		return nil, nil, err
	}
	pcrs := Replay(events)
	m := measurements.M{
		PCRBootChain:        {Expected: pcrs[PCRBootChain]},
		PCRKernelImage:      {Expected: pcrs[PCRKernelImage]},
		PCRKernelParameters: {},
		PCRSysexts:          {},
	}
	return m, events, nil
}

func jsonMarshalIndent(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
