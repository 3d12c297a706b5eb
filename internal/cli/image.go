package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Work with node images and their signed measurements",
	}
	cmd.AddCommand(newImageVerifyCmd())
	return cmd
}

// defaultTrustedRoot is where the build keeps the development trusted root.
func defaultTrustedRoot() string {
	dir := os.Getenv("CONSTELLATION_SIGNING_DIR")
	if dir == "" {
		dir = "/var/cache/constellation/signing"
	}
	return filepath.Join(dir, "trusted-root.json")
}

func newImageVerifyCmd() *cobra.Command {
	var trustedRoot, imageDigest, variant string
	var allowDev bool
	cmd := &cobra.Command{
		Use:   "verify MEASUREMENTS_FILE",
		Short: "Verify the signed, logged measurements of a node image, offline",
		Long: "Verify MEASUREMENTS_FILE against its sigstore bundle (MEASUREMENTS_FILE" + signed.BundleSuffix + "): the\n" +
			"signature by a key of the trusted root, the transparency log entry's inclusion proof and the log's signed\n" +
			"checkpoint, that the bundle covers exactly this file, and that it names the image digest (by default from\n" +
			"node-image.json next to the file) and the variant. Nothing is fetched from the network. Images signed with\n" +
			"the development key of a local build are accepted only with --allow-dev-signed.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, res, err := verifyImageMeasurements(args[0], trustedRoot, imageDigest, variant, allowDev)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: verified offline\n", args[0])
			fmt.Fprintf(out, "  measurements sha256 %s, covered by the signed statement\n", res.MeasurementsSHA256)
			fmt.Fprintf(out, "  image %s, variant %s: named by the signed statement\n", res.Predicate.ImageDigest, res.Predicate.Variant)
			fmt.Fprintf(out, "  signature: valid, key %q\n", res.Key.Name)
			fmt.Fprintf(out, "  transparency log %s: entry %d included in the signed checkpoint of size %d\n", res.LogOrigin, res.LogIndex, res.CheckpointSize)
			warnDevSigned(cmd, res)
			return nil
		},
	}
	cmd.Flags().StringVar(&trustedRoot, "trusted-root", defaultTrustedRoot(), trustedRootUsage)
	cmd.Flags().StringVar(&imageDigest, "image-digest", "", "the image the measurements must belong to (default: the digest in node-image.json next to the file)")
	cmd.Flags().StringVar(&variant, "variant", attestation.MiniVTPM.Name, "the attestation variant the measurements must be for")
	cmd.Flags().BoolVar(&allowDev, "allow-dev-signed", false, allowDevUsage)
	return cmd
}

const (
	trustedRootUsage = "trusted root: signing keys and the transparency log's key and origin"
	allowDevUsage    = "accept measurements signed with the development key of a local build (an image you built yourself)"
)

// addSignatureFlags adds the flags that say which signed measurements a command accepts.
func addSignatureFlags(cmd *cobra.Command) {
	cmd.Flags().String("trusted-root", defaultTrustedRoot(), trustedRootUsage)
	cmd.Flags().Bool("allow-dev-signed", false, allowDevUsage)
}

// warnDevSigned warns when the verified measurements carry the development signature.
func warnDevSigned(cmd *cobra.Command, res *signed.Result) {
	if res.Key.Development {
		fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: the measurements are signed with the development key (%s) of a local build, not a release key; "+
			"use this image only if you built it yourself\n", res.Key.Name)
	}
}

// verifyImageMeasurements verifies a measurements file's bundle offline against the trusted root in
// rootPath, for imageDigest (or the digest of node-image.json next to the file when empty) and variant. It
// returns the measurements it verified: the caller must use these bytes, not read the file again.
func verifyImageMeasurements(measPath, rootPath, imageDigest, variant string, allowDev bool) ([]byte, *signed.Result, error) {
	rawRoot, err := os.ReadFile(rootPath)
	if err != nil {
		return nil, nil, badInput("reading the trusted root: %w (a local build writes it with 'make node-image'; or pass --trusted-root)", err)
	}
	root, err := signed.ParseRoot(rawRoot)
	if err != nil {
		return nil, nil, badInput("%s: %w", rootPath, err)
	}
	if imageDigest == "" {
		manifestPath := filepath.Join(filepath.Dir(measPath), "node-image.json")
		raw, err := os.ReadFile(manifestPath)
		if err != nil {
			return nil, nil, badInput("reading the node image manifest for the image digest: %w (or pass --image-digest)", err)
		}
		var m nodeimage.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, nil, badInput("%s: %w", manifestPath, err)
		}
		imageDigest = m.Digest
	}
	meas, err := os.ReadFile(measPath)
	if err != nil {
		return nil, nil, badInput("reading the measurements: %w", err)
	}
	bundle, err := os.ReadFile(measPath + signed.BundleSuffix)
	if err != nil {
		return nil, nil, badInput("reading the measurements' signature bundle: %w (build and sign the image with 'make node-image')", err)
	}
	res, err := signed.Verify(root, bundle, meas, signed.Predicate{ImageDigest: imageDigest, Variant: variant}, allowDev)
	if err != nil {
		return nil, nil, checkFailed(fmt.Errorf("%s: %w", measPath, err))
	}
	return meas, res, nil
}
