package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
)

// This file holds the commands for raw hardware evidence: `attestation verify-report` and the SEV-SNP and
// TDX parts of `attestation show`.

type verifyReportFlags struct {
	snpReport, tdxQuote, policy, crlDir, vcekCache, collateral, certTable, at string
	certs                                                                     []string
}

func newAttestationVerifyReportCmd() *cobra.Command {
	var f verifyReportFlags
	cmd := &cobra.Command{
		Use:   "verify-report (--snp-report FILE [--certs FILE]... [--cert-table FILE] [--crl-dir DIR] [--vcek-cache DIR] | --tdx-quote FILE --collateral DIR) --policy FILE [--time TIME]",
		Short: "Verify a raw SEV-SNP report or TDX quote against a policy, offline",
		Long: "Verify a raw AMD SEV-SNP attestation report or Intel TDX quote offline, at --time (default now):\n" +
			"parse it, verify its certificate chain to the AMD or Intel root embedded in this binary and its\n" +
			"signature (with the CRLs or collateral given; an SEV-SNP report without its VCEK certificate takes the\n" +
			"VCEK from the offline cache --vcek-cache, which 'attestation fetch-vcek' fills, and verifies it like\n" +
			"one given), then check it against the policy file (JSON: the\n" +
			"fields of snp.Policy or tdx.Policy, including the expected reportData).\n" +
			"Exit code 0: verified and accepted. 1: it does not verify or violates the policy (every reason is\n" +
			"listed). 2: an input is unusable.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runVerifyReport(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.snpReport, "snp-report", "", "raw SEV-SNP attestation report (1184 bytes)")
	fl.StringArrayVar(&f.certs, "certs", nil, "SEV-SNP certificates, PEM or DER: VCEK or VLEK, optionally ASK/ASVK and ARK (repeatable)")
	fl.StringVar(&f.certTable, "cert-table", "", "SEV-SNP certificate table of an extended report (configfs-tsm auxblob)")
	fl.StringVar(&f.crlDir, "crl-dir", "", "directory of AMD CRLs, <product>[-<suffix>].crl, DER or PEM")
	fl.StringVar(&f.vcekCache, "vcek-cache", "", "offline VCEK cache (see 'attestation fetch-vcek'), for a report whose VCEK is not given")
	fl.StringVar(&f.tdxQuote, "tdx-quote", "", "raw TDX quote (v4 or v5, with its PCK certificate chain)")
	fl.StringVar(&f.collateral, "collateral", "", "directory of Intel collateral (tcb_info_<fmspc>.json, qe_identity.json, tcb_signing_chain.pem, root_ca.crl, pck_*.crl)")
	fl.StringVar(&f.policy, "policy", "", "policy file, JSON (required)")
	fl.StringVar(&f.at, "time", "", "verification time, RFC 3339 or YYYY-MM-DD (default now)")
	_ = cmd.MarkFlagRequired("policy")
	return cmd
}

func runVerifyReport(cmd *cobra.Command, f verifyReportFlags) error {
	now, err := timeFlag(f.at)
	if err != nil {
		return err
	}
	switch {
	case f.snpReport != "" && f.tdxQuote != "":
		return badInput("give either --snp-report or --tdx-quote, not both")
	case f.snpReport != "":
		if f.collateral != "" {
			return badInput("--collateral is for TDX quotes; an SEV-SNP report takes --certs, --cert-table, --crl-dir and --vcek-cache")
		}
		return verifySNPReport(cmd.OutOrStdout(), f, now)
	case f.tdxQuote != "":
		if len(f.certs) > 0 || f.certTable != "" || f.crlDir != "" || f.vcekCache != "" {
			return badInput("--certs, --cert-table, --crl-dir and --vcek-cache are for SEV-SNP reports; a TDX quote carries its PCK chain and takes --collateral")
		}
		return verifyTDXQuote(cmd.OutOrStdout(), f, now)
	}
	return badInput("nothing to verify: give --snp-report FILE or --tdx-quote FILE")
}

// timeFlag returns the time a --time flag names, or now if it is empty.
func timeFlag(at string) (time.Time, error) {
	if at == "" {
		return time.Now(), nil
	}
	t, err := parseTime(at)
	if err != nil {
		return time.Time{}, badInput("--time: %w", err)
	}
	return t, nil
}

func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither RFC 3339 (2025-06-01T12:00:00Z) nor a date (2025-06-01)", s)
}

// verifySNPReport parses every input (exit 2 if one is unusable), then verifies and checks the policy
// (exit 1 with the reasons).
func verifySNPReport(w io.Writer, f verifyReportFlags, now time.Time) error {
	rawPolicy, err := readFile(f.policy, "policy")
	if err != nil {
		return err
	}
	policy, err := snp.ParsePolicy(rawPolicy)
	if err != nil {
		return badInput("%s: %w", f.policy, err)
	}
	raw, err := readFile(f.snpReport, "SEV-SNP report")
	if err != nil {
		return err
	}
	report, err := snp.ParseReport(raw)
	if err != nil {
		return badInput("%s: %w", f.snpReport, err)
	}
	certs := &snp.Certificates{}
	for _, path := range f.certs {
		data, err := readFile(path, "certificates")
		if err != nil {
			return err
		}
		c, err := snp.ParseCertificates(data)
		if err != nil {
			return badInput("%s: %w", path, err)
		}
		if err := certs.Merge(c); err != nil {
			return badInput("%s: %w", path, err)
		}
	}
	if f.certTable != "" {
		data, err := readFile(f.certTable, "certificate table")
		if err != nil {
			return err
		}
		c, err := snp.ParseCertTable(data)
		if err != nil {
			return badInput("%s: %w", f.certTable, err)
		}
		if err := certs.Merge(c); err != nil {
			return badInput("%s: %w", f.certTable, err)
		}
	}
	if *certs == (snp.Certificates{}) && f.vcekCache == "" {
		return badInput("no certificates: the report is signed by a %s; pass its certificate with --certs (PEM or DER, as served by AMD's key distribution service) or --cert-table, or the offline VCEK cache with --vcek-cache", report.SigningKey)
	}
	opts := snp.VerifierOptions{Now: func() time.Time { return now }}
	if f.vcekCache != "" {
		if opts.VCEKCache, err = snp.LoadVCEKCache(f.vcekCache); err != nil {
			return badInput("--vcek-cache: %w", err)
		}
	}
	if f.crlDir != "" {
		if opts.CRLs, err = snp.LoadCRLDir(f.crlDir); err != nil {
			return badInput("%s: %w", f.crlDir, err)
		}
	}
	verifier, err := snp.NewVerifier(opts)
	if err != nil {
		return badInput("%s: the CRL cache is unusable: %w", f.crlDir, err)
	}

	verified, err := verifier.Verify(report, certs)
	if err != nil {
		return checkFailed(fmt.Errorf("SEV-SNP report does not verify: %w", err))
	}
	if err := policy.Check(verified); err != nil {
		var pe *snp.PolicyError
		if errors.As(err, &pe) {
			return checkFailed(fmt.Errorf("SEV-SNP report verifies, but violates the policy %s:%s", f.policy, bulletList(pe.Violations)))
		}
		return checkFailed(fmt.Errorf("SEV-SNP report verifies, but violates the policy %s: %w", f.policy, err))
	}
	r := verified.Report
	fmt.Fprintf(w, "SEV-SNP report verified and accepted at %s\n", now.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  Product:      %s, signed by the %s (%q), chain to the embedded AMD %s root\n", verified.Product, r.SigningKey, verified.EndorsementKey.Subject.CommonName, verified.Product)
	if verified.VCEKFromCache {
		fmt.Fprintf(w, "  VCEK:         from the offline cache %s\n", f.vcekCache)
	}
	fmt.Fprintf(w, "  Revocation:   %s\n", revocationText(verified))
	fmt.Fprintf(w, "  Measurement:  %x\n", r.Measurement[:])
	fmt.Fprintf(w, "  Reported TCB: %s\n", verified.ReportedTCB)
	fmt.Fprintf(w, "  Firmware:     %s (committed %s)\n", r.CurrentFirmware(), r.CommittedFirmware())
	if policy.HostData != nil {
		fmt.Fprintf(w, "  HOST_DATA:    %x (as the policy requires)\n", r.HostData[:])
	}
	fmt.Fprintf(w, "  REPORT_DATA:  %x\n", r.ReportData[:])
	var allowed []string
	for _, a := range []struct {
		on   bool
		what string
	}{{policy.AllowDebug && r.Policy.Debug(), "a debuggable guest"}, {policy.AllowSMT && r.PlatformInfo.SMTEnabled(), "SMT"}, {policy.AllowMigrationAgent && r.Policy.MigrateMA(), "a migration agent"}, {policy.AllowMissingCRL && verified.Revocation != snp.CRLChecked, "unchecked revocation"}} {
		if a.on {
			allowed = append(allowed, a.what)
		}
	}
	if len(allowed) > 0 {
		fmt.Fprintf(w, "  Accepted only because the policy allows: %s\n", strings.Join(allowed, ", "))
	}
	return nil
}

func revocationText(v *snp.VerifiedReport) string {
	if v.Revocation == snp.CRLChecked {
		return "checked against a current CRL, not revoked"
	}
	if v.RevocationDetail != "" {
		return v.RevocationDetail
	}
	return v.Revocation.String()
}

// verifyTDXQuote parses every input (exit 2 if one is unusable), then verifies and checks the policy
// (exit 1 with the reasons).
func verifyTDXQuote(w io.Writer, f verifyReportFlags, now time.Time) error {
	rawPolicy, err := readFile(f.policy, "policy")
	if err != nil {
		return err
	}
	policy, err := tdx.ParsePolicy(rawPolicy)
	if err != nil {
		return badInput("%s: %w", f.policy, err)
	}
	if len(policy.ReportData) == 0 {
		return badInput("%s: the policy has no reportData; set the REPORT_DATA the quote must carry (128 hex digits), or the quote is bound to nothing", f.policy)
	}
	raw, err := readFile(f.tdxQuote, "TDX quote")
	if err != nil {
		return err
	}
	quote, err := tdx.ParseQuote(raw)
	if err != nil {
		return badInput("%s: %w", f.tdxQuote, err)
	}
	if f.collateral == "" {
		return badInput("no --collateral directory: a TDX quote is verified with Intel's collateral (TCB info, QE identity, CRLs)")
	}
	collateral, err := tdx.LoadCollateral(f.collateral)
	if err != nil {
		return badInput("%s: %w", f.collateral, err)
	}

	verified, err := tdx.Verify(quote, collateral, now)
	if err != nil {
		return checkFailed(fmt.Errorf("TDX quote does not verify: %w", err))
	}
	if err := policy.Check(verified); err != nil {
		var pe *tdx.PolicyError
		if errors.As(err, &pe) {
			return checkFailed(fmt.Errorf("TDX quote verifies, but violates the policy %s:%s", f.policy, bulletList(pe.Violations)))
		}
		return checkFailed(fmt.Errorf("TDX quote verifies, but violates the policy %s: %w", f.policy, err))
	}
	b := &quote.Body
	fmt.Fprintf(w, "TDX quote verified and accepted at %s\n", now.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  Platform:     FMSPC %x, PCK chain to the embedded Intel SGX Root CA\n", verified.PCK.FMSPC)
	fmt.Fprintf(w, "  TCB status:   %s (platform %s, QE %s)\n", verified.TCB.Status, verified.TCB.Platform, verified.TCB.QE)
	fmt.Fprintf(w, "  MRTD:         %x\n", b.MRTD[:])
	fmt.Fprintf(w, "  MRSEAM:       %x\n", b.MRSEAM[:])
	fmt.Fprintf(w, "  REPORT_DATA:  %x\n", b.ReportData[:])
	return nil
}

func bulletList(items []string) string {
	var b strings.Builder
	for _, it := range items {
		b.WriteString("\n  - ")
		b.WriteString(it)
	}
	return b.String()
}

// showEvidence prints an evidence document, a raw SEV-SNP report or a raw TDX quote, whichever raw is.
func showEvidence(w io.Writer, path string, raw []byte) error {
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		doc, err := attestation.ParseDocument(raw)
		if err != nil {
			return badInput("%s: %w", path, err)
		}
		showDocument(w, doc)
		return nil
	}
	if len(raw) == snp.ReportSize {
		r, err := snp.ParseReport(raw)
		if err != nil {
			return badInput("%s: a file of %d bytes is an SEV-SNP report, but: %w", path, len(raw), err)
		}
		fmt.Fprintf(w, "SEV-SNP attestation report (NOT verified; use 'constellation attestation verify-report')\n")
		showSNPReport(w, r)
		return nil
	}
	q, err := tdx.ParseQuote(raw)
	if err != nil {
		return badInput("%s: neither an evidence document (JSON), an SEV-SNP report (%d bytes) nor a TDX quote: %w", path, snp.ReportSize, err)
	}
	fmt.Fprintf(w, "TDX quote (NOT verified; use 'constellation attestation verify-report')\n")
	showTDXQuote(w, q)
	return nil
}

// showHardware prints the SEV-SNP or TDX part of a document, and the attestation key of a TPM part that a
// hardware report binds. Nothing is verified.
func showHardware(w io.Writer, doc *attestation.Document) {
	if doc.TPM != nil && len(doc.TPM.AKCert) == 0 && len(doc.TPM.AKPublic) > 0 {
		if key, err := x509.ParsePKIXPublicKey(doc.TPM.AKPublic); err != nil {
			fmt.Fprintf(w, "Attestation key: unparsable: %v\n", err)
		} else {
			fmt.Fprintf(w, "Attestation key (bound by the hardware report): %T, %d bytes DER\n", key, len(doc.TPM.AKPublic))
		}
	}
	if s := doc.SNP; s != nil {
		fmt.Fprintf(w, "SEV-SNP report\n")
		if r, err := snp.ParseReport(s.Report); err != nil {
			fmt.Fprintf(w, "  unparsable: %v\n", err)
		} else {
			showSNPReport(w, r)
		}
		fmt.Fprintf(w, "  Certificates: table %d bytes, chain %d bytes\n", len(s.CertTable), len(s.CertChain))
	}
	if t := doc.TDX; t != nil {
		fmt.Fprintf(w, "TDX quote\n")
		if q, err := tdx.ParseQuote(t.Quote); err != nil {
			fmt.Fprintf(w, "  unparsable: %v\n", err)
		} else {
			showTDXQuote(w, q)
		}
	}
}

func showSNPReport(w io.Writer, r *snp.Report) {
	line := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-18s "+format+"\n", append([]any{name + ":"}, args...)...)
	}
	product, perr := r.CPUProduct()
	layout := product
	if perr != nil {
		layout = snp.Milan // Milan and Genoa share the TCB layout; Turin reports are version 3 or later
		line("Product", "unknown: version %d reports carry no CPUID; the VCEK names the product (TCBs below in the Milan/Genoa layout)", r.Version)
	} else {
		line("Product", "%s (CPUID family 0x%02x model 0x%02x stepping %d)", product, r.CPUIDFamily, r.CPUIDModel, r.CPUIDStepping)
	}
	line("Version", "%d", r.Version)
	line("Guest policy", "0x%x: debug %s, migration agent %s, SMT %s, minimum ABI %d.%d", uint64(r.Policy), allowed(r.Policy.Debug()), allowed(r.Policy.MigrateMA()), allowed(r.Policy.SMT()), r.Policy.ABIMajor(), r.Policy.ABIMinor())
	line("Guest SVN", "%d", r.GuestSVN)
	line("VMPL", "%d", r.VMPL)
	line("Signed by", "%s", r.SigningKey)
	line("Measurement", "%x", r.Measurement[:])
	line("REPORT_DATA", "%x", r.ReportData[:])
	line("Host data", "%s", hexOrNone(trimZero(r.HostData[:])))
	line("ID key digest", "%s", hexOrNone(trimZero(r.IDKeyDigest[:])))
	line("Author key digest", "%s", hexOrNone(trimZero(r.AuthorKeyDigest[:])))
	line("Family ID", "%x", r.FamilyID[:])
	line("Image ID", "%x", r.ImageID[:])
	line("Report ID", "%x", r.ReportID[:])
	if r.MaskChipID {
		line("Chip ID", "masked by the host")
	} else {
		line("Chip ID", "%x", r.ChipID[:])
	}
	line("Platform", "SMT %s, TSME %s", enabled(r.PlatformInfo.SMTEnabled()), enabled(r.PlatformInfo.TSMEEnabled()))
	for _, t := range []struct {
		name string
		raw  snp.RawTCB
	}{{"Current TCB", r.CurrentTCB}, {"Reported TCB", r.ReportedTCB}, {"Committed TCB", r.CommittedTCB}, {"Launch TCB", r.LaunchTCB}} {
		if d, err := snp.DecodeTCB(layout, t.raw); err == nil {
			line(t.name, "%s (0x%016x)", d, uint64(t.raw))
		}
	}
	line("Firmware", "current %s, committed %s (major.minor.build)", r.CurrentFirmware(), r.CommittedFirmware())
}

func showTDXQuote(w io.Writer, q *tdx.Quote) {
	line := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-15s "+format+"\n", append([]any{name + ":"}, args...)...)
	}
	b := &q.Body
	body := "TD report 1.0"
	if q.BodyType == tdx.BodyTypeTDReport15 {
		body = "TD report 1.5"
	}
	line("Version", "%d (%s)", q.Header.Version, body)
	line("QE vendor", "%x", q.Header.QEVendorID[:])
	line("MRTD", "%x", b.MRTD[:])
	for i := range b.RTMR {
		line(fmt.Sprintf("RTMR%d", i), "%x", b.RTMR[i][:])
	}
	line("MRSEAM", "%x", b.MRSEAM[:])
	line("MRSIGNERSEAM", "%s", hexOrNone(trimZero(b.MRSignerSEAM[:])))
	line("TD attributes", "%x (debug %s)", b.TDAttributes[:], enabled(b.Debug()))
	line("XFAM", "%x", b.XFAM[:])
	line("TEE_TCB_SVN", "%x", b.TEETCBSVN[:])
	line("MRCONFIGID", "%s", hexOrNone(trimZero(b.MRConfigID[:])))
	line("MROWNER", "%s", hexOrNone(trimZero(b.MROwner[:])))
	line("MROWNERCONFIG", "%s", hexOrNone(trimZero(b.MROwnerConfig[:])))
	line("REPORT_DATA", "%x", b.ReportData[:])
	cert, info, err := q.UnverifiedPCK()
	switch {
	case cert == nil:
		line("PCK", "unparsable: %v", err)
	case err != nil:
		line("PCK", "%q, issued by %q; SGX extension unparsable: %v", cert.Subject.CommonName, cert.Issuer.CommonName, err)
	default:
		line("PCK", "%q, issued by %q", cert.Subject.CommonName, cert.Issuer.CommonName)
		line("FMSPC", "%x", info.FMSPC[:])
		line("PCE ID", "%x, PCESVN %d", info.PCEID[:], info.PCESVN)
		line("SGX TCB", "%s", hex.EncodeToString(info.TCBComponents[:]))
	}
}

func allowed(b bool) string {
	if b {
		return "ALLOWED"
	}
	return "not allowed"
}

func enabled(b bool) string {
	if b {
		return "ON"
	}
	return "off"
}

// trimZero returns nil for an all-zero field, so that it prints as "(none)".
func trimZero(b []byte) []byte {
	for _, x := range b {
		if x != 0 {
			return b
		}
	}
	return nil
}
