// Command uefiguest is the first process of the test root filesystem that the UEFI boot test of package
// bootimage boots: it reports on the console that it runs from the verified root, the TPM's SHA-256 PCRs
// (the firmware's 0-3, 5, 7 and the boot chain's 4, 11, 12, 13) as the kernel reads them from the TPM, and the
// firmware's event log, then powers off.
package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	fmt.Printf("RESULT first-process pid=%d\n", os.Getpid())
	if raw, err := os.ReadFile("/etc/os-release"); err == nil {
		fmt.Printf("RESULT root %s\n", strings.Join(strings.Fields(string(raw)), " "))
	}
	for _, pcr := range []int{0, 1, 2, 3, 4, 5, 7, 11, 12, 13} {
		raw, err := os.ReadFile(fmt.Sprintf("/sys/class/tpm/tpm0/pcr-sha256/%d", pcr))
		if err != nil {
			fmt.Printf("RESULT fail reading PCR %d: %v\n", pcr, err)
			continue
		}
		fmt.Printf("RESULT pcr %d %s\n", pcr, strings.ToLower(strings.TrimSpace(string(raw))))
	}
	if err := unix.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, ""); err == nil {
		if raw, err := os.ReadFile("/sys/kernel/security/tpm0/binary_bios_measurements"); err == nil {
			fmt.Printf("RESULT eventlog %s\n", base64.StdEncoding.EncodeToString(raw))
		}
	}
	fmt.Println("RESULT done")
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
