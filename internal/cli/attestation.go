package cli

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/config"
)

// maxInputFile bounds the files the attestation commands read.
const maxInputFile = 16 << 20

func newAttestationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attestation",
		Short: "Inspect and verify attestation evidence",
	}
	cmd.AddCommand(newAttestationShowCmd(), newAttestationVerifyCmd())
	cmd.AddCommand(newAttestationVerifyReportCmd(), newAttestationFetchVCEKCmd())
	return cmd
}

func newAttestationShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show FILE",
		Short: "Print evidence, a raw SEV-SNP report or a raw TDX quote in readable form (without verifying it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readFile(args[0], "evidence")
			if err != nil {
				return err
			}
			return showEvidence(cmd.OutOrStdout(), args[0], raw)
		},
	}
}

type verifyFlags struct {
	evidence, measurements, ca, nonce, userData, config string
}

func newAttestationVerifyCmd() *cobra.Command {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify --evidence FILE (--measurements FILE --ca FILE | --config FILE) --nonce HEX [--user-data HEX]",
		Short: "Verify evidence against expected measurements, a trusted CA and a nonce",
		Long: "Verify evidence offline. Exit code 0: the evidence holds. 1: it does not (every mismatch is listed).\n" +
			"2: an input is unusable.\n\n" +
			"mini-vtpm evidence is checked against --measurements and the attestation-key CA of --ca. Evidence of\n" +
			"the variants on confidential hardware needs their SEV-SNP or TDX policy: pass --config, a\n" +
			"constellation-conf.yaml whose attestation section (variant, measurements, snp or tdx) is the policy.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runVerify(cmd, f) },
	}
	cmd.Flags().StringVar(&f.evidence, "evidence", "", "evidence document (required)")
	cmd.Flags().StringVar(&f.measurements, "measurements", "", "expected measurements, JSON or YAML (required)")
	cmd.Flags().StringVar(&f.ca, "ca", "", "PEM certificate(s) of the attestation key CA to trust (required)")
	cmd.Flags().StringVar(&f.nonce, "nonce", "", "the nonce the evidence must be bound to, hex (required)")
	cmd.Flags().StringVar(&f.userData, "user-data", "", "the user data the evidence must be bound to, hex")
	cmd.Flags().StringVar(&f.config, "config", "", "configuration file whose attestation section is the policy (instead of --measurements)")
	for _, name := range []string{"evidence", "nonce"} {
		_ = cmd.MarkFlagRequired(name)
	}
	cmd.MarkFlagsOneRequired("measurements", "config")
	cmd.MarkFlagsMutuallyExclusive("measurements", "config")
	return cmd
}

func runVerify(cmd *cobra.Command, f verifyFlags) error {
	nonce, err := hex.DecodeString(f.nonce)
	if err != nil {
		return badInput("--nonce is not hex: %w", err)
	}
	if err := attestation.CheckNonce(nonce); err != nil {
		return badInput("--nonce: %w", err)
	}
	var wantUserData []byte
	if cmd.Flags().Changed("user-data") {
		if wantUserData, err = hex.DecodeString(f.userData); err != nil {
			return badInput("--user-data is not hex: %w", err)
		}
	}
	raw, err := readFile(f.evidence, "evidence")
	if err != nil {
		return err
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		return badInput("%s: %w", f.evidence, err)
	}
	policy, err := verifyPolicy(f, doc.Variant)
	if err != nil {
		return err
	}
	if policy.Variant != doc.Variant {
		return checkFailed(fmt.Errorf("evidence does not verify: it is %s evidence, the configuration expects %s", doc.Variant, policy.Variant))
	}
	validator, err := validators.New(policy, validators.Options{Log: logger(cmd)})
	if err != nil {
		return badInput("%w", err)
	}
	printVariantWarning(cmd, policy.Variant)
	userData, err := validator.Validate(context.Background(), raw, nonce)
	if err != nil {
		return checkFailed(fmt.Errorf("evidence does not verify: %w", err))
	}
	if wantUserData != nil && subtle.ConstantTimeCompare(userData, wantUserData) != 1 {
		return checkFailed(fmt.Errorf("evidence does not verify: it is bound to user data %x, not %x", userData, wantUserData))
	}
	if len(policy.Measurements) > 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "Evidence verified: variant %s, %d PCRs match the policy, bound to the nonce", doc.Variant, len(policy.Measurements))
	} else {
		fmt.Fprintf(cmd.OutOrStdout(), "Evidence verified: variant %s, the hardware report matches the policy, bound to the nonce", doc.Variant)
	}
	if wantUserData != nil {
		fmt.Fprint(cmd.OutOrStdout(), " and the user data")
	}
	fmt.Fprintln(cmd.OutOrStdout(), ".")
	return nil
}

// verifyPolicy is the policy `attestation verify` checks evidence of variant against: the configuration's
// attestation section (--config), or the measurements of --measurements with the variant of the evidence,
// whose other parts must then not be needed.
func verifyPolicy(f verifyFlags, variant string) (*validators.Policy, error) {
	var roots []*x509.Certificate
	if f.ca != "" {
		var err error
		if roots, err = readCertificates(f.ca); err != nil {
			return nil, err
		}
	}
	if f.config != "" {
		a, err := config.LoadAttestation(f.config)
		if err != nil {
			return nil, badInput("%w", err)
		}
		if a.Variant != attestation.MiniVTPM.Name && roots != nil {
			return nil, badInput("--ca: %s trusts the attestation key only through the hardware report; remove --ca", a.Variant)
		}
		p, err := a.Policy(roots)
		if err != nil {
			return nil, badInput("%s: %w", f.config, err)
		}
		return p, nil
	}
	rawPolicy, err := readFile(f.measurements, "measurements")
	if err != nil {
		return nil, err
	}
	pcrs, err := measurements.Parse(rawPolicy)
	if err != nil {
		return nil, badInput("%s: %w", f.measurements, err)
	}
	if v, err := attestation.VariantByName(variant); err == nil && v.Hardware != attestation.NoHardware {
		return nil, badInput("%s evidence needs its %s policy besides the measurements; pass --config with a configuration whose attestation section holds it", v, v.Hardware)
	}
	if roots == nil {
		return nil, badInput("--ca: no attestation-key CA certificate given; %s evidence is trusted only through it", variant)
	}
	return &validators.Policy{Variant: variant, Measurements: pcrs, AKRoots: roots}, nil
}

// printVariantWarning writes the variant's warning (what its evidence cannot prove) to stderr, if it has one,
// whatever the verification's outcome.
func printVariantWarning(cmd *cobra.Command, variant string) {
	if v, err := attestation.VariantByName(variant); err == nil && v.Warning() != "" {
		fmt.Fprintln(cmd.ErrOrStderr(), v.Warning())
	}
}

func readFile(path, what string) ([]byte, error) {
	if path == "" {
		return nil, badInput("no %s file given", what)
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, badInput("reading %s: %w", what, err)
	}
	defer fh.Close()
	raw, err := io.ReadAll(io.LimitReader(fh, maxInputFile+1))
	if err != nil {
		return nil, badInput("reading %s %s: %w", what, path, err)
	}
	if len(raw) > maxInputFile {
		return nil, badInput("%s file %s is larger than %d bytes", what, path, maxInputFile)
	}
	return raw, nil
}

func readCertificates(path string) ([]*x509.Certificate, error) {
	raw, err := readFile(path, "CA certificate")
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, raw = pem.Decode(raw)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, badInput("%s: PEM block of type %q, want CERTIFICATE", path, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, badInput("%s: %w", path, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, badInput("%s holds no PEM certificate", path)
	}
	if strings.TrimSpace(string(raw)) != "" {
		return nil, badInput("%s: unexpected data after the last PEM certificate", path)
	}
	return certs, nil
}

// showDocument prints a document for humans. Nothing in it is verified.
func showDocument(w io.Writer, doc *attestation.Document) {
	fmt.Fprintf(w, "Evidence (NOT verified; use 'constellation attestation verify')\n")
	fmt.Fprintf(w, "  Version:    %d\n", doc.Version)
	desc, warning := "", ""
	if v, err := attestation.VariantByName(doc.Variant); err == nil {
		desc, warning = " ("+v.Description+")", v.Warning()
	}
	fmt.Fprintf(w, "  Variant:    %s%s\n", doc.Variant, desc)
	if warning != "" {
		fmt.Fprintf(w, "  %s\n", warning)
	}
	fmt.Fprintf(w, "  User data:  %s\n", hexOrNone(doc.UserData))
	showHardware(w, doc)
	if doc.TPM == nil {
		return
	}
	// Without a certificate, a hardware report binds the attestation key (shown above).
	if len(doc.TPM.AKCert) > 0 {
		fmt.Fprintf(w, "Attestation key certificate\n")
		if cert, err := x509.ParseCertificate(doc.TPM.AKCert); err != nil {
			fmt.Fprintf(w, "  unparsable: %v\n", err)
		} else {
			fmt.Fprintf(w, "  Subject:    %s\n", cert.Subject)
			fmt.Fprintf(w, "  Issuer:     %s\n", cert.Issuer)
			fmt.Fprintf(w, "  Valid:      %s to %s\n", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "  Key:        %s\n", cert.PublicKeyAlgorithm)
		}
	}
	for i, q := range doc.TPM.Quotes {
		fmt.Fprintf(w, "Quote %d\n", i)
		info, err := vtpm.ParseQuote(q.Quote)
		if err != nil {
			fmt.Fprintf(w, "  unparsable: %v\n", err)
		} else {
			for _, sel := range info.Selection {
				fmt.Fprintf(w, "  Selection:  hash %#04x, PCRs %v\n", sel.Hash, sel.PCRs)
			}
			fmt.Fprintf(w, "  Extra data: %x\n", info.ExtraData)
			fmt.Fprintf(w, "  Clock:      %d ms, resets %d, restarts %d\n", info.Clock, info.ResetCount, info.RestartCount)
		}
		fmt.Fprintf(w, "  PCRs (SHA-256):\n")
		for idx := range uint32(measurements.NumPCRs) {
			if v, ok := q.PCRs[idx]; ok {
				fmt.Fprintf(w, "    %2d: %x\n", idx, v)
			}
		}
	}
	if len(doc.TPM.EventLog) == 0 {
		fmt.Fprintf(w, "Event log: none\n")
		return
	}
	events, err := eventlog.Parse(doc.TPM.EventLog)
	if err != nil {
		fmt.Fprintf(w, "Event log: unparsable: %v\n", err)
		return
	}
	fmt.Fprintf(w, "Event log (%d events; only digests replayed against a verified quote count, and of an event's type\n"+
		"and data only what its digest binds: the rest is marked unverified)\n", len(events))
	if v, err := attestation.VariantByName(doc.Variant); err != nil || !v.VTPM {
		fmt.Fprintf(w, "  the variant defines no measurement scheme: no event's type or data is bound\n")
	} else if err := eventlog.CheckData(events, vtpm.Scheme(v)); err != nil {
		// Binding stays Unbound for every event: nothing of the log's text is shown as bound.
		fmt.Fprintf(w, "  ALTERED: %v\n", err)
	}
	for _, e := range events {
		fmt.Fprintf(w, "  #%-3d PCR %2d sha256:%x %s\n", e.Seq, e.PCR, e.Digest[:8], e.Explain())
	}
}

func hexOrNone(b []byte) string {
	if len(b) == 0 {
		return "(none)"
	}
	return hex.EncodeToString(b)
}
