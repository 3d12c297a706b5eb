// Package azure reads and parses what the paravisor of an Azure confidential VM provides for attestation.
//
// On Azure, a confidential VM (SEV-SNP or TDX) runs a paravisor (the HCL) below the guest. At boot the
// paravisor requests the hardware report and stores an "HCL report" in the vTPM's NV index 0x01400001
// ([NVIndexHCLReport]): a header, the hardware report (an SEV-SNP attestation report or a TDX TD report)
// and a runtime data JSON. The hardware report's REPORT_DATA is the hash of the runtime data (SHA-256 on
// every recorded report, zero-padded to 64 bytes), and the runtime data names the vTPM attestation key as
// a JSON web key with key ID "HCLAkPub". A verified hardware report thus vouches for the attestation key,
// whose quotes then vouch for the PCRs.
//
// This package only parses and obtains; it verifies nothing:
//
//   - [ParseHCLReport] checks the structure strictly (signature, header and request data versions, request
//     type, status, reserved bytes, report type, hash type, every size against the others and the input,
//     zero padding). [HCLReport.ReportData] computes the REPORT_DATA the hardware report must carry, and
//     [HCLReport.AttestationKey] extracts the attestation key. Trust either only after the hardware report
//     is verified and carries that REPORT_DATA; package snp does that for the azure-sev-snp variant.
//   - [NVReader] reads the HCL report from the vTPM; [THIMClient] obtains the VCEK certificate and its chain
//     from the instance metadata service (Azure's THIM cache), which a verifier checks against the AMD roots
//     it embeds.
//   - [TDQuoteClient] obtains the quote of a TD report from the instance metadata service (Azure TDX VMs);
//     package tdx checks that it is the quote of that TD report and verifies it against the Intel root.
//
// The test data are genuine recordings of Azure SEV-SNP and TDX VMs (testdata/README.md says where they come
// from and what was reconstructed). Package azuretest has faithful fakes of the NV index and of the VCEK and
// TD quote endpoints. For TDX HCL reports (report type 4) the TD report is the first 1024 bytes of the
// hardware report area, and the rest of the area must be zero.
package azure
