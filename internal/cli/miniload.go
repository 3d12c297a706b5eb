package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/provider/mini"
)

func newMiniLoadCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "load ARCHIVE...",
		Short: "Put container images from image archives into every node of the running cluster",
		Long: `Put the container images of image archives into every node of the running mini cluster, as
'kind load image-archive' does: pods can then run them with imagePullPolicy Never or IfNotPresent, without a
registry. An archive is a docker archive ('docker save IMAGE -o app.tar', go-containerregistry's tarball) or
an OCI image layout in a tar file (a tar of the directory 'crane pull --format=oci' writes), uncompressed.
Every image in it needs its full name (e.g. example.com/app:dev); none may take the name of an image of the
node image (the control plane, pause, CoreDNS, the cluster's services): those come only from the measured
node image, and the nodes refuse such archives too.

The archives are checked on this machine first; then the provider keeps a copy in the workspace and imports
it into every running node. A node that is still booting, and every node that joins or reboots later, imports
them when its container runtime starts. Images loaded this way are chosen by this machine, as images pulled
through its network would be: they are for developing on a mini cluster.

Output: one line per node and image, e.g. "worker-0: loaded example.com/app:dev (sha256:...)". The exit code
is 1 if a running node failed to import them.`,
		Example: `  docker save example.com/app:dev -o app.tar
  constellation mini load app.tar`,
		Args: cobra.MinimumNArgs(1),
		RunE: runMiniLoad,
	}
}

func runMiniLoad(cmd *cobra.Command, args []string) error {
	out := cmd.OutOrStdout()
	dir, err := runningMini(cmd)
	if err != nil {
		return err
	}
	c, confPath, err := loadMiniConfig(cmd)
	if err != nil {
		return err
	}
	protected, err := mini.ProtectedImages(c.ImagePath(confPath))
	if err != nil {
		return failed(fmt.Errorf("which images the node image holds: %w", err))
	}
	// Every archive is checked before anything changes.
	var paths []string
	for _, a := range args {
		abs, err := filepath.Abs(a)
		if err != nil {
			return badInput("%s: %w", a, err)
		}
		x, err := mini.CheckArchive(abs, protected)
		if err != nil {
			hint := ""
			if errors.Is(err, os.ErrNotExist) {
				hint = "; give the path of an image archive"
			}
			return badInput("%s: %w%s; nothing was loaded", a, err, hint)
		}
		fmt.Fprintf(out, "%s: %s with %s\n", a, x.Format, strings.Join(x.Names(), ", "))
		paths = append(paths, abs)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Minute)
	defer cancel()
	res, err := mini.LoadImages(ctx, dir, paths)
	if err != nil {
		return failed(fmt.Errorf("loading the images: %w", err))
	}
	for _, a := range res.Archives {
		how := "kept"
		if !a.Stored {
			how = "already kept"
		}
		fmt.Fprintf(out, "%s %s as %s: nodes that join or reboot import it too\n", how, a.Source, a.Path)
	}
	var failedNodes []string
	for _, n := range res.Nodes {
		switch {
		case n.Error != "":
			fmt.Fprintf(out, "%s: failed: %s\n", n.Node, n.Error)
			failedNodes = append(failedNodes, n.Node)
		case n.Pending:
			fmt.Fprintf(out, "%s: its container runtime is not running yet; it imports the images when it starts\n", n.Node)
		default:
			for _, img := range n.Images {
				fmt.Fprintf(out, "%s: loaded %s (%s)\n", n.Node, img.Name, img.Digest)
			}
		}
	}
	if len(failedNodes) > 0 {
		return failed(fmt.Errorf("loading failed on %s (the archives stay in the workspace: the nodes import them when they reboot; 'constellation mini reboot NODE')", strings.Join(failedNodes, ", ")))
	}
	return nil
}
