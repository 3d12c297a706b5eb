package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with the cluster configuration file",
	}
	cmd.AddCommand(newConfigGenerateCmd())
	return cmd
}

func newConfigGenerateCmd() *cobra.Command {
	var imageDir, workspace string
	var force bool
	var controlPlanes, workers int
	cmd := &cobra.Command{
		Use:   "generate mini|qemu",
		Short: "Write " + config.FileName + " for a provider, with the node image's expected measurements",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "mini":
				return generateMiniConfig(cmd, imageDir, workspace, controlPlanes, workers, force)
			case "qemu":
				if !cmd.Flags().Changed("workers") {
					workers = 0
				}
				return generateQEMUConfig(cmd, imageDir, workspace, controlPlanes, workers, force)
			default:
				return badInput("provider %q is not supported; available: mini, qemu", args[0])
			}
		},
	}
	cmd.Flags().StringVar(&imageDir, "image-dir", "_out/node-image", "directory with the node image and its measurements (mini: node-image.squashfs, node-image.json, measurements.json; qemu: node-image.raw, node-image-uefi.json, measurements-uefi.json)")
	cmd.Flags().StringVar(&workspace, "workspace", ".", "directory to write "+config.FileName+" to")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing configuration")
	cmd.Flags().IntVar(&controlPlanes, "control-planes", 1, "number of control-plane nodes")
	cmd.Flags().IntVar(&workers, "workers", 2, "number of worker nodes (qemu: default 0)")
	cmd.Flags().Int("registry-port", mini.DefaultRegistryHostPort, "port on 127.0.0.1 where the registry mirror takes pushes (localhost:PORT/...)")
	addConfidentialFlags(cmd)
	addSignatureFlags(cmd)
	return cmd
}

// generateMiniConfig writes the workspace configuration for the mini provider from a built node image: its
// digest and the measurements a node booted from it presents, once the measurements' signature and log entry
// verify offline for that digest and the mini provider's variant.
func generateMiniConfig(cmd *cobra.Command, imageDir, workspace string, controlPlanes, workers int, force bool) error {
	manifestPath := filepath.Join(imageDir, "node-image.json")
	raw, err := os.ReadFile(manifestPath)
	if err != nil {
		return badInput("reading the node image manifest: %w (build the image with 'make node-image' or pass --image-dir)", err)
	}
	var manifest nodeimage.Manifest
	if err := json.Unmarshal(raw, &manifest); err != nil {
		return badInput("%s: %w", manifestPath, err)
	}
	measPath := filepath.Join(imageDir, "measurements.json")
	if _, err := os.Stat(measPath); err != nil {
		return badInput("reading the expected measurements: %w", err)
	}
	rawMeas, signature, err := verifyImageMeasurements(cmd, measPath, manifest.Digest, attestation.MiniVTPM.Name)
	if err != nil {
		return err
	}
	warnDevSigned(cmd, signature)
	policy, err := measurements.Parse(rawMeas)
	if err != nil {
		return badInput("%s: %w", measPath, err)
	}
	image, err := filepath.Abs(filepath.Join(imageDir, "node-image.squashfs"))
	if err != nil {
		return badInput("%w", err)
	}
	c := &config.Config{
		Version: config.Version,
		Provider: config.Provider{Mini: &config.Mini{
			ControlPlanes: controlPlanes, Workers: workers, Image: image, ImageDigest: manifest.Digest,
			RegistryPort: registryPortFlag(cmd),
		}},
		Attestation:     config.Attestation{Variant: attestation.MiniVTPM.Name, Measurements: policy},
		RegistryMirrors: config.WithoutCredentials(mini.DefaultMirrors(registryPortFlag(cmd))),
	}
	path := filepath.Join(workspace, config.FileName)
	if err := c.Write(path, force); err != nil {
		return badInput("%w", err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s: %d control plane(s), %d worker(s), node image %s, %d expected PCRs, signed: %s.\n",
		path, controlPlanes, workers, manifest.Digest, len(policy), signedBy(signature))
	printVariantWarning(cmd, c.Attestation.Variant)
	return nil
}
