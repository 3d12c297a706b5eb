package suite

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/provider/qemu"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

func init() {
	register(Suite{Names: []string{"qemu-node-boot"}, Run: runQEMUNodeBoot})
}

// runQEMUNodeBoot boots one control-plane machine of the QEMU provider (TCG) from the built disk image
// (_out/node-image/node-image.raw) and reports the time from the provider's start to the node's first evidence
// that validates against the generated qemu-vtpm policy: firmware, UKI, kernel, node-init, the bootstrapper's
// network and attestation-key enrolment. It holds /tmp/qemu.lock while the machine runs.
func runQEMUNodeBoot(ctx context.Context) ([]Result, error) {
	if err := bootimage.QEMUPrerequisites(); err != nil {
		return nil, err
	}
	imageDir := "_out/node-image"
	raw, err := os.ReadFile(filepath.Join(imageDir, bootimage.ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("the disk image: %w (build it with 'make node-image')", err)
	}
	var disk bootimage.Disk
	if err := json.Unmarshal(raw, &disk); err != nil {
		return nil, err
	}
	policy, err := qemu.Policy(disk.Measurements)
	if err != nil {
		return nil, err
	}
	unlock, err := lockQEMU()
	if err != nil {
		return nil, err
	}
	defer unlock()
	dir, err := os.MkdirTemp("", "bench-qemu-node-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- (&qemu.Provider{Dir: dir}).Run(ctx, qemu.Spec{ControlPlanes: 1, Image: filepath.Join(imageDir, bootimage.ImageFile), ImageDigest: disk.Digest, Accel: qemu.AccelTCG})
	}()
	defer func() {
		cancel()
		<-done
	}()
	var node qemu.NodeState
	for node.Name == "" {
		s, ok, err := qemu.ReadState(dir)
		switch {
		case err != nil:
			return nil, err
		case ok && s.Phase == qemu.PhaseFailed:
			return nil, errors.New(s.Error)
		case ok && s.Phase == qemu.PhaseRunning:
			node = s.Nodes[0]
		}
		select {
		case err := <-done:
			return nil, fmt.Errorf("the provider stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	rawCA, err := os.ReadFile(qemu.AKCAPath(dir))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(rawCA)
	if block == nil {
		return nil, errors.New("no AK CA certificate")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	v, err := validators.New(&validators.Policy{Variant: attestation.QEMUVTPM.Name, Measurements: policy, AKRoots: []*x509.Certificate{ca}}, validators.Options{})
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, attestation.NonceSize)
	rand.Read(nonce)
	endpoint := node.IP + ":" + strconv.Itoa(verifyservice.Port)
	for {
		ev, err := verifyservice.Fetch(ctx, endpoint, nonce)
		if err == nil {
			if _, err := v.Validate(ctx, ev, nonce); err != nil {
				return nil, fmt.Errorf("the machine's evidence: %w", err)
			}
			return []Result{{"qemu-node-boot", time.Since(start).Seconds(), "s"}}, nil
		}
		if syscall.Kill(node.PID, 0) != nil {
			console, _ := os.ReadFile(node.Console)
			return nil, fmt.Errorf("the machine powered off before it served evidence; console:\n%s", console)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// lockQEMU waits for the machine's QEMU lock (one VM workload at a time on this machine) and refuses while a
// QEMU cluster runs; unlock releases the lock.
func lockQEMU() (unlock func(), err error) {
	lock, err := os.OpenFile("/tmp/qemu.lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	if qemu.NetworkOwned() {
		lock.Close()
		return nil, fmt.Errorf("a QEMU cluster runs on this machine (its provider holds namespace %s); stop it first", qemu.Netns)
	}
	return func() { lock.Close() }, nil
}
