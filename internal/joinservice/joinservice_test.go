package joinservice

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

type countingTokens struct{ n int }

// roles is the provider's answer: which node names are control-plane nodes.
type roles map[string]bool

func (r roles) IsControlPlane(_ context.Context, name string) (bool, error) { return r[name], nil }

// recordedMesh is the cluster's record of WireGuard keys, by node name, and the mesh's preshared root key
// (none: the root is unavailable).
type recordedMesh struct {
	keys map[string]wgmesh.Key
	root wgmesh.Key
}

func (m *recordedMesh) PresharedRoot(context.Context) (wgmesh.Key, error) {
	if m.root == (wgmesh.Key{}) {
		return wgmesh.Key{}, errors.New("the key service is unreachable")
	}
	return m.root, nil
}

func (m *recordedMesh) Admit(_ context.Context, name string, key wgmesh.Key) error {
	m.keys[name] = key
	return nil
}

func (m *recordedMesh) List(context.Context) ([]meshpeers.Peer, error) {
	var out []meshpeers.Peer
	for name, key := range m.keys {
		out = append(out, meshpeers.Peer{Node: name, PublicKey: key})
	}
	return out, nil
}

func (c *countingTokens) CreateToken(context.Context, time.Duration) (string, error) {
	c.n++
	return "abcdef.0123456789abcdef", nil
}

// testMACKey stands for the key the cluster derives from its master secret for the join configuration's MAC.
var testMACKey = bytes.Repeat([]byte{0x6b}, 32)

// sign recomputes the MAC of the configuration in dir, as who holds the master secret (the CLI) does when it
// changes the configuration.
func sign(t testing.TB, dir string) {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range append(append([]string{}, configFiles...), extensionFiles...) {
		if raw, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			files[name] = raw
		}
	}
	if err := os.WriteFile(filepath.Join(dir, MACFile), []byte(hex.EncodeToString(ConfigMAC(testMACKey, files))), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeSigned writes one file of the configuration in dir and signs the configuration.
func writeSigned(t testing.TB, dir, name string, content []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
		t.Fatal(err)
	}
	sign(t, dir)
}

func writeConfig(t *testing.T, dir string, policy measurements.M, roots []*x509.Certificate, clusterID []byte) {
	t.Helper()
	data, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: policy, AKRoots: roots}, clusterID, testMACKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func writeCA(t *testing.T) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeletCSR is a kubelet's certificate request for the client identity of node name.
func kubeletCSR(t testing.TB, name string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// clusterPolicy is a node's policy without the cluster-ID PCR, as a cluster's configuration holds it.
func clusterPolicy(n *tpmtest.Node) measurements.M {
	m := measurements.M{}
	for k, v := range n.Policy {
		if k != measurements.PCRClusterID {
			m[k] = v
		}
	}
	return m
}

// A fresh node whose evidence matches the cluster's policy is admitted and told the cluster ID; after a policy
// change it no longer is; and a node that already measured a cluster ID cannot join again.
func TestJoinOverMutualATLS(t *testing.T) {
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	clusterID := bytes.Repeat([]byte{0x42}, 32)
	var logs syncBuffer
	dir, config := joinConfig(t, clusterPolicy(node), roots, clusterID, slog.New(slog.NewJSONHandler(&logs, nil)))
	tokens := &countingTokens{}
	caPath := writeCA(t)
	pki := filepath.Dir(caPath)
	for _, name := range joinpb.ControlPlaneFiles[2:] { // ca.crt and ca.key are the CA's
		os.MkdirAll(filepath.Dir(filepath.Join(pki, name)), 0o700)
		if err := os.WriteFile(filepath.Join(pki, name), []byte("content of "+name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	nodeRoles := roles{"node-0": false}
	mesh := &recordedMesh{keys: map[string]wgmesh.Key{"control-plane-0": {7}}, root: wgmesh.Key{0x5e}}
	addr := startJoinService(t, Options{Config: config, Tokens: tokens, Roles: nodeRoles, Mesh: mesh, PKIDir: pki}, node.Issuer)

	// The joining node trusts a join service that booted as it did (here: the same node).
	j := joiner{addr: addr, issuer: node.Issuer, roots: roots, policy: clusterPolicy(node)}
	_, meshKey, _ := wgmesh.GenerateKey()
	var joinWith func(controlPlane bool, key []byte) (*joinpb.JoinResponse, error)
	join := func() (*joinpb.JoinResponse, error) { return joinWith(false, meshKey[:]) }
	joinAs := func(controlPlane bool) (*joinpb.JoinResponse, error) { return joinWith(controlPlane, meshKey[:]) }
	joinWith = func(controlPlane bool, key []byte) (*joinpb.JoinResponse, error) {
		var pr peer.Peer
		resp, err := j.join(t, &joinpb.JoinRequest{ControlPlane: controlPlane, WireguardPublicKey: key, KubeletCsr: kubeletCSR(t, "node-0")}, grpc.Peer(&pr))
		if info, ok := pr.AuthInfo.(credentials.TLSInfo); err == nil && (!ok || info.State.CurveID != tls.X25519MLKEM768) {
			t.Fatalf("the join channel's key exchange is not the post-quantum hybrid: %+v", pr.AuthInfo)
		}
		return resp, err
	}

	// An invalid WireGuard key: refused, nothing recorded, no token.
	for _, bad := range [][]byte{make([]byte, 32), meshKey[:31]} {
		if _, err := joinWith(false, bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "WireGuard public key") {
			t.Fatalf("join with WireGuard key %x = %v, want InvalidArgument", bad, err)
		}
	}
	if len(mesh.keys) != 1 || tokens.n != 0 {
		t.Fatalf("a refused join left a trace: keys %v, %d tokens", mesh.keys, tokens.n)
	}
	// A rejoining node carries no key (it kept its published one): admitted, the mesh unchanged.
	if _, err := joinWith(false, nil); err != nil || len(mesh.keys) != 1 {
		t.Fatalf("rejoin without a WireGuard key: %v, keys %v", err, mesh.keys)
	}
	resp, err := join()
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	wantHash, _ := CACertHash(caPath)
	if !bytes.Equal(resp.GetClusterId(), clusterID) || resp.GetToken() != "abcdef.0123456789abcdef" || resp.GetCaCertHash() != wantHash || resp.GetApiEndpoint() != "10.0.0.1:6443" {
		t.Fatalf("Join response: %+v", resp)
	}
	if !bytes.Equal(resp.GetMeshPskRoot(), mesh.root[:]) {
		t.Fatalf("the join answer's WireGuard preshared root key is %x, want %x", resp.GetMeshPskRoot(), mesh.root)
	}
	// Without the preshared root key the join is refused and the node is not admitted: it could configure
	// no peer.
	root := mesh.root
	mesh.root = wgmesh.Key{}
	_, otherKey, _ := wgmesh.GenerateKey()
	if _, err := joinWith(false, otherKey[:]); status.Code(err) != codes.Unavailable {
		t.Fatalf("join without the preshared root key = %v, want Unavailable", err)
	}
	for name, k := range mesh.keys {
		if k == otherKey {
			t.Fatalf("a join refused for want of the preshared root key admitted %s", name)
		}
	}
	mesh.root = root

	if len(resp.GetControlPlaneFiles()) != 0 {
		t.Fatal("a worker join got the control plane's PKI")
	}
	// The kubelet's client certificate: the attested node's identity, signed by the cluster CA.
	caCert, err := x509.ParseCertificate(resp.GetCaCertificate())
	if err != nil {
		t.Fatal(err)
	}
	kc, err := x509.ParseCertificate(resp.GetKubeletCertificate())
	if err != nil {
		t.Fatal(err)
	}
	if err := kc.CheckSignatureFrom(caCert); err != nil || kc.Subject.CommonName != "system:node:node-0" || len(kc.Subject.Organization) != 1 || kc.Subject.Organization[0] != "system:nodes" ||
		len(kc.ExtKeyUsage) != 1 || kc.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || kc.IsCA {
		t.Fatalf("kubelet certificate %v (%v)", kc.Subject, err)
	}
	// Its key is recorded under its attested name, and it learns the other nodes of the mesh (not itself).
	if mesh.keys["node-0"] != meshKey {
		t.Fatalf("recorded WireGuard keys: %v", mesh.keys)
	}
	if p := resp.GetMeshPeers(); len(p) != 1 || p[0].GetNode() != "control-plane-0" || !bytes.Equal(p[0].GetPublicKey(), []byte{7, 31: 0}) {
		t.Fatalf("mesh peers in the answer: %v", p)
	}
	// Only a node the provider names a control-plane node gets the control plane's PKI.
	if _, err := joinAs(true); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `node "node-0" is not a control-plane node`) {
		t.Fatalf("control-plane join of a worker = %v, want PermissionDenied", err)
	}
	nodeRoles["node-0"] = true
	resp, err = joinAs(true)
	if err != nil {
		t.Fatalf("control-plane join: %v", err)
	}
	caKey, _ := os.ReadFile(filepath.Join(pki, "ca.key"))
	if got := resp.GetControlPlaneFiles(); len(got) != len(joinpb.ControlPlaneFiles) || got[1].GetName() != "ca.key" || !bytes.Equal(got[1].GetContent(), caKey) || string(got[2].GetContent()) != "content of sa.key" {
		t.Fatalf("control-plane files: %v", got)
	}
	nodeRoles["node-0"] = false

	// The cluster's policy changes: the same node no longer matches and gets nothing.
	strict := clusterPolicy(node)
	strict[4] = measurements.Measurement{Expected: measurements.Digest{1}}
	writeConfig(t, dir, strict, roots, clusterID)
	if _, err := join(); err == nil {
		t.Fatal("a node that does not match the new policy was admitted")
	}
	if !strings.Contains(logs.String(), `"msg":"join refused: the node's measurements differ from the cluster's","pcrs":[4],"node":"node-0"`) {
		t.Fatalf("the refusal does not say which PCR differed:\n%s", logs.String())
	}
	// The configuration becomes invalid: nobody is admitted.
	writeSigned(t, dir, ClusterIDFile, []byte("nope"))
	if _, err := join(); err == nil {
		t.Fatal("admitted with an invalid configuration")
	}
	writeConfig(t, dir, clusterPolicy(node), roots, clusterID)
	if _, err := join(); err != nil {
		t.Fatalf("Join after restoring the configuration: %v", err)
	}

	// Once the node measured a cluster ID it is no longer fresh.
	ev := measurements.ClusterIDEvent(clusterID)
	if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	if _, err := join(); err == nil {
		t.Fatal("a node that already belongs to a cluster joined again")
	}
	if tokens.n != 4 {
		t.Fatalf("%d tokens created, want one per admitted join (4)", tokens.n)
	}
}

func TestJoinRequiresAnAttestedPeer(t *testing.T) {
	s := New(Options{Tokens: &countingTokens{}, Roles: roles{}, Log: slog.New(slog.DiscardHandler)})
	if _, err := s.Join(context.Background(), &joinpb.JoinRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Join without aTLS = %v, want Unauthenticated", err)
	}
}

func TestConfigRejects(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	roots := []*x509.Certificate{node.CA.Certificate()}
	id := bytes.Repeat([]byte{1}, 32)
	withPCR15 := clusterPolicy(node)
	withPCR15[15] = measurements.Measurement{}
	if _, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, AKRoots: roots}, id, testMACKey, nil); err == nil {
		t.Fatal("ConfigData accepted an empty policy")
	}
	if _, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: withPCR15, AKRoots: roots}, id, testMACKey, nil); err == nil {
		t.Fatal("ConfigData accepted a policy with the cluster-ID PCR")
	}
	for name, bad := range tpmtest.AcceptAnyImage(clusterPolicy(node)) {
		// The CLI's side refuses to write it, and the join service refuses to run with it: under it the join
		// service would admit a node booted from any image, or from the genuine image with any boot parameters.
		if _, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: bad, AKRoots: roots}, id, testMACKey, nil); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
			t.Errorf("%s: ConfigData = %v, want ErrAcceptsAnyImage", name, err)
		}
		dir := t.TempDir()
		writeConfig(t, dir, clusterPolicy(node), roots, id)
		raw, _ := json.Marshal(bad)
		os.WriteFile(filepath.Join(dir, MeasurementsFile), raw, 0o644)
		sign(t, dir) // even with a MAC that verifies: the policy itself is invalid
		if _, err := NewConfig(dir, nil, testMACKey); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
			t.Errorf("%s: NewConfig = %v, want ErrAcceptsAnyImage", name, err)
		}
	}
	for name, mutate := range map[string]func(dir string){
		"missing file": func(dir string) { os.Remove(filepath.Join(dir, AKRootsFile)) },
		"PCR 15": func(dir string) {
			raw, _ := json.Marshal(withPCR15)
			os.WriteFile(filepath.Join(dir, MeasurementsFile), raw, 0o644)
		},
		"no roots": func(dir string) { os.WriteFile(filepath.Join(dir, AKRootsFile), []byte("\n"), 0o644) },
		"key not cert": func(dir string) {
			os.WriteFile(filepath.Join(dir, AKRootsFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), 0o644)
		},
		"trailing junk": func(dir string) {
			os.WriteFile(filepath.Join(dir, AKRootsFile), append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: roots[0].Raw}), "junk"...), 0o644)
		},
		"short ID":       func(dir string) { os.WriteFile(filepath.Join(dir, ClusterIDFile), []byte("abcd"), 0o644) },
		"no attestation": func(dir string) { os.Remove(filepath.Join(dir, AttestationFile)) },
		"attestation junk": func(dir string) {
			os.WriteFile(filepath.Join(dir, AttestationFile), []byte(`{"version":1,"variant":"mini-vtpm"}x`), 0o644)
		},
		"oversize": func(dir string) {
			os.WriteFile(filepath.Join(dir, AttestationFile), bytes.Repeat([]byte(" "), MaxConfigFileSize+1), 0o644)
		},
		"SNP on mini-vtpm": func(dir string) {
			os.WriteFile(filepath.Join(dir, AttestationFile), []byte(`{"version":1,"variant":"mini-vtpm","snp":{"policy":{"measurements":[],"minimumTCB":{}}}}`), 0o644)
		},
		"policy junk": func(dir string) { os.WriteFile(filepath.Join(dir, MeasurementsFile), []byte("{"), 0o644) },
	} {
		dir := t.TempDir()
		writeConfig(t, dir, clusterPolicy(node), roots, id)
		mutate(dir)
		sign(t, dir) // wrong content, however authentic
		if _, err := NewConfig(dir, nil, testMACKey); err == nil {
			t.Errorf("%s: configuration accepted", name)
		}
	}
}

func TestCACertHash(t *testing.T) {
	path := writeCA(t)
	h, err := CACertHash(path)
	if err != nil || !strings.HasPrefix(h, "sha256:") || len(h) != len("sha256:")+64 {
		t.Fatalf("CACertHash = %q, %v", h, err)
	}
	os.WriteFile(path, []byte("not pem"), 0o644)
	if _, err := CACertHash(path); err == nil {
		t.Fatal("accepted a non-PEM CA file")
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recordingIssuer keeps the evidence it issues; replayingIssuer hands out that evidence again instead of
// fresh evidence, as an attacker who captured a join would.
type recordingIssuer struct {
	attestation.Issuer
	mu   sync.Mutex
	last []byte
}

func (r *recordingIssuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	ev, err := r.Issuer.Issue(ctx, nonce, userData)
	r.mu.Lock()
	r.last = ev
	r.mu.Unlock()
	return ev, err
}

type replayingIssuer struct{ *recordingIssuer }

func (r replayingIssuer) Issue(context.Context, []byte, []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last, nil
}

// A join captured on the wire cannot be replayed: its evidence is bound to the join service's nonce of that
// handshake and to that handshake's key.
func TestJoinReplayIsRefused(t *testing.T) {
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	_, config := joinConfig(t, clusterPolicy(node), roots, bytes.Repeat([]byte{1}, 32), nil)
	tokens := &countingTokens{}
	addr := startJoinService(t, Options{Config: config, Tokens: tokens}, node.Issuer)
	recorder := &recordingIssuer{Issuer: node.Issuer}
	join := func(issuer attestation.Issuer) error {
		_, err := joiner{addr: addr, issuer: issuer, roots: roots, policy: clusterPolicy(node)}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
		return err
	}
	if err := join(recorder); err != nil {
		t.Fatalf("genuine join: %v", err)
	}
	if err := join(replayingIssuer{recorder}); err == nil {
		t.Fatal("a replayed join was admitted")
	}
	if tokens.n != 1 {
		t.Fatalf("%d tokens issued, want 1 (none for the replay)", tokens.n)
	}
}
