package suite

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

func init() {
	register(Suite{Names: []string{"join-ticket", "join-storm-p99", "join-storm-failures"}, Run: runJoin})
}

// stubTokens stands in for the Kubernetes API (the end-to-end test creates tokens for real): the figures are
// the join service's own work, attestation included.
type stubTokens struct{}

func (stubTokens) CreateToken(context.Context, time.Duration) (string, error) {
	return "abcdef.0123456789abcdef", nil
}

// stubMesh stands in for the node's WireGuard agent and the cluster's record of keys (the Kubernetes API).
type stubMesh struct{}

func (stubMesh) Admit(context.Context, string, wgmesh.Key) error { return nil }

func (stubMesh) PresharedRoot(context.Context) (wgmesh.Key, error) { return wgmesh.Key{2}, nil }

func (stubMesh) List(context.Context) ([]meshpeers.Peer, error) {
	return []meshpeers.Peer{{Node: "control-plane-0", PublicKey: wgmesh.Key{1}}}, nil
}

type noRoles struct{}

func (noRoles) IsControlPlane(context.Context, string) (bool, error) { return false, nil }

// runJoin measures joins against the join service on loopback: the joining node and the join service each
// have their own swtpm and attest each other (mutual aTLS, a fresh quote on both sides), then the Join call.
// join-ticket is the median of sequential joins; join-storm sends 100 joins at once and reports the 99th
// percentile and the number of failed joins.
func runJoin(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "bench-join-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	server, err := tpmtest.NewSWTPMNode(ctx, filepath.Join(dir, "server"), vtpm.ECC)
	if err != nil {
		return nil, err
	}
	defer server.Close()
	client, err := tpmtest.NewSWTPMNode(ctx, filepath.Join(dir, "client"), vtpm.ECC)
	if err != nil {
		return nil, err
	}
	defer client.Close()

	// The join service's configuration admits the client; the client trusts the server's measurements.
	clusterPolicy := func(n *tpmtest.Node) measurements.M {
		m := measurements.M{}
		for k, v := range n.Policy {
			if k != measurements.PCRClusterID {
				m[k] = v
			}
		}
		return m
	}
	configDir := filepath.Join(dir, "config")
	pkiDir := filepath.Join(dir, "pki")
	for _, d := range []string{configDir, pkiDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	macKey := make([]byte, 32) // the key the cluster derives from its master secret
	if _, err := rand.Read(macKey); err != nil {
		return nil, err
	}
	data, err := joinservice.ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: clusterPolicy(client), AKRoots: []*x509.Certificate{client.CA.Certificate()}}, make([]byte, 32), macKey, nil)
	if err != nil {
		return nil, err
	}
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(configDir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	if err := writeClusterCA(filepath.Join(pkiDir, "ca.crt")); err != nil {
		return nil, err
	}
	config, err := joinservice.NewConfig(configDir, nil, macKey)
	if err != nil {
		return nil, err
	}
	srv, err := joinservice.NewGRPCServer(joinservice.New(joinservice.Options{
		Config: config, Tokens: stubTokens{}, Roles: noRoles{}, Mesh: stubMesh{}, PKIDir: pkiDir, Endpoint: "10.0.0.1:6443", Log: discardLogger(),
	}), server.Issuer)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.Serve(ln)
	defer srv.Stop()

	v, err := vtpm.NewValidator([]*x509.Certificate{server.CA.Certificate()}, clusterPolicy(server), nil)
	if err != nil {
		return nil, err
	}
	creds, err := atls.NewCredentials(client.Issuer, []attestation.Validator{v})
	if err != nil {
		return nil, err
	}
	_, meshKey, err := wgmesh.GenerateKey()
	if err != nil {
		return nil, err
	}
	kubeletKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:node-0", Organization: []string{"system:nodes"}}}, kubeletKey)
	if err != nil {
		return nil, err
	}
	// Each join comes from its own loopback address, as joining nodes do from their own: the join service
	// limits the evidence it issues per source (see atls.IssuanceLimiter).
	var joins atomic.Int64
	join := func() (time.Duration, error) {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(joins.Add(1)%250+1))}
		dialer := net.Dialer{LocalAddr: src}
		start := time.Now()
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(creds),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) }))
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		callCtx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		resp, err := joinpb.NewJoinClient(conn).Join(callCtx, &joinpb.JoinRequest{WireguardPublicKey: meshKey[:], KubeletCsr: csr})
		if err != nil {
			return 0, err
		}
		if resp.GetToken() == "" {
			return 0, errors.New("join answered without a token")
		}
		return time.Since(start), nil
	}

	var seq []time.Duration
	for range 60 {
		d, err := join()
		if err != nil {
			return nil, fmt.Errorf("join: %w", err)
		}
		seq = append(seq, d)
	}
	slices.Sort(seq)

	const storm = 100
	var (
		mu       sync.Mutex
		times    []time.Duration
		failures int
		wg       sync.WaitGroup
	)
	for range storm {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := join()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures++
				return
			}
			times = append(times, d)
		}()
	}
	wg.Wait()
	slices.Sort(times)
	p99 := time.Duration(0)
	if len(times) > 0 {
		p99 = times[min(len(times)-1, len(times)*99/100)]
	}
	return []Result{
		{"join-ticket", ms(seq[len(seq)/2]), "ms"},
		{"join-storm-p99", ms(p99), "ms"},
		{"join-storm-failures", float64(failures), "joins"},
	}, nil
}

// writeClusterCA writes a CA certificate standing in for kubeadm's cluster CA (the join service hashes it).
func writeClusterCA(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(filepath.Dir(path), "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}
