// Package bootimage builds the bootable disk image of a node for real (UEFI) virtual machines and computes,
// from the image alone, the PCR values its boot presents.
//
// # The image
//
// node-image.raw is a GPT disk:
//
//	partition 1  "esp"                 EFI system partition (FAT, made with mtools without mounting), holding
//	                                   EFI/BOOT/BOOTX64.EFI, the firmware's removable-media boot path
//	partition 2  "constellation-root"  the node's root filesystem (the squashfs of package nodeimage), padded
//	                                   to 4096-byte blocks, followed by its dm-verity hash tree (SHA-256, no
//	                                   superblock), read-only
//
// BOOTX64.EFI is a unified kernel image (UKI): Debian's systemd-stub (systemd 252) with the sections .osrel,
// .cmdline, .linux (Debian's cloud kernel) and .initrd (cmd/node-init and the kernel modules it loads before
// it switches to the root: InitrdModules, those that open the root and those a Kubernetes node needs, each
// after its dependencies).
// The command line carries the root's dm-verity parameters and root hash, and, after "--", the node's first
// process; the initramfs carries the same command line. The init (package nodeinit) refuses to boot unless
// the kernel runs with exactly that command line (systemd-stub replaces it with one the host's boot option
// passes when Secure Boot is off) and the root partition matches the root hash.
//
// The build is reproducible: the UKI's COFF timestamp is zero and its checksum recomputed, the ESP's volume ID
// and timestamps are fixed, the verity salt is the SHA-256 of the root filesystem, and the GPT disk and
// partition GUIDs are derived from the partitions' content, so the same inputs give the same image digest.
//
// # Measurements
//
// A boot of the image on OVMF with a TPM extends (SHA-256 bank):
//
//	PCR 4   EV_EFI_ACTION "Calling EFI Application from Boot Option", EV_SEPARATOR, then
//	        EV_EFI_BOOT_SERVICES_APPLICATION with the Authenticode digest of BOOTX64.EFI, and another with the
//	        Authenticode digest of the kernel (.linux), which systemd-stub starts with LoadImage
//	PCR 11  for each UKI section of UKISections present: its name with the terminating NUL, then its content
//	PCR 12  a command line the boot option passes (it replaces the embedded one when Secure Boot is off) and
//	        credentials found on the ESP; nothing for a genuine boot
//	PCR 13  system extensions found on the ESP; nothing for a genuine boot
//
// These are computed at build time (ExpectedUEFI, written to measurements-uefi.json) and checked against a
// real boot by TestQEMUBoot. The policy (attestation variant qemu-vtpm, measurements.UEFIScheme) enforces
// PCRs 4, 11, 12 and 13: PCR 4 pins the UKI (and so the
// kernel, initramfs, command line and through the root hash the whole root filesystem), PCR 11 pins the same
// sections as the stub saw them, and PCRs 12 and 13 must stay zero because the ESP and the boot variables
// belong to the host: a command line of its choosing (another root hash) or files it puts on the ESP are
// measured there. The firmware's own PCRs (0-3, 5, 7: firmware code, configuration, option ROMs, GPT, Secure
// Boot state) depend on the pinned OVMF build and the machine's configuration; they cannot be computed from
// the image and are recorded from a reference boot by the QEMU provider (package internal/provider/qemu). PCR 9 (the kernel's initrd and load
// options events) is not used.
//
// BootQEMU boots an image as such a machine (OVMF, swtpm, QEMU with TCG) for tests and benchmarks.
package bootimage
