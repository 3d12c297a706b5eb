// Package snp verifies AMD SEV-SNP attestation reports and obtains them inside a guest.
//
// # Trust chain
//
// An SEV-SNP attestation report is signed (ECDSA P-384, SHA-384) by a key of the AMD secure processor of
// the machine that runs the guest:
//
//   - the VCEK (versioned chip endorsement key), unique to one chip and one TCB version, or
//   - the VLEK (versioned loaded endorsement key), which AMD provisions to a cloud provider.
//
// AMD certifies the VCEK with the ASK (AMD SEV key) and the VLEK with the ASVK (AMD SEV VLEK key); both are
// certified by the ARK (AMD root key) of the processor generation (Milan, Genoa, Turin). The ARK, ASK and
// ASVK of every generation are embedded in this package (directory amdroots, see [AMDRoots]). A verifier
// trusts a report only if its signing key chains to one of these embedded roots: certificates that travel
// with the evidence are candidates to check, never anchors. An ARK in the evidence must be the embedded
// one; an ASK or ASVK in the evidence must be signed by the embedded ARK.
//
// The VCEK of a report may travel with the evidence or, when the evidence carries none (GCP attaches no
// certificate table to its reports, and the gcp-sev-snp issuer sends the report alone), come from an offline
// cache ([VCEKCache],
// [VerifierOptions.VCEKCache]), keyed by product, chip ID (hardware ID) and reported TCB. A cached VCEK is a
// candidate like any other: it must chain to the embedded ASK and ARK and describe the report; being in
// the cache makes it trusted in no way, so a tampered entry fails verification. [VCEKCache.Fetch] fills the
// cache ahead of time from AMD's key distribution service or a compatible one
// ({base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=.., with fmcSPL and an 8-byte
// hardware ID for Turin, see [VCEKURL]); it writes a fetched certificate, atomically, only after it
// verified the report with it.
//
// Revocation is checked against certificate revocation lists that the caller supplies from an offline
// cache ([LoadCRLDir], [VerifierOptions.CRLs]); nothing is fetched from the network. A revoked certificate
// always fails verification. A missing or expired CRL fails the policy check unless the policy sets
// [Policy.AllowMissingCRL].
//
// # Three steps
//
// Verification follows three separate steps, each with its own input and output:
//
//  1. Parse: [ParseReport] checks the structure of the 1184-byte report (version, sizes, reserved fields,
//     signature encoding); [ParseCertTable] and [ParseCertificates] parse the certificates that accompany it
//     (the GUID table of an extended report or a PEM/DER bundle). Nothing parsed is trusted yet.
//  2. Verify: [Verifier.Verify] establishes which product the report comes from, verifies the certificate
//     chain to the embedded root of that product, the endorsement key's AMD extensions against the report
//     (TCB, chip ID, product), revocation, and the report signature. Only then does it return a
//     [VerifiedReport].
//  3. Validate: [Policy.Check] decides whether a verified report is acceptable: REPORT_DATA, launch
//     measurement, guest policy (debug, migration agent, SMT), VMPL, minimum TCB, ID-key and author-key
//     digests, report version, product, signing key and CRL availability; if the policy sets them, HOST_DATA
//     (compared in constant time) and the minimum SEV-SNP firmware version per product, which the current
//     (CURRENT_MAJOR/MINOR/BUILD) and the committed (COMMITTED_*) firmware of the report must meet, compared
//     numerically as major.minor.build; a report whose firmware leaves these fields zero fails a minimum.
//     An empty policy denies. Every violation is listed, and those of REPORT_DATA, HOST_DATA and the firmware
//     also match ErrReportData, ErrHostData and ErrFirmware.
//
// [Validate] runs all three steps. Package tdx names its steps, results, bindings and constructors the
// same way; the table in the documentation of package attestation lines them up.
//
// # Binding
//
// REPORT_DATA binds a report to the verifier's request. [ReportDataForAttestationKey] binds a vTPM
// attestation key (the quote of that key then binds the nonce); [ReportDataForNonce] binds a nonce and user
// data directly, with attestation.BindingDigest. Policy checks compare REPORT_DATA in constant time.
//
// # Issuing
//
// Inside a guest, [ConfigFSReporter] obtains reports through the Linux configfs-tsm interface
// (/sys/kernel/config/tsm/report) and [DeviceReporter] through /dev/sev-guest; [GuestReporter] chooses by
// what the guest's kernel offers, configfs-tsm first.
//
// # Variants
//
// The attestation variants built on these steps implement attestation.Issuer and attestation.Validator and
// carry the report in the SNP part of an evidence document:
//
//   - qemu-sev-snp (no vTPM): [Issuer] requests a report with REPORT_DATA = [ReportDataForNonce] of the
//     verifier's nonce and the caller's user data; [Validator] runs the three steps with that expected
//     REPORT_DATA and returns the user data. The launch measurement its policy expects is computed from the
//     firmware, the directly booted UKI and the machine definition by package snp/launch. The second half of
//     REPORT_DATA binds the cluster the node belongs to ([ReportDataForMember], [Issuer.JoinCluster]): zero
//     for a fresh node, set once at init or join, as the vTPM variants extend the cluster ID into PCR 15;
//     [NewValidator] accepts fresh nodes only, [NewMemberValidator] the members of one cluster, and
//     [NewPeerValidator] either. A node is named by HOST_DATA, which the host sets when it launches the guest
//     ([HostDataForNode], [NewNodeIssuer]): the evidence carries the name, and the validator accepts it only
//     if HOST_DATA binds it, as a vTPM node is named by the certificate of its attestation key.
//   - aws-sev-snp and gcp-sev-snp (report plus vTPM quote): [VTPMIssuer] requests a report with
//     REPORT_DATA = [ReportDataForAttestationKey] of the vTPM's attestation key and a quote of that key whose
//     qualifying data is attestation.BindingDigest of nonce and user data; [VTPMValidator] validates the report for the
//     key the evidence names, then verifies the quote with that key (signature, binding, PCRs 0-23, event
//     log) and checks the PCR values against a measurement policy.
//   - azure-sev-snp (report from Azure's paravisor plus vTPM quote): the guest cannot request reports; the
//     paravisor stored one at boot in vTPM NV index 0x01400001 as an HCL report (package azure), with
//     REPORT_DATA = hash of its runtime data, which names the vTPM attestation key ("HCLAkPub").
//     [AzureIssuer] reads that HCL report, obtains the VCEK chain from the instance metadata service and a
//     quote whose qualifying data is attestation.BindingDigest of nonce and user data. [AzureValidator]
//     runs [VerifyHCLReport] (parse the HCL report strictly; verify the SEV-SNP report to the embedded AMD
//     root; check the policy, Azure's ID key digests in Policy.IDKeyDigests included, with REPORT_DATA =
//     hash of the runtime data; only then take the attestation key from the runtime data) and then verifies
//     the quote with that key as for the other vTPM variants. The evidence carries no attestation key of its
//     own.
//
// A validator's policy must pass [Policy.ValidateForCluster]: no ReportData (the validator computes it for
// each request) and no AllowDebug. The CLI and the join service do not call these constructors themselves:
// package validators builds the validator of a cluster's configured variant from its attestation policy.
package snp
