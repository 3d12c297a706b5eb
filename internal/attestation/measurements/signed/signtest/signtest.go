// Package signtest runs a Rekor v2 transparency log (the single-binary POSIX server of rekor-tiles) on
// loopback, with its tiles and checkpoints in a directory, for the development signing at build and for
// tests, and makes throw-away signing keys.
package signtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
)

// ServerPackage is the Go package of the log server, pinned by go.mod's tool directive.
const ServerPackage = "github.com/sigstore/rekor-tiles/v2/cmd/rekor-server/posix"

// BuildServer builds the log server to out with the go command (fast once the build cache is warm).
func BuildServer(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ServerPackage)
	if raw, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the transparency log server %s: %w: %s", ServerPackage, err, raw)
	}
	return nil
}

// NewKey returns a fresh ECDSA P-256 key.
func NewKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("generating a P-256 key: %v", err))
	}
	return k
}

// Log is a running log server.
type Log struct {
	// URL is the base URL signers send entries to.
	URL string
	// Log is what a verifier trusts of it.
	Log signed.Log
	// TilesDir holds the log's checkpoint and tiles (c2sp.org/tlog-tiles), as a log's readers fetch them.
	TilesDir string
	cmd      *exec.Cmd
	// exited is closed when the server process has ended.
	exited chan struct{}
}

// Ports are the loopback ports the server listens on.
type Ports struct{ HTTP, GRPC, Metrics int }

// FreePorts asks the kernel for three unused loopback ports.
func FreePorts() (Ports, error) {
	var ps [3]int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := range ps {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Ports{}, fmt.Errorf("finding a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ps[i] = l.Addr().(*net.TCPAddr).Port
	}
	return Ports{HTTP: ps[0], GRPC: ps[1], Metrics: ps[2]}, nil
}

// Start runs the server binary bin with its storage in dir (the log persists there), origin as the
// checkpoints' origin and key as the checkpoint signing key, on 127.0.0.1 only. It returns when the server
// answers its health check; the server reads its key from a file in dir, which is removed again by then.
// The server's tiles and checkpoint are in [Log.TilesDir].
func Start(ctx context.Context, bin, dir, origin string, key *ecdsa.PrivateKey, ports Ports) (*Log, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tiles"), 0o700); err != nil {
		return nil, fmt.Errorf("the log directory: %w", err)
	}
	keyPath := filepath.Join(dir, "checkpoint-key.pem")
	keyPEM, err := signed.PrivateKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("writing the log key: %w", err)
	}
	logFile, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return nil, fmt.Errorf("the log server's output file: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "serve",
		"--storage-dir", filepath.Join(dir, "tiles"),
		"--signer-filepath", keyPath,
		"--hostname", origin,
		"--http-address", "127.0.0.1", "--http-port", strconv.Itoa(ports.HTTP),
		"--grpc-address", "127.0.0.1", "--grpc-port", strconv.Itoa(ports.GRPC),
		"--http-metrics-port", strconv.Itoa(ports.Metrics),
		"--checkpoint-interval", "100ms", "--batch-max-age", "20ms",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the log server %s: %w", bin, err)
	}
	l := &Log{
		URL:      "http://127.0.0.1:" + strconv.Itoa(ports.HTTP),
		Log:      signed.Log{Origin: origin, PublicKey: &key.PublicKey},
		TilesDir: filepath.Join(dir, "tiles"),
		cmd:      cmd,
		exited:   make(chan struct{}),
	}
	go func() { _ = cmd.Wait(); close(l.exited) }()
	err = l.waitHealthy(ctx)
	// The server read its key when it started; the key's owner keeps it (for a release log, encrypted).
	if rmErr := os.Remove(keyPath); rmErr != nil && err == nil {
		err = fmt.Errorf("removing the log server's copy of its key: %w", rmErr)
	}
	if err != nil {
		l.Stop()
		out, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		return nil, fmt.Errorf("%w; its output:\n%s", err, out)
	}
	return l, nil
}

// waitHealthy polls the health endpoint until it answers, the server exits or ctx ends.
func (l *Log) waitHealthy(ctx context.Context) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.URL+"/healthz", nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-l.exited:
			return errors.New("the log server exited while starting")
		case <-ctx.Done():
			return fmt.Errorf("waiting for the log server: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends the server and waits for it to exit.
func (l *Log) Stop() {
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	<-l.exited
}
