package suite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

func init() {
	register(Suite{Names: []string{"node-image-rebuild", "node-image-assembly", "node-image-size"}, Run: runBuildWarm})
	register(Suite{Names: []string{"node-image-cold", "kubernetes-build-cold", "components-build-cold"}, Run: runBuildCold, OnRequest: true})
}

// buildTimes runs the steps of `make node-image` (this project's binaries, Kubernetes, the other components,
// then the node image into a temporary directory) with env added to the environment, and returns the
// duration of each step, the image's size and its digest.
func buildTimes(ctx context.Context, env ...string) (steps [4]time.Duration, size int64, digest string, err error) {
	out, err := os.MkdirTemp("", "bench-node-image-")
	if err != nil {
		return steps, 0, "", err
	}
	defer os.RemoveAll(out)
	for i, target := range []string{"build", "kubernetes", "components", "assemble-node-image"} {
		cmd := exec.CommandContext(ctx, "make", "-s", target, "NODE_IMAGE_OUT="+out)
		cmd.Env = append(os.Environ(), env...)
		start := time.Now()
		if raw, err := cmd.CombinedOutput(); err != nil {
			return steps, 0, "", fmt.Errorf("make %s: %w\n%s", target, err, tail(raw, 2000))
		}
		steps[i] = time.Since(start)
	}
	saved := NodeImageDir
	NodeImageDir = out
	m, err := readNodeImageManifest()
	NodeImageDir = saved
	if err != nil {
		return steps, 0, "", err
	}
	return steps, m.Size, m.Digest, nil
}

func tail(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// runBuildWarm measures `make node-image` without changes: every Go build comes from the build cache, and the
// node image is assembled again from scratch.
func runBuildWarm(ctx context.Context) ([]Result, error) {
	steps, size, _, err := buildTimes(ctx)
	if err != nil {
		return nil, err
	}
	return []Result{
		{"node-image-rebuild", (steps[0] + steps[1] + steps[2] + steps[3]).Seconds(), "s"},
		{"node-image-assembly", steps[3].Seconds(), "s"},
		{"node-image-size", float64(size) / (1 << 20), "MiB"},
	}, nil
}

// runBuildCold measures the first build on a fresh machine: the same steps with an empty Go build cache (the
// module cache stays: downloading depends on the network, not on this project). It takes about 25 minutes on
// two cores, so it runs only when BENCH names it. The image must come out bit for bit as a warm build's of the
// same commit, made first.
func runBuildCold(ctx context.Context) ([]Result, error) {
	_, _, warm, err := buildTimes(ctx)
	if err != nil {
		return nil, err
	}
	cache, err := os.MkdirTemp("", "bench-gocache-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(cache)
	steps, _, cold, err := buildTimes(ctx, "GOCACHE="+cache)
	if err != nil {
		return nil, err
	}
	if cold != warm {
		return nil, fmt.Errorf("the cold build gave the node image %s, the warm one %s: the build is not reproducible", cold, warm)
	}
	return []Result{
		{"node-image-cold", (steps[0] + steps[1] + steps[2] + steps[3]).Seconds(), "s"},
		{"kubernetes-build-cold", steps[1].Seconds(), "s"},
		{"components-build-cold", steps[2].Seconds(), "s"},
	}, nil
}
