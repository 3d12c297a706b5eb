package joinservice

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// The tests' fixture: nodes on real TPMs, the control plane's key service and join service on loopback
// ports, and a node that joins over mutual aTLS. Everything a helper starts ends with the test.

// simulatorNode is a fresh node on the reference TPM simulator.
func simulatorNode(t *testing.T) *tpmtest.Node {
	t.Helper()
	n, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// swtpmNode is a fresh node on its own swtpm, as the control-plane node that runs the services.
func swtpmNode(t *testing.T) *tpmtest.Node {
	t.Helper()
	n, err := tpmtest.NewSWTPMNode(context.Background(), t.TempDir(), vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// masterSecret is the key deriver of a fresh master secret and the cluster ID it derives.
func masterSecret(t *testing.T) (*kms.Deriver, []byte) {
	t.Helper()
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	clusterID, err := d.ClusterID()
	if err != nil {
		t.Fatal(err)
	}
	return d, clusterID
}

// measureClusterID makes the node of issuer a member of the cluster clusterID, as the bootstrapper does.
func measureClusterID(t *testing.T, issuer *vtpm.Issuer, clusterID []byte) {
	t.Helper()
	ev := measurements.ClusterIDEvent(clusterID)
	if err := issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
}

// memberControlPlane is a control-plane node on its own swtpm that is a member of the cluster of a fresh
// master secret (it measured the cluster ID), with the master secret's deriver and the cluster ID.
func memberControlPlane(t *testing.T) (*tpmtest.Node, *kms.Deriver, []byte) {
	t.Helper()
	cp := swtpmNode(t)
	d, clusterID := masterSecret(t)
	measureClusterID(t, cp.Issuer, clusterID)
	return cp, d, clusterID
}

// joinConfig writes a signed join configuration (policy, AK roots, cluster ID) into a fresh directory and
// loads it, logging to log (nil: no log).
func joinConfig(t *testing.T, policy measurements.M, roots []*x509.Certificate, clusterID []byte, log *slog.Logger) (string, *Config) {
	t.Helper()
	dir := t.TempDir()
	writeConfig(t, dir, policy, roots, clusterID)
	config, err := NewConfig(dir, log, testMACKey)
	if err != nil {
		t.Fatal(err)
	}
	return dir, config
}

// serveLoopback serves srv on a loopback port until the test ends (or stop) and returns its address.
func serveLoopback(t *testing.T, srv *grpc.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// startKeyService serves ks on a loopback port to the members validates, attesting with issuer; it returns
// the address and a stop for a test that restarts the service.
func startKeyService(t *testing.T, ks *keyservice.Server, issuer attestation.Issuer, members attestation.Validator) (string, func()) {
	t.Helper()
	srv, err := keyservice.NewGRPCServer(ks, issuer, []attestation.Validator{members})
	if err != nil {
		t.Fatal(err)
	}
	return serveLoopback(t, srv), srv.Stop
}

// startJoinService serves a join service with opts on a loopback port, attesting with issuer, and returns
// its address. What opts leaves out is filled in: uncounted tokens, no control-plane nodes, a fresh cluster
// CA, the API endpoint 10.0.0.1:6443, no log.
func startJoinService(t *testing.T, opts Options, issuer attestation.Issuer) string {
	t.Helper()
	if opts.Tokens == nil {
		opts.Tokens = &countingTokens{}
	}
	if opts.Roles == nil {
		opts.Roles = roles{}
	}
	if opts.PKIDir == "" {
		opts.PKIDir = filepath.Dir(writeCA(t))
	}
	if opts.Endpoint == "" {
		opts.Endpoint = "10.0.0.1:6443"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	srv, err := NewGRPCServer(New(opts), issuer)
	if err != nil {
		t.Fatal(err)
	}
	return serveLoopback(t, srv)
}

// joiner is a node that joins the join service at addr over mutual aTLS, attesting with issuer and trusting
// a service whose evidence an AK of roots signed and matches policy.
type joiner struct {
	addr   string
	issuer attestation.Issuer
	roots  []*x509.Certificate
	policy measurements.M
}

// join makes one join, on a connection (and so an aTLS handshake) of its own.
func (j joiner) join(t *testing.T, req *joinpb.JoinRequest, opts ...grpc.CallOption) (*joinpb.JoinResponse, error) {
	t.Helper()
	v, err := vtpm.NewValidator(j.roots, j.policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := atls.NewCredentials(j.issuer, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(j.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return joinpb.NewJoinClient(conn).Join(ctx, req, opts...)
}
