package suite

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/verifyservice"
)

func init() {
	register(Suite{Names: []string{"mini-boot"}, Run: runMiniBoot})
}

// NodeImageDir is where `make node-image` writes the node image.
var NodeImageDir = "_out/node-image"

// runMiniBoot measures seconds from starting the mini provider to 1 control plane + 2 workers booted from the
// node image (measured boot, sandboxes, bootstrapper) and each attested by a verifier. Kubernetes is not yet
// initialised by the bootstrapper, so this is the attested-boot part of cluster creation.
func runMiniBoot(ctx context.Context) ([]Result, error) {
	if os.Geteuid() != 0 || mini.NetworkInUse() {
		return nil, errors.New("mini-boot needs root and no running mini cluster")
	}
	image := filepath.Join(NodeImageDir, "node-image.squashfs")
	manifest, err := readNodeImageManifest()
	if err != nil {
		return nil, fmt.Errorf("mini-boot needs the node image: %w (run make node-image)", err)
	}
	rawPolicy, err := os.ReadFile(filepath.Join(NodeImageDir, "measurements.json"))
	if err != nil {
		return nil, err
	}
	policy, err := measurements.Parse(rawPolicy)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bench-mini-")
	if err != nil {
		return nil, err
	}
	if os.Getenv("BENCH_KEEP") == "" {
		defer os.RemoveAll(dir)
	}
	runCtx, stop := context.WithCancel(ctx)
	p := &mini.Provider{Dir: dir, Log: discardLogger()}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- p.Run(runCtx, mini.Spec{ControlPlanes: 1, Workers: 2, Image: image, ImageDigest: manifest.Digest, Cmdline: manifest.Cmdline})
	}()
	defer func() {
		stop()
		<-done
	}()
	var state mini.State
	for {
		s, ok, _ := mini.ReadState(dir)
		if ok && s.Phase == mini.PhaseRunning {
			state = s
			break
		}
		if ok && s.Phase == mini.PhaseFailed {
			return nil, errors.New(s.Error)
		}
		select {
		case err := <-done:
			return nil, fmt.Errorf("provider stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ak-ca", "ca-cert.pem"))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(caPEM)
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	v, err := vtpm.NewValidator([]*x509.Certificate{root}, policy, nil)
	if err != nil {
		return nil, err
	}
	for _, n := range state.Nodes {
		nonce := make([]byte, attestation.NonceSize)
		rand.Read(nonce)
		var ev []byte
		for {
			ev, err = verifyservice.Fetch(ctx, n.IP+":"+strconv.Itoa(verifyservice.Port), nonce)
			if err == nil || time.Since(start) > 2*time.Minute {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if _, err := v.Validate(ctx, ev, nonce); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return []Result{{"mini-boot", time.Since(start).Seconds(), "s"}}, nil
}
