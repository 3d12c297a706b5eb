package joinservice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/measuredboot"
)

// Files of the join configuration directory (the keys of its ConfigMap).
const (
	MeasurementsFile = "measurements.json" // the cluster's measurement policy (JSON)
	AKRootsFile      = "ak-roots.pem"      // CA certificates that certify nodes' attestation keys
	ClusterIDFile    = "cluster-id"        // hex cluster ID, measured by joining nodes
)

// ConfigData returns the files of a join configuration.
func ConfigData(policy measurements.M, akRoots []*x509.Certificate, clusterID []byte) (map[string]string, error) {
	if len(policy) == 0 || len(akRoots) == 0 || len(clusterID) != 32 {
		return nil, errors.New("a join configuration needs a measurement policy, AK roots and a 32-byte cluster ID")
	}
	raw, err := json.MarshalIndent(policy, "", "  ")
	if err != nil {
		return nil, err
	}
	var roots bytes.Buffer
	for _, c := range akRoots {
		pem.Encode(&roots, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return map[string]string{
		MeasurementsFile: string(raw),
		AKRootsFile:      roots.String(),
		ClusterIDFile:    hex.EncodeToString(clusterID),
	}, nil
}

// State is one version of the join configuration.
type State struct {
	// Policy is what a joining node must present: the cluster's measurements and a fresh cluster-ID PCR
	// (zero), so a node that belongs to a cluster, this or another, cannot join again without a reboot.
	Policy    measurements.M
	AKRoots   []*x509.Certificate
	ClusterID []byte

	validator *vtpm.Validator
}

// Config is the join configuration in a directory, read again when its content changes. Kubernetes
// updates a mounted ConfigMap by swapping the directory's content atomically.
type Config struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	sum     [32]byte
	current *State
}

// NewConfig reads the join configuration in dir; it fails if the configuration is invalid.
func NewConfig(dir string, log *slog.Logger) (*Config, error) {
	c := &Config{dir: dir, log: log}
	if _, err := c.Current(); err != nil {
		return nil, err
	}
	return c, nil
}

// Current returns the configuration as it is now. If the files changed and the new content is invalid, it
// returns an error: the service then admits nobody rather than work from a policy that was replaced.
func (c *Config) Current() (*State, error) {
	files := map[string][]byte{}
	h := sha256.New()
	for _, name := range []string{MeasurementsFile, AKRootsFile, ClusterIDFile} {
		raw, err := os.ReadFile(filepath.Join(c.dir, name))
		if err != nil {
			return nil, fmt.Errorf("join configuration: %w", err)
		}
		files[name] = raw
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(raw))
		h.Write(raw)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil && sum == c.sum {
		return c.current, nil
	}
	s, err := parseState(files, c.log)
	if err != nil {
		c.current = nil
		return nil, fmt.Errorf("join configuration in %s: %w", c.dir, err)
	}
	if c.log != nil {
		c.log.Info("join configuration loaded", "clusterID", hex.EncodeToString(s.ClusterID[:8]), "pcrs", len(s.Policy))
	}
	c.sum, c.current = sum, s
	return s, nil
}

func parseState(files map[string][]byte, log *slog.Logger) (*State, error) {
	policy, err := measurements.Parse(files[MeasurementsFile])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", MeasurementsFile, err)
	}
	if _, ok := policy[measurements.PCRClusterID]; ok {
		return nil, fmt.Errorf("%s: PCR %d is the cluster ID's; the join service requires it fresh (zero) itself", MeasurementsFile, measurements.PCRClusterID)
	}
	policy = measuredboot.FreshPolicy(policy)
	var roots []*x509.Certificate
	rest := files[AKRootsFile]
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: unexpected PEM block %q", AKRootsFile, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", AKRootsFile, err)
		}
		roots = append(roots, cert)
	}
	if len(roots) == 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%s: want one or more PEM certificates and nothing else", AKRootsFile)
	}
	id, err := hex.DecodeString(strings.TrimSpace(string(files[ClusterIDFile])))
	if err != nil || len(id) != 32 {
		return nil, fmt.Errorf("%s: want 64 hex digits", ClusterIDFile)
	}
	v, err := vtpm.NewValidator(roots, policy, log)
	if err != nil {
		return nil, err
	}
	return &State{Policy: policy, AKRoots: roots, ClusterID: id, validator: v}, nil
}

// Validator returns a validator that checks evidence against the configuration current at each call.
func (c *Config) Validator() attestation.Validator { return reloadingValidator{c} }

type reloadingValidator struct{ c *Config }

func (reloadingValidator) Variant() attestation.Variant { return attestation.MiniVTPM }

func (r reloadingValidator) Validate(ctx context.Context, evidence, nonce []byte) ([]byte, error) {
	s, err := r.c.Current()
	if err != nil {
		r.c.logger().Error("join refused: no valid join configuration", "error", err)
		return nil, err
	}
	userData, err := s.validator.Validate(ctx, evidence, nonce)
	if err != nil {
		// The node only sees a failed handshake; the operator reads here why (for a measurement mismatch:
		// which PCRs, expected and actual values, and the events behind them).
		var mismatch *measurements.Error
		if errors.As(err, &mismatch) {
			fatal := measurements.Fatal(mismatch.Mismatches)
			pcrs := make([]uint32, 0, len(fatal))
			for _, m := range fatal {
				pcrs = append(pcrs, m.PCR)
			}
			r.c.logger().Warn("join refused: the node's measurements differ from the cluster's", "pcrs", pcrs, "node", subjectOf(evidence), "error", err)
		} else {
			r.c.logger().Warn("join refused: evidence invalid", "node", subjectOf(evidence), "error", err)
		}
		return nil, err
	}
	return userData, nil
}

// subjectOf names the node an evidence document claims to be (unverified, for logs only).
func subjectOf(evidence []byte) string {
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return ""
	}
	return doc.AttestationKeySubject()
}

func (c *Config) logger() *slog.Logger {
	if c.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.log
}
