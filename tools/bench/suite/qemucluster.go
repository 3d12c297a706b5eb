package suite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
)

func init() {
	register(Suite{Names: []string{"qemu-cluster-create"}, Run: runQEMUClusterCreate})
}

// runQEMUClusterCreate measures, with the built CLI and disk image, the seconds `constellation apply` takes to
// create a QEMU cluster of 1 control plane and 1 worker under TCG: both machines booted and attested, Kubernetes
// initialised on the control plane over aTLS, the worker joined through the join service, and every node
// attested as a member of the cluster and Ready (apply returns then; `status` confirms it). It holds
// /tmp/qemu.lock while the machines run.
func runQEMUClusterCreate(ctx context.Context) (results []Result, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("qemu-cluster-create needs root (the node network's namespace, bridge and taps)")
	}
	if err := bootimage.QEMUPrerequisites(); err != nil {
		return nil, fmt.Errorf("qemu-cluster-create: %w", err)
	}
	for _, tool := range []string{"ip", "nsenter", "swtpm_setup"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("qemu-cluster-create needs %s (scripts/setup.sh)", tool)
		}
	}
	bin, _ := filepath.Abs("bin/constellation")
	imageDir, _ := filepath.Abs(NodeImageDir)
	for _, f := range []string{bin, filepath.Join(imageDir, bootimage.ImageFile), filepath.Join(imageDir, bootimage.MeasurementsFile+".sigstore.json")} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("qemu-cluster-create needs the built CLI and the signed disk image (make node-image): %w", err)
		}
	}
	unlock, err := lockQEMU()
	if err != nil {
		return nil, err
	}
	defer unlock()
	ws, err := os.MkdirTemp("", "bench-qemu-cluster-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(ws)
	run := func(ctx context.Context, args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, bin, append(args, "--workspace", ws)...).CombinedOutput()
		return string(out), err
	}
	if out, err := run(ctx, "config", "generate", "qemu", "--image-dir", imageDir, "--allow-dev-signed", "--workers", "1"); err != nil {
		return nil, fmt.Errorf("config generate qemu: %v: %s", err, out)
	}
	terminated := false
	defer func() {
		if !terminated {
			run(context.WithoutCancel(ctx), "terminate", "--yes")
		}
	}()
	start := time.Now()
	if out, err := run(ctx, "apply", "--allow-dev-signed"); err != nil {
		return nil, fmt.Errorf("apply: %v: %s", err, out)
	}
	created := time.Since(start)
	if out, err := run(ctx, "status"); err != nil {
		return nil, fmt.Errorf("status right after apply: %v: %s", err, out)
	}
	terminated = true
	if out, err := run(context.WithoutCancel(ctx), "terminate", "--yes"); err != nil || qemu.NetworkInUse() {
		return nil, fmt.Errorf("terminate: %v (node network left: %v): %s", err, qemu.NetworkInUse(), out)
	}
	return []Result{{"qemu-cluster-create", created.Seconds(), "s"}}, nil
}
