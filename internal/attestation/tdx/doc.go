// Package tdx verifies and obtains Intel TDX quotes.
//
// A TDX quote is a TD report (the TD's measurements MRTD and RTMR0-3, its attributes, the TDX module's
// identity and 64 bytes of REPORT_DATA chosen by the TD) signed by the platform's quoting enclave (QE).
// Trust flows from Intel's root down to the TD:
//
//	Intel SGX Root CA (embedded in this package; never taken from a quote or from collateral)
//	├── root CA CRL: revokes the CAs below
//	├── Intel SGX PCK Platform CA or PCK Processor CA
//	│   ├── PCK CRL: revokes PCK certificates
//	│   └── PCK certificate (in the quote; carries the platform's FMSPC and SGX TCB)
//	│       └── QE report, signed by the PCK; its report data binds the attestation key
//	│           └── quote header and TD report, signed by the attestation key
//	└── Intel SGX TCB Signing certificate
//	    └── TCB info (the TCB levels of one FMSPC) and QE identity
//
// Verification takes three separate steps:
//
//  1. ParseQuote parses the raw quote (v4, or v5 with a TD report 1.0 or 1.5 body) strictly: every length
//     field must match, truncated or trailing bytes are errors.
//  2. Verify checks the cryptography against the embedded root and Intel's collateral from an offline
//     directory (LoadCollateral; the File constants document its layout) at a time the caller passes: the PCK
//     chain and its revocation, the collateral's signatures and expiry, the QE report and its binding of
//     the attestation key, the quote signature, the QE and TDX module identities, and the TCB status by
//     Intel's matching algorithm (component-wise, first matching level).
//  3. Policy.Check decides on the VerifiedQuote that Verify returns: accepted MRTDs (required; an empty
//     policy denies), RTMRs, MRSEAM, XFAM, TD attributes, minimum TEE TCB SVN, accepted TCB statuses
//     (UpToDate only by default), and the expected REPORT_DATA. A TD in debug mode is always refused, a MIGRATABLE TD unless the policy allows it, and a
//     TD without SEPT_VE_DISABLE unless a paravisor runs its guest (azure-tdx).
//
// Validate runs all three steps. Package snp names its steps, results, bindings and constructors the same way;
// the table in the documentation of package attestation lines them up.
//
// REPORT_DATA binds the verifier's nonce and the caller's user data, or a vTPM attestation key
// (ReportDataForNonce, ReportDataForAttestationKey). On the TD, ConfigfsTSM obtains quotes through the
// Linux configfs-tsm interface and Issuer checks them before they leave the node.
//
// For the qemu-tdx attestation variant (no vTPM), Issuer implements attestation.Issuer (the quote binds
// ReportDataForNonce of the verifier's nonce and the caller's user data and travels in the TDX part of an
// evidence document) and Validator implements attestation.Validator: it parses, verifies with the collateral
// at its clock's time, checks the policy (which must pass Policy.ValidateForClusterWithoutVTPM: without a
// vTPM, RTMR0-3 are the only measurement of the kernel, command line and initrd, so all four are required)
// with the expected REPORT_DATA, and returns the user data.
//
// For azure-tdx, the paravisor (HCL) of an Azure TDX VM obtains a TD report (TDREPORT_STRUCT, ParseTDReport)
// at boot with REPORT_DATA = hash of its runtime data, which names the vTPM attestation key, and stores both
// in vTPM NV index 0x01400001 (package azure). AzureIssuer reads it, obtains the quote of the TD report from
// the instance metadata service (TrimQuotePadding removes the zeros of the service's buffer), checks that the
// quote is the TD report's (TDReportStruct.MatchQuote) and adds a vTPM quote bound to the nonce.
// AzureValidator verifies the quote as for qemu-tdx, then BindHCLReport (TD report match, REPORTDATA binding,
// attestation key), the policy, and the vTPM quote with that key. VerifySignatures checks the parts of a
// quote that need no collateral (PCK chain, QE report, signatures). The CLI and
// the join service obtain their validators from package validators, which reads the collateral with
// ReadCollateralFiles and parses it with ParseCollateral.
package tdx
