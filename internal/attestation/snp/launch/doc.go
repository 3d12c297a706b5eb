// Package launch computes the launch measurement of an AMD SEV-SNP guest started by QEMU/KVM: the 48-byte
// MEASUREMENT that the attestation report of every such guest carries, and that a verifier pins in its
// policy (snp.Policy.Measurements).
//
// # What the secure processor measures
//
// While the host builds the guest, the AMD secure processor folds every page the host hands it into one
// SHA-384 chain (SEV-SNP firmware ABI, SNP_LAUNCH_UPDATE and the PAGE_INFO structure): for each page, the new
// digest is SHA-384 of a 112-byte PAGE_INFO that holds the previous digest, a digest of the page's contents
// (SHA-384 of the page for normal and VMSA pages, zeros for the others), the structure's length, the page
// type, the VMPL permissions (all zero here) and the page's guest-physical address. The chain starts at 48
// zero bytes. QEMU hands over, in this order:
//
//  1. the firmware image (-bios), page by page as normal pages, mapped so that it ends at 4 GiB;
//  2. the sections the firmware declares in its SEV metadata, in their order: SEC memory as zero pages, the
//     secrets page (which the secure processor fills) and the CPUID page (which the host fills and the
//     secure processor checks) as their own page types without contents digest, and the kernel hashes page: with kernel-hashes=on a normal page that holds QEMU's table of the SHA-256 digests
//     of the kernel, initrd and command line (zeros elsewhere), otherwise zero pages;
//  3. one VMSA page per vCPU (the initial register state), with the address the secure processor records
//     for VMSA pages, 0xFFFFFFFFF000.
//
// The VMSA of the first vCPU starts at the reset vector 0xFFFFFFF0; the others start at the SEV-ES reset
// vector the firmware declares. Under QEMU, register RDX of every VMSA holds the vCPU's CPUID signature
// (family, model, stepping of the -cpu model), and SEV_FEATURES holds the guest features the host enabled
// (bit 0 SNPActive; KVM adds DebugSwap, bit 5, on some host kernels). Every one of these inputs changes the
// measurement: the firmware bytes, the kernel, initrd and command line (with kernel hashes), the number of
// vCPUs, the vCPU type and the guest features.
//
// # Firmware
//
// [ParseFirmware] reads an OVMF build for SEV-SNP (edk2's OvmfPkg/AmdSev/AmdSevX64.dsc, which supports
// kernel hashes and measured direct boot, or OvmfPkgX64.dsc, which declares no kernel hashes page): the
// GUIDed table that ends 32 bytes before the end of the image (entries of data, a 16-bit length and a GUID,
// read backwards), and from it the SEV metadata ("ASEV", version 1, a list of sections), the SEV-ES reset
// vector and the location of the kernel hashes table. The image comes from the host's disk and is parsed
// as untrusted bytes: every length and offset is checked, the table entries must be distinct, sections must
// be page-aligned, lie below 4 GiB, not overlap each other or the firmware, and the secrets and CPUID
// sections must be one page each. Anything else is an error that names what is wrong; nothing is guessed.
//
// # Use
//
// [Measure] computes the measurement from a parsed firmware and a [Launch] (vCPU count, vCPU type, guest
// features, and optional [KernelHashes] of a direct boot). The vCPU type is the name of a QEMU CPU model
// with a known signature ([VCPUTypes]); an unknown one is an error, because the measurement depends on it.
//
// The algorithm is the one of the public tool sev-snp-measure (github.com/virtee/sev-snp-measure); the
// tests reproduce its published test vectors (see testdata/README.md).
package launch
