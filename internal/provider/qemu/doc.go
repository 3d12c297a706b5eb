// Package qemu is the provider of real virtual machines on this machine: it plays the cloud for QEMU
// machines that boot the node's bootable disk image (package bootimage) under UEFI firmware with a software
// TPM each.
//
// Per node it manufactures a swtpm with EK certificates from the provider's CA (package swtpm, as the mini
// provider does) and boots a machine (machineArgs): q35, OVMF from pflash with the machine's own variable
// store, the TPM as tpm-tis, KVM with the host's CPU where /dev/kvm opens and TCG otherwise, the disk image
// read-only (its root is dm-verity, its ESP only read by the firmware), its own state disk file, and the serial console to a file in
// the provider's directory. The machines' network cards are taps on a bridge inside a network namespace the
// provider creates and owns (Netns); the host reaches that network only through a veth pair (HostLink, with
// the provider's address 10.219.0.1) for the CLI's calls and the metadata service (the mini provider's,
// package metadata). Nothing routes off it: no NAT, no forwarding, no default route on the nodes. Each card's
// MAC address carries the node's address (package guest). Nothing the provider hands out is trusted by the
// nodes or the CLI beyond what attestation checks.
//
// # Measurements
//
// A machine's policy (Policy) enforces the image's PCRs (4, 11, 12, 13; measurements-uefi.json, computed at
// build time, see package bootimage) and the firmware's PCRs 0, 1, 2, 3 and 7, recorded from a reference boot
// of a provider machine (TestFirmwarePCRs -update) and pinned in firmware-pcrs.json with the version of the
// Debian package ovmf they belong to:
//
//	PCR 0   enforced   the firmware code (OVMF build) and its version events
//	PCR 1   enforced   the platform configuration: SMBIOS tables (CPUs, memory size), boot variables (the
//	                   card's MAC address would appear in a network boot option: the firmware offers none)
//	PCR 2   enforced   option ROMs (the network card has none)
//	PCR 3   enforced   their configuration
//	PCR 4   enforced   the boot application: the UKI, and the kernel systemd-stub loads from it
//	PCR 5   not        the GPT of the boot disk and the ExitBootServices actions: the GPT names the disk's
//	                   partitions, which the image's dm-verity root hash (in the UKI, PCRs 4 and 11) pins by
//	                   content, so PCR 5 adds nothing a host could change unnoticed; its value differs per
//	                   image build and cannot come from a reference boot of another image
//	PCR 6   not        unused by OVMF
//	PCR 7   enforced   the Secure Boot state and policy (off: the UKI's command line is checked by the
//	                   initramfs, and PCRs 11 and 12 show any other)
//	PCR 8-10 not       unused by this boot (PCR 9: the kernel's initrd and load options, covered by PCR 11)
//	PCR 11  enforced   the UKI's sections: kernel, initramfs, command line (with the root hash), OS release
//	PCR 12  enforced   zero: a command line of the host's boot option, or credentials on the ESP
//	PCR 13  enforced   zero: system extensions on the ESP
//	PCR 14  not        unused
//	PCR 15  cluster    the cluster ID, extended after init or join (measurements.MemberPolicy)
//	PCR 16-23 not      debug and application PCRs, unused
//
// The pinned firmware values hold only for the machine definition they were recorded with (machineArgs,
// DefaultMemoryMiB, the accelerator): another OVMF build or machine definition needs a new reference boot.
//
// # SEV-SNP machines
//
// With Spec.SNP, the machines are AMD SEV-SNP guests (attestation variant qemu-sev-snp): KVM with a named
// EPYC CPU model, OVMF built for SEV-SNP with kernel hashes (edk2 OvmfPkg/AmdSev) as -bios, the kernel,
// initrd and command line of the disk image's UKI (its .linux, .initrd and .cmdline sections) booted
// directly with kernel-hashes=on, no TPM, and virtio devices behind the DMA API (snpMachineArgs). The secure
// processor measures the firmware, the table of the kernel's, initrd's and command line's digests that the
// firmware checks before it runs them, and one VMSA per vCPU; SNPLaunch.Measurement computes that launch
// measurement (package snp/launch), which the CLI writes into the cluster's SEV-SNP policy. The provider
// writes the kernel and initrd it boots from the same bytes it measured. Each machine is launched with
// HOST_DATA naming its node (snp.HostDataForNode), outside the launch measurement: the node's evidence carries
// the name and validators accept it only as HOST_DATA binds it. Before it creates anything, the provider checks that the host can launch
// SEV-SNP guests (SNPHost: /dev/sev, /dev/kvm, kvm_amd's sev_snp, QEMU 9.1 or later) and that the machines'
// launch measurement is one the policy accepts; otherwise it refuses, naming what is missing.
package qemu
