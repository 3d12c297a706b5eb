// Package reporttest makes real cluster reports for tests and benchmarks: nodes with their own software TPM
// (swtpm, with EK certificates from a local CA), measured as the mini firmware measures a boot, enrolled with
// one attestation-key CA under their names and members of one cluster (PCR 15); measurements signed with a
// development key and logged in a Rekor v2 log on loopback; and the trusted root of that key and log.
package reporttest

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/clusterreport"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/swtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// ImageDigest is the node image the test nodes measure (tpmtest.BootMeasurements).
const ImageDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

// Node is a running test node.
type Node struct {
	Name, Role, Endpoint string
	TPM                  *tpmtest.Node
	swtpm                *swtpm.TPM
	conn                 net.Conn
}

// Cluster is a set of test nodes of one cluster, with the signed measurements of their image.
type Cluster struct {
	Nodes     []*Node
	ClusterID string
	AKRoots   []*x509.Certificate
	// Image is the node image with its signed measurements (PCRs 0, 4 and 8).
	Image clusterreport.Image
	// Policy is the policy the nodes meet: the signed measurements, PCR 15, the AK roots.
	Policy *validators.Policy
	// RootJSON is the trusted root (file form) of the signing key and the log.
	RootJSON []byte
	signer   signed.Signer
	log      *signtest.Log
}

// Start starts the nodes, control-plane-0 and workers worker-0 to worker-<workers-1>, in dir, and a log that
// signs their measurements. Close stops everything.
func Start(ctx context.Context, dir string, workers int) (c *Cluster, err error) {
	c = &Cluster{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	ekCA, err := swtpm.NewCA(filepath.Join(dir, "ek-ca"))
	if err != nil {
		return nil, err
	}
	akCA, err := tpmtest.NewAKCA(ekCA.Certificate())
	if err != nil {
		return nil, err
	}
	c.AKRoots = []*x509.Certificate{akCA.Certificate()}
	id := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	c.ClusterID = hex.EncodeToString(id)
	names := []string{"control-plane-0"}
	for i := range workers {
		names = append(names, "worker-"+strconv.Itoa(i))
	}
	for i, name := range names {
		role := clusterreport.RoleWorker
		if i == 0 {
			role = clusterreport.RoleControlPlane
		}
		n := &Node{Name: name, Role: role, Endpoint: "10.217.0." + strconv.Itoa(11+i) + ":9090"}
		c.Nodes = append(c.Nodes, n)
		state := filepath.Join(dir, name)
		if err := swtpm.Manufacture(ctx, state, ekCA); err != nil {
			return nil, err
		}
		if n.swtpm, err = swtpm.Start(ctx, state); err != nil {
			return nil, err
		}
		if n.conn, err = n.swtpm.Dial(); err != nil {
			return nil, err
		}
		if n.TPM, err = tpmtest.NewNamedNode(n.conn, akCA, vtpm.ECC, name); err != nil {
			return nil, err
		}
		ev := measurements.ClusterIDEvent(id)
		if err := tpmtest.Measure(n.conn, n.TPM.Log, ev.PCR, ev.Type, ev.Data); err != nil {
			return nil, err
		}
	}
	meas, err := imageMeasurements(c.Nodes[0].conn)
	if err != nil {
		return nil, err
	}
	c.Policy = &validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: measurements.MemberPolicy(meas, id), AKRoots: c.AKRoots}
	measJSON, err := json.Marshal(meas)
	if err != nil {
		return nil, err
	}
	if err := c.startLog(ctx, dir); err != nil {
		return nil, err
	}
	bundle, err := c.Sign(ctx, measJSON, ImageDigest, attestation.MiniVTPM.Name)
	if err != nil {
		return nil, err
	}
	c.Image = clusterreport.Image{Digest: ImageDigest, Variant: attestation.MiniVTPM.Name, Measurements: measJSON, Bundle: bundle}
	return c, nil
}

// imageMeasurements reads PCRs 0, 4 and 8: the measurements of the node image the nodes booted.
func imageMeasurements(rw io.ReadWriter) (measurements.M, error) {
	pcrs, err := client.ReadPCRs(rw, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		return nil, err
	}
	return measurements.FromPCRs(func(idx uint32) []byte { return pcrs.GetPcrs()[idx] }, 0, measurements.PCRNodeImage, measurements.PCRBootParams)
}

func (c *Cluster) startLog(ctx context.Context, dir string) error {
	bin := filepath.Join(dir, "rekor-server")
	if err := signtest.BuildServer(ctx, bin); err != nil {
		return err
	}
	ports, err := signtest.FreePorts()
	if err != nil {
		return err
	}
	if c.log, err = signtest.Start(ctx, bin, filepath.Join(dir, "log"), "log.test.invalid", signtest.NewKey(), ports); err != nil {
		return err
	}
	key := signtest.NewKey()
	c.signer = signed.Signer{Key: key, LogURL: c.log.URL}
	root := signed.Root{Keys: []signed.Key{{Name: "development", Development: true, PublicKey: &key.PublicKey}}, Log: c.log.Log}
	c.RootJSON, err = json.Marshal(root)
	return err
}

// Sign signs and logs measurements for an image digest and variant with the cluster's development key; the log
// must still run (see StopLog).
func (c *Cluster) Sign(ctx context.Context, meas []byte, imageDigest, variant string) ([]byte, error) {
	if c.log == nil {
		return nil, errors.New("the test log is stopped")
	}
	st, err := signed.Statement("measurements.json", meas, signed.Predicate{ImageDigest: imageDigest, Variant: variant})
	if err != nil {
		return nil, err
	}
	return c.signer.Sign(ctx, st)
}

// StopLog stops the transparency log: whatever verifies from now on, verifies offline.
func (c *Cluster) StopLog() {
	if c.log != nil {
		c.log.Stop()
		c.log = nil
	}
}

// Report collects a report of every node for seed, created at created.
func (c *Cluster) Report(ctx context.Context, seed []byte, created time.Time) (*clusterreport.Report, error) {
	var entries []clusterreport.NodeEntry
	byName := map[string]*Node{}
	for _, n := range c.Nodes {
		entries = append(entries, clusterreport.NodeEntry{Name: n.Name, Role: n.Role, Endpoint: n.Endpoint})
		byName[n.Name] = n
	}
	r, err := clusterreport.New(created, seed, c.ClusterID, c.Image, c.Policy, entries)
	if err != nil {
		return nil, err
	}
	list := r.NodeList()
	for i := range r.Nodes {
		ev, err := byName[r.Nodes[i].Name].TPM.Issuer.Issue(ctx, list.Nonce(seed, r.Nodes[i].Name), nil)
		if err != nil {
			return nil, fmt.Errorf("evidence of %s: %w", r.Nodes[i].Name, err)
		}
		r.Nodes[i].Evidence = ev
	}
	return r, nil
}

// Close stops the nodes' TPMs cleanly and the log.
func (c *Cluster) Close() {
	c.StopLog()
	for _, n := range c.Nodes {
		if n.TPM != nil {
			n.TPM.Release()
		} else if n.conn != nil {
			n.conn.Close()
		}
		if n.swtpm != nil {
			n.swtpm.Close()
		}
	}
}

// NewSeed returns a random seed.
func NewSeed() []byte {
	seed := make([]byte, clusterreport.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		panic(err)
	}
	return seed
}

// TempDir is a directory for a cluster outside a test's own, for callers without a testing.T.
func TempDir() (string, error) { return os.MkdirTemp("", "cluster-report-") }
