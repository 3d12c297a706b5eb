package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Work with node images and their signed measurements",
	}
	cmd.AddCommand(newImageVerifyCmd(), newImageLogCheckCmd())
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

// releaseRoot is the root of releases this binary embeds (a variable so that tests can put a root of their
// own in its place).
var releaseRoot = signed.ReleaseRoot

func newImageVerifyCmd() *cobra.Command {
	var imageDigest, variant string
	cmd := &cobra.Command{
		Use:   "verify MEASUREMENTS_FILE",
		Short: "Verify the signed, logged measurements of a node image, offline",
		Long: "Verify MEASUREMENTS_FILE against its sigstore bundle (MEASUREMENTS_FILE" + signed.BundleSuffix + "): the\n" +
			"signature by a trusted key, the transparency log entry's inclusion proof and the log's signed checkpoint,\n" +
			"that the bundle covers exactly this file, and that it names the image digest and the variant (by default\n" +
			"from the manifest next to the file: node-image.json for measurements.json, node-image-uefi.json for\n" +
			"measurements-uefi.json). Nothing is fetched from the network.\n\n" + trustText,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, res, err := verifyImageMeasurements(cmd, args[0], imageDigest, variant)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: verified offline\n", args[0])
			fmt.Fprintf(out, "  measurements sha256 %s, covered by the signed statement\n", res.MeasurementsSHA256)
			fmt.Fprintf(out, "  image %s, variant %s: named by the signed statement\n", res.Predicate.ImageDigest, res.Predicate.Variant)
			fmt.Fprintf(out, "  versions: %s\n", signedVersions(res.Predicate))
			fmt.Fprintf(out, "  signature: valid, %s\n", signedBy(res))
			fmt.Fprintf(out, "  transparency log %s: entry %d included in the signed checkpoint of size %d\n", res.LogOrigin, res.LogIndex, res.CheckpointSize)
			warnDevSigned(cmd, res)
			return nil
		},
	}
	addSignatureFlags(cmd)
	cmd.Flags().StringVar(&imageDigest, "image-digest", "", "the image the measurements must belong to (default: the digest in the manifest next to the file)")
	cmd.Flags().StringVar(&variant, "variant", "", "the attestation variant the measurements must be for (default: the file's: "+variantDefaults()+")")
	return cmd
}

func variantDefaults() string {
	var parts []string
	for _, m := range nodeimage.MeasuredImages {
		parts = append(parts, m.Measurements+" "+m.Variant)
	}
	return strings.Join(parts, ", ")
}

const (
	trustedRootUsage = "trusted root of local builds: signing keys and the transparency log's key and origin (default: the signing directory's; its keys count as development keys)"
	allowDevUsage    = "accept measurements signed with the development key of a local build (an image you built yourself)"
	trustText        = "Trusted are the release key and the release log embedded in this binary, and the development root of\n" +
		"local builds (--trusted-root; by default $CONSTELLATION_SIGNING_DIR/trusted-root.json, whose keys are always\n" +
		"development keys). Images signed with a development key are accepted only with --allow-dev-signed, and shown\n" +
		"as development builds."
)

// addSignatureFlags adds the flags that say which signed measurements a command accepts.
func addSignatureFlags(cmd *cobra.Command) {
	cmd.Flags().String("trusted-root", defaultTrustedRoot(), trustedRootUsage)
	cmd.Flags().Bool("allow-dev-signed", false, allowDevUsage)
}

// trustedRoots returns the roots a command trusts: the embedded release root, and the development root of
// --trusted-root. A root read from the default place (the signing directory a local build writes) has only
// development keys, whatever the file says; without such a file only releases verify.
func trustedRoots(cmd *cobra.Command) ([]signed.Root, error) {
	release, err := releaseRoot()
	if err != nil {
		return nil, failed(fmt.Errorf("this binary's embedded release root: %w", err))
	}
	roots := []signed.Root{release}
	path, _ := cmd.Flags().GetString("trusted-root")
	explicit := cmd.Flags().Changed("trusted-root")
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !explicit:
		return roots, nil
	case err != nil:
		return nil, badInput("reading the trusted root: %w", err)
	}
	dev, err := signed.ParseRoot(raw)
	if err != nil {
		return nil, badInput("%s: %w", path, err)
	}
	if !explicit {
		dev = dev.AsDevelopment()
	}
	return append(roots, dev), nil
}

// signedBy says which key signed, marking a development key.
func signedBy(res *signed.Result) string {
	if res.Key.Development {
		return fmt.Sprintf("DEVELOPMENT build, key %q (not a release)", res.Key.Name)
	}
	return fmt.Sprintf("release key %q", res.Key.Name)
}

// warnDevSigned warns, once per command, when the verified measurements carry a development signature.
func warnDevSigned(cmd *cobra.Command, res *signed.Result) {
	if !res.Key.Development || cmd.Annotations["dev-signed-warned"] != "" {
		return
	}
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations["dev-signed-warned"] = "yes"
	fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: the measurements are signed with the development key (%s) of a local build, not a release key; "+
		"use this image only if you built it yourself\n", res.Key.Name)
}

// verifyImageMeasurements verifies a measurements file's bundle offline against the roots the command
// trusts, for imageDigest and variant (when empty: the digest of the manifest next to the file, and the
// file's variant), accepting a development signature only with --allow-dev-signed. It returns the
// measurements it verified: the caller must use these bytes, not read the file again.
func verifyImageMeasurements(cmd *cobra.Command, measPath, imageDigest, variant string) ([]byte, *signed.Result, error) {
	allowDev, _ := cmd.Flags().GetBool("allow-dev-signed")
	return verifyMeasurementsFile(cmd, measPath, imageDigest, variant, allowDev)
}

// verifyMeasurementsFile is verifyImageMeasurements with the development rule given.
func verifyMeasurementsFile(cmd *cobra.Command, measPath, imageDigest, variant string, allowDev bool) ([]byte, *signed.Result, error) {
	roots, err := trustedRoots(cmd)
	if err != nil {
		return nil, nil, err
	}
	img, known := nodeimage.MeasuredImageFor(measPath)
	if variant == "" {
		if !known {
			return nil, nil, badInput("%s is none of the measurements files of a node image (%s); pass --variant", measPath, variantDefaults())
		}
		variant = img.Variant
	}
	if imageDigest == "" {
		if !known {
			return nil, nil, badInput("%s is none of the measurements files of a node image; pass --image-digest", measPath)
		}
		if imageDigest, err = nodeimage.ManifestDigest(filepath.Join(filepath.Dir(measPath), img.Manifest)); err != nil {
			return nil, nil, badInput("the image digest: %w (or pass --image-digest)", err)
		}
	}
	meas, err := os.ReadFile(measPath)
	if err != nil {
		return nil, nil, badInput("reading the measurements: %w", err)
	}
	bundle, err := os.ReadFile(measPath + signed.BundleSuffix)
	if err != nil {
		return nil, nil, badInput("reading the measurements' signature bundle: %w (build and sign the image with 'make node-image')", err)
	}
	res, err := signed.VerifyAny(roots, bundle, meas, signed.Predicate{ImageDigest: imageDigest, Variant: variant}, allowDev)
	if err != nil {
		return nil, nil, checkFailed(fmt.Errorf("%s: %w", measPath, err))
	}
	if known {
		if err := checkManifestVersions(filepath.Dir(measPath), res.Predicate); err != nil {
			return nil, nil, checkFailed(err)
		}
	}
	return meas, res, nil
}

// checkManifestVersions refuses an image whose manifest (node-image.json in dir, which the host can edit)
// disagrees with the versions its signed measurements name. Nothing takes the versions from the manifest; a
// manifest that claims others is a sign that the image's files were tampered with. A statement signed before
// statements carried versions has nothing to compare, and a missing manifest claims nothing.
func checkManifestVersions(dir string, p signed.Predicate) error {
	if p.KubernetesVersion == "" && p.ImageVersion == "" {
		return nil
	}
	path := filepath.Join(dir, nodeimage.ManifestFile)
	m, err := nodeimage.ReadManifest(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node image %s: %w; refusing the image (build or fetch it again)", p.ImageDigest, err)
	}
	if err := nodeimage.CheckSignedVersions(m, p.KubernetesVersion, p.ImageVersion); err != nil {
		return fmt.Errorf("node image %s (%s): %w", p.ImageDigest, path, err)
	}
	return nil
}

// signedVersions describes the versions a verified statement names, for the user.
func signedVersions(p signed.Predicate) string {
	if p.KubernetesVersion == "" {
		return "none signed (the statement predates signed versions: no Kubernetes upgrade to this image)"
	}
	v := "Kubernetes " + p.KubernetesVersion
	if p.ImageVersion != "" {
		v += ", image version " + p.ImageVersion
	}
	return v
}

// verifyConfiguredImage re-verifies, before a command uses them, that the configuration's measurements are
// the signed ones of its node image: the bundle next to the configured image verifies offline for the
// configured image digest and variant, and the configuration holds exactly the policy built from the signed
// measurements (on QEMU: the disk image's PCRs and the firmware PCRs pinned in this binary).
func verifyConfiguredImage(cmd *cobra.Command, c *config.Config, confPath string, allowDev bool) (*signed.Result, error) {
	var provider, digest, measFile string
	policyOf := func(m measurements.M) (measurements.M, error) { return m, nil }
	switch {
	case c.Provider.Mini != nil:
		provider, digest, measFile = "mini", c.Provider.Mini.ImageDigest, "measurements.json"
	case c.Provider.QEMU != nil:
		provider, digest, measFile, policyOf = "qemu", c.Provider.QEMU.ImageDigest, bootimage.MeasurementsFile, qemu.Policy
	default:
		return nil, badInput("%s configures no node image", confPath)
	}
	measPath := filepath.Join(filepath.Dir(c.ImagePath(confPath)), measFile)
	variant := c.Attestation.Variant
	snpMachines := c.Provider.QEMU != nil && c.Provider.QEMU.Confidential == config.ConfidentialSEVSNP
	if snpMachines {
		// The disk image's measurements are signed for its UEFI boot (qemu-vtpm); an SEV-SNP machine boots
		// its UKI directly, which they describe.
		variant = attestation.QEMUVTPM.Name
	}
	raw, res, err := verifyMeasurementsFile(cmd, measPath, digest, variant, allowDev)
	if err != nil {
		return nil, err
	}
	var signedImage measurements.M
	if err := json.Unmarshal(raw, &signedImage); err != nil {
		return nil, checkFailed(fmt.Errorf("%s: %w", measPath, err))
	}
	if snpMachines {
		return res, verifySNPLaunch(c, confPath, signedImage)
	}
	signedPolicy, err := policyOf(signedImage)
	if err != nil {
		return nil, checkFailed(fmt.Errorf("%s: %w", measPath, err))
	}
	if !maps.Equal(signedPolicy, c.Attestation.Measurements) {
		return nil, checkFailed(fmt.Errorf("the measurements of %s are not the signed measurements of node image %s (%s); "+
			"write them again with 'constellation config generate %s --force'", confPath, digest, measPath, provider))
	}
	return res, nil
}
