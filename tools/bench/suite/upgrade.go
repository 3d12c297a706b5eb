package suite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
)

func init() {
	register(Suite{Names: []string{"upgrade-cluster", "upgrade-node"}, Run: runUpgrade})
}

// runUpgrade measures, with the built CLI and node image, seconds that `constellation apply` takes to move a
// running mini cluster (1 control plane + 2 workers) to a second node image: from the start of apply (the new
// image's measurements verified, the image registered with the provider, the measurement policy window opened)
// until the upgrade controller has replaced every node, one at a time, and the policy is narrowed to the new
// image (upgrade-cluster); and that time per replaced node (upgrade-node). The second image is the node image
// with a bootstrapper built with another commit (another digest, other measurements), built before the clock
// starts.
func runUpgrade(ctx context.Context) ([]Result, error) {
	c, err := newBenchCluster(ctx, "upgrade-cluster")
	if err != nil {
		return nil, err
	}
	defer c.close()
	imageB, err := os.MkdirTemp("", "bench-image-b-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(imageB)
	if err := buildImageB(ctx, imageB); err != nil {
		return nil, fmt.Errorf("building the second node image: %w", err)
	}
	if err := c.up(); err != nil {
		return nil, err
	}
	if err := c.ready(); err != nil {
		return nil, err
	}
	if out, err := c.run(c.bin, "config", "generate", "mini", "--image-dir", imageB, "--workspace", c.ws, "--allow-dev-signed", "--force"); err != nil {
		return nil, fmt.Errorf("config generate for the second image: %v: %s", err, out)
	}
	start := time.Now()
	out, err := c.run(c.bin, "apply", "--workspace", c.ws, "--allow-dev-signed", "--wait", "30m")
	took := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("apply of the second image: %v: %s", err, out)
	}
	replaced := strings.Count(out, ": done: replaced by ")
	if replaced == 0 || !strings.Contains(out, "Upgrade finished") {
		return nil, fmt.Errorf("apply of the second image replaced %d nodes: %s", replaced, out)
	}
	return []Result{
		{"upgrade-cluster", took.Seconds(), "s"},
		{"upgrade-node", took.Seconds() / float64(replaced), "s"},
	}, nil
}

// buildImageB builds the node image of `make node-image` again into out, with a bootstrapper built with another
// commit, and signs its measurements as a local build is signed.
func buildImageB(ctx context.Context, out string) error {
	m, err := readNodeImageManifest()
	if err != nil {
		return fmt.Errorf("%w (run make node-image)", err)
	}
	version := ""
	prefix := deploy.Image()[:strings.LastIndex(deploy.Image(), ":")+1]
	for ref := range m.Images {
		if v, ok := strings.CutPrefix(ref, prefix); ok {
			version = v
		}
	}
	if version == "" {
		return fmt.Errorf("the node image's manifest names no upgrade controller image")
	}
	bins, err := os.MkdirTemp("", "bench-bootstrapper-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bins)
	const module = "github.com/constellation-dev/constellation"
	ldflags := "-X " + module + "/internal/version.Version=" + version
	bootstrapper := filepath.Join(bins, "bootstrapper")
	for _, args := range [][]string{
		{"go", "build", "-trimpath", "-ldflags", ldflags + " -X " + module + "/internal/version.Commit=bench-upgrade", "-o", bootstrapper, "./cmd/bootstrapper"},
		{"go", "run", "-ldflags", ldflags, "./tools/node-image", "-out", out, "-bootstrapper", bootstrapper},
		{"go", "run", "./tools/sign-measurements", "-image-dir", out},
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, b)
		}
	}
	return nil
}
