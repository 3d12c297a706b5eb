package bootstrapper

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// The tests of a qemu-sev-snp node: the guest's SEV-SNP firmware is snptest's Platform (a Milan machine of a
// test AMD PKI that signs reports as the secure processor does), launched for a node name (HOST_DATA); the
// node's attestation is the bootstrapper's own (snpAttestation), and it joins a real join service over
// mutual aTLS with the bootstrapper's own credentials and request (mutualCredentials, joinAt).

// snpImage is a node image as SEV-SNP measures it: its launch measurement, on machines of the test PKI.
type snpImage struct {
	pki         *snptest.PKI
	measurement [snp.MeasurementSize]byte
	vopts       snp.VerifierOptions
}

func newSNPImage(t *testing.T, pki *snptest.PKI, measurement byte) snpImage {
	t.Helper()
	roots, err := pki.Roots()
	if err != nil {
		t.Fatal(err)
	}
	return snpImage{pki: pki, measurement: [snp.MeasurementSize]byte{measurement, 0x5e, 0x5e}, vopts: snp.VerifierOptions{Roots: roots}}
}

// launch is a guest of the image that the host launched for the node name.
func (img snpImage) launch(t *testing.T, name string) *snptest.Platform {
	t.Helper()
	pl, err := img.pki.NewPlatform(img.measurement)
	if err != nil {
		t.Fatal(err)
	}
	pl.HostData = snp.HostDataForNode(name)
	return pl
}

// node boots the node name of the image: its attestation, as the bootstrapper sets it up.
func (img snpImage) node(t *testing.T, name string) (*snp.Issuer, peerTrust) {
	t.Helper()
	issuer, peers, err := snpAttestation(context.Background(), img.launch(t, name), name, img.vopts)
	if err != nil {
		t.Fatal(err)
	}
	return issuer, peers
}

// clusterPolicy is the attestation policy of a cluster of the image, as the CLI writes it.
func (img snpImage) clusterPolicy(t *testing.T) *validators.Policy {
	t.Helper()
	return &validators.Policy{Variant: attestation.QEMUSEVSNP.Name, SNP: &validators.SNP{Policy: *img.launch(t, "any").Policy()}}
}

// snpMesh is the cluster's record of WireGuard keys by node name.
type snpMesh struct {
	mu   sync.Mutex
	keys map[string]wgmesh.Key
}

func (m *snpMesh) Admit(_ context.Context, name string, key wgmesh.Key) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = map[string]wgmesh.Key{}
	}
	m.keys[name] = key
	return nil
}

func (m *snpMesh) List(context.Context) ([]meshpeers.Peer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []meshpeers.Peer
	for n, k := range m.keys {
		out = append(out, meshpeers.Peer{Node: n, PublicKey: k})
	}
	return out, nil
}

func (m *snpMesh) PresharedRoot(context.Context) (wgmesh.Key, error) { return wgmesh.Key{1, 2, 3}, nil }

func (m *snpMesh) admitted() map[string]wgmesh.Key {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]wgmesh.Key{}
	for n, k := range m.keys {
		out[n] = k
	}
	return out
}

type snpTokens struct{}

func (snpTokens) CreateToken(context.Context, time.Duration) (string, error) {
	return "abcdef.0123456789abcdef", nil
}

type noControlPlane struct{}

func (noControlPlane) IsControlPlane(context.Context, string) (bool, error) { return false, nil }

// writeClusterCA writes a cluster CA (kubeadm's ca.crt and ca.key) into a fresh directory.
func writeClusterCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// syncBuffer is a log that the join service writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startSNPJoinService serves a join service for a cluster of policy with clusterID on a loopback port; it
// attests with issuer (its control-plane node's) and trusts the test PKI's roots. It returns the address and
// the log of its configuration, where it says why it refused a node.
func startSNPJoinService(t *testing.T, img snpImage, policy *validators.Policy, clusterID []byte, issuer attestation.Issuer, mesh joinservice.Mesh) (string, *syncBuffer) {
	t.Helper()
	macKey := bytes.Repeat([]byte{0x4d}, 32)
	data, err := joinservice.ConfigData(policy, clusterID, macKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logs := &syncBuffer{}
	config, err := joinservice.NewConfigWith(dir, slog.New(slog.NewTextHandler(logs, nil)), macKey, validators.Options{SNPRoots: img.vopts.Roots})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := joinservice.NewGRPCServer(joinservice.New(joinservice.Options{
		Config: config, Tokens: snpTokens{}, Roles: noControlPlane{}, Mesh: mesh, PKIDir: writeClusterCA(t),
		Endpoint: "10.0.0.1:6443", Log: slog.New(slog.DiscardHandler),
	}), issuer)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), logs
}

// snpJoin makes one join of the node of issuer and peers, named name, at the join service at addr, as the
// bootstrapper's joiner does: its own credentials, a kubelet request for its name and a new WireGuard key.
func snpJoin(t *testing.T, addr string, issuer attestation.Issuer, peers peerTrust, name string, meshKey wgmesh.Key) (*joinpb.JoinResponse, *ecdsa.PrivateKey, error) {
	t.Helper()
	ctx := context.Background()
	creds, err := mutualCredentials(ctx, nil, issuer, peers, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, nil, err
	}
	key, csr, err := kubeletRequest(name)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := joinAt(ctx, addr, creds, &joinpb.JoinRequest{WireguardPublicKey: meshKey[:], KubeletCsr: csr})
	return resp, key, err
}

// A qemu-sev-snp node joins without a TPM: the join service admits it by its SEV-SNP report, under the name
// its HOST_DATA binds, and the node binds the cluster ID into its reports afterwards, so that it cannot pose
// as a fresh node again.
func TestSNPNodeJoins(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	clusterID := bytes.Repeat([]byte{0xc1}, 32)
	cp, _ := img.node(t, "control-plane-0")
	if _, err := recordClusterID(cp, clusterID); err != nil {
		t.Fatal(err)
	}
	mesh := &snpMesh{}
	addr, logs := startSNPJoinService(t, img, img.clusterPolicy(t), clusterID, cp, mesh)

	issuer, peers := img.node(t, "worker-0")
	meshKey := wgmesh.Key{0xee, 1}
	resp, kubeletKey, err := snpJoin(t, addr, issuer, peers, "worker-0", meshKey)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if !bytes.Equal(resp.GetClusterId(), clusterID) {
		t.Errorf("cluster ID %x", resp.GetClusterId())
	}
	if _, err := kubeletCredentials(resp, kubeletKey); err != nil {
		t.Errorf("the kubelet credentials of the answer: %v", err)
	}
	if got := mesh.admitted(); len(got) != 1 || got["worker-0"] != meshKey {
		t.Errorf("mesh admitted %v, want worker-0 with its key", got)
	}
	where, err := recordClusterID(issuer, resp.GetClusterId())
	if err != nil || !strings.Contains(where, "REPORT_DATA") {
		t.Fatalf("recording the cluster ID: %q, %v", where, err)
	}

	// Attack: the node that joined (a member now) joins again, as a fresh node: refused in the handshake, as
	// a vTPM node with the cluster ID in PCR 15 is. A join is one per boot.
	_, _, err = snpJoin(t, addr, issuer, peers, "worker-0", wgmesh.Key{0xee, 2})
	if err == nil {
		t.Error("a node that already joined was admitted again as a fresh node")
	}
	if !strings.Contains(logs.String(), "already belongs to a cluster") {
		t.Errorf("the join service does not say that the node is no longer fresh:\n%s", logs)
	}
	if _, err := recordClusterID(issuer, bytes.Repeat([]byte{0xc2}, 32)); !errors.Is(err, snp.ErrAlreadyMember) {
		t.Errorf("binding a second cluster ID: %v, want ErrAlreadyMember", err)
	}
	if got := mesh.admitted(); got["worker-0"] != meshKey {
		t.Errorf("the second join changed the mesh: %v", got)
	}
}

// Attacks on the join of a qemu-sev-snp node; each is refused, and nothing is admitted.
func TestSNPJoinAttacks(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	clusterID := bytes.Repeat([]byte{0xc1}, 32)
	cp, _ := img.node(t, "control-plane-0")
	if _, err := recordClusterID(cp, clusterID); err != nil {
		t.Fatal(err)
	}
	mesh := &snpMesh{}
	addr, logs := startSNPJoinService(t, img, img.clusterPolicy(t), clusterID, cp, mesh)
	nothingAdmitted := func(attack string) {
		t.Helper()
		if got := mesh.admitted(); len(got) != 0 {
			t.Errorf("%s: the mesh admitted %v", attack, got)
		}
	}

	t.Run("a node of another launch measurement", func(t *testing.T) {
		// A modified image (another kernel, initrd or command line) on genuine hardware.
		rogueImg := newSNPImage(t, pki, 0x66)
		rogue, _ := rogueImg.node(t, "worker-0")
		// The rogue node would trust join services of its own image only; here it trusts the genuine one, so
		// that only the join service's check stands between it and the cluster.
		_, _, err := snpJoin(t, addr, rogue, snpPeersOf(t, img), "worker-0", wgmesh.Key{0xee})
		if err == nil {
			t.Error("a node of another launch measurement was admitted")
		}
		if !strings.Contains(logs.String(), "launch measurement "+hex.EncodeToString(rogueImg.measurement[:])+" is not one of") {
			t.Errorf("the join service does not say that the launch measurement is not accepted:\n%s", logs)
		}
		nothingAdmitted("another launch measurement")
	})

	t.Run("a node with vTPM evidence (variant confusion)", func(t *testing.T) {
		// A mini-vtpm node with a provider-certified attestation key: valid evidence, of another variant.
		node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Close() })
		_, _, err = snpJoin(t, addr, node.Issuer, snpPeersOf(t, img), "worker-0", wgmesh.Key{0xee})
		if err == nil {
			t.Error("a node with vTPM evidence joined a qemu-sev-snp cluster")
		}
		// Refused by the aTLS layer (no evidence of the cluster's variant) before any validator runs; with that
		// check gone, the qemu-sev-snp validator refuses the document's variant.
		nothingAdmitted("vTPM evidence")
	})

	t.Run("a node that asks for another node's identity", func(t *testing.T) {
		// The host launched the guest as worker-1; it asks for worker-0's kubelet certificate and mesh entry.
		issuer, peers := img.node(t, "worker-1")
		_, _, err := snpJoin(t, addr, issuer, peers, "worker-0", wgmesh.Key{0xee})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("worker-1 asking for worker-0's kubelet certificate: %v, want InvalidArgument", err)
		}
		nothingAdmitted("another node's identity")
	})

	t.Run("a node the host tells another name than it launched it with", func(t *testing.T) {
		// The metadata says worker-0; HOST_DATA says worker-1: the node does not start.
		_, _, err := snpAttestation(context.Background(), img.launch(t, "worker-1"), "worker-0", img.vopts)
		if err == nil || !strings.Contains(err.Error(), "another node") {
			t.Errorf("a node launched as worker-1 booted as worker-0: %v", err)
		}
		_, _, err = snpAttestation(context.Background(), img.launch(t, ""), "worker-0", img.vopts)
		if err == nil {
			t.Error("a node launched without HOST_DATA booted")
		}
	})

	t.Run("a join service of another launch measurement", func(t *testing.T) {
		// The host redirects the node to a join service of a rogue image (genuine hardware), which would hand
		// it keys the host knows: the node refuses it.
		rogueCP, _ := newSNPImage(t, pki, 0x66).node(t, "control-plane-0")
		if _, err := recordClusterID(rogueCP, clusterID); err != nil {
			t.Fatal(err)
		}
		rogueMesh := &snpMesh{}
		// The rogue service would admit the genuine node: only the node's own check stops it.
		rogueAddr, _ := startSNPJoinService(t, img, img.clusterPolicy(t), clusterID, rogueCP, rogueMesh)
		issuer, peers := img.node(t, "worker-0")
		_, _, err := snpJoin(t, rogueAddr, issuer, peers, "worker-0", wgmesh.Key{0xee})
		if err == nil || !strings.Contains(err.Error(), "peer attestation failed") || !strings.Contains(err.Error(), "launch measurement") {
			t.Errorf("joining through a join service of another launch measurement: %v, want the node's refusal", err)
		}
		if got := rogueMesh.admitted(); len(got) != 0 {
			t.Errorf("the node handed the rogue join service its key: %v", got)
		}
	})

	t.Run("a peer policy hint", func(t *testing.T) {
		// A qemu-sev-snp node cannot measure a hint: it trusts by none.
		issuer, peers := img.node(t, "worker-0")
		hint := &policyupdate.PeerHint{}
		if _, err := peers.joinService(context.Background(), nil, hint, nil); err == nil {
			t.Error("a qemu-sev-snp node trusts join services by a peer policy hint")
		}
		if err := measurePeerHint(issuer, hint); err == nil {
			t.Error("a qemu-sev-snp node measured a peer policy hint")
		}
		if err := measurePeerHint(issuer, nil); err != nil {
			t.Errorf("no hint: %v", err)
		}
	})
}

// snpPeersOf is the trust of a genuine node of img in its peers.
func snpPeersOf(t *testing.T, img snpImage) peerTrust {
	t.Helper()
	_, peers := img.node(t, "worker-9")
	return peers
}

// A qemu-sev-snp control-plane node trusts key services of its own image that are members of its own cluster,
// and only once it is a member itself.
func TestSNPKeyServiceTrust(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	ctx := context.Background()
	clusterA, clusterB := bytes.Repeat([]byte{0xa1}, 32), bytes.Repeat([]byte{0xb1}, 32)
	node, peers := img.node(t, "control-plane-1")
	if _, err := peers.keyService(ctx, nil, node, nil, nil); err == nil {
		t.Fatal("a node that belongs to no cluster trusts a key service")
	}
	if _, err := recordClusterID(node, clusterA); err != nil {
		t.Fatal(err)
	}
	v, err := peers.keyService(ctx, nil, node, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	evidenceOf := func(clusterID []byte, measurement byte) []byte {
		i, _ := newSNPImage(t, pki, measurement).node(t, "control-plane-0")
		if clusterID != nil {
			if _, err := recordClusterID(i, clusterID); err != nil {
				t.Fatal(err)
			}
		}
		ev, err := i.Issue(ctx, bytes.Repeat([]byte{5}, attestation.NonceSize), []byte("tls key"))
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	nonce := bytes.Repeat([]byte{5}, attestation.NonceSize)
	if _, err := v.Validate(ctx, evidenceOf(clusterA, 0x11), nonce); err != nil {
		t.Errorf("a key service of the node's image and cluster: %v", err)
	}
	for name, ev := range map[string][]byte{
		// The host points the node at the key service of another cluster of the same image, whose master
		// secret it knows (or whose operator it is).
		"a member of another cluster": evidenceOf(clusterB, 0x11),
		"a fresh node":                evidenceOf(nil, 0x11),
		"another launch measurement":  evidenceOf(clusterA, 0x66),
	} {
		if _, err := v.Validate(ctx, ev, nonce); !errors.Is(err, snp.ErrPolicy) {
			t.Errorf("%s: %v, want a refusal by policy", name, err)
		}
	}
}

// The evidence a qemu-sev-snp node's verification service issues binds the verifier's nonce and the node's
// WireGuard key: a replay of it for another nonce, or a host that swaps the key in it, is refused.
func TestSNPVerifyServiceBindsNonceAndMeshKey(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	clusterID := bytes.Repeat([]byte{0xc1}, 32)
	issuer, _ := img.node(t, "worker-0")
	if _, err := recordClusterID(issuer, clusterID); err != nil {
		t.Fatal(err)
	}
	meshKey := wgmesh.Key{0xaa, 0xbb}
	srv, err := verifyservice.Listen("127.0.0.1", 0, 0, issuer, func() (wgmesh.Key, error) { return meshKey, nil }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(srv.Close)
	_, grpcAddr := srv.Addrs()

	verifier, err := snp.NewVerifier(img.vopts)
	if err != nil {
		t.Fatal(err)
	}
	member, err := snp.NewMemberValidator(verifier, img.launch(t, "x").Policy(), clusterID)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{0x01}, attestation.NonceSize)
	ev, err := verifyservice.FetchGRPCMeshKey(ctx, grpcAddr, nonce)
	if err != nil {
		t.Fatal(err)
	}
	ud, err := member.Validate(ctx, ev, nonce)
	if err != nil {
		t.Fatalf("the node's evidence: %v", err)
	}
	if !bytes.Equal(ud, verifyservice.MeshKeyUserData(meshKey)) {
		t.Fatalf("user data %x, want the mesh key's", ud)
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil || doc.AttestationKeySubject() != "worker-0" {
		t.Fatalf("the evidence names %q (%v), want worker-0", doc.AttestationKeySubject(), err)
	}

	// Replay: the evidence answers another verifier's nonce (or the same verifier's next one).
	if _, err := member.Validate(ctx, ev, bytes.Repeat([]byte{0x02}, attestation.NonceSize)); !errors.Is(err, snp.ErrReportData) {
		t.Errorf("replayed evidence: %v, want a REPORT_DATA mismatch", err)
	}
	// The host swaps the mesh key in the evidence for one it holds.
	doc.UserData = verifyservice.MeshKeyUserData(wgmesh.Key{0x66})
	swapped, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := member.Validate(ctx, swapped, nonce); !errors.Is(err, snp.ErrReportData) {
		t.Errorf("evidence with a swapped mesh key: %v, want a REPORT_DATA mismatch", err)
	}
}

// The first control-plane node of a qemu-sev-snp cluster is initialised without a TPM: the request carries the
// SEV-SNP policy and no PCR measurements, and the node binds the cluster ID into its reports, so that it
// cannot be initialised again, nor pose as fresh to a join service.
func TestSNPInit(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	issuer, _ := img.node(t, "control-plane-0")
	var startedWith *validators.Policy
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: issuer, k8s: &recordingKubernetes{}, log: slog.New(slog.DiscardHandler),
		life: lifecycleFuncs{initialised: func(_ *kms.MasterSecret, _ []byte, att *validators.Policy, _ Egress) error {
			startedWith = att
			return nil
		}}}
	ms, _ := kms.GenerateMasterSecret()
	att, err := validators.MarshalPolicy(img.clusterPolicy(t))
	if err != nil {
		t.Fatal(err)
	}
	pcrs, _ := json.Marshal(map[string]any{"4": map[string]string{"expected": strings.Repeat("ab", 32)}, "8": map[string]string{"expected": strings.Repeat("cd", 32)}})
	ctx := context.Background()
	for name, req := range map[string]*initpb.InitRequest{
		// PCRs nothing would enforce.
		"PCR measurements":      {MasterSecret: ms.Key, Salt: ms.Salt, Measurements: pcrs, Attestation: att},
		"no attestation policy": {MasterSecret: ms.Key, Salt: ms.Salt},
		"another variant":       {MasterSecret: ms.Key, Salt: ms.Salt, Attestation: []byte(`{"version":1,"variant":"mini-vtpm"}`)},
	} {
		req.InitSecret = testInitSecret
		if _, err := s.Init(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: Init = %v, want InvalidArgument", name, err)
		}
	}
	if issuer.ClusterID() != nil {
		t.Fatal("a refused init made the node a member")
	}
	// As the CLI sends it: the measurements of a policy without PCRs are JSON null.
	resp, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: []byte("null"), Attestation: att})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if !bytes.Equal(issuer.ClusterID(), resp.GetClusterId()) {
		t.Fatalf("the node binds cluster %x, want %x", issuer.ClusterID(), resp.GetClusterId())
	}
	if startedWith == nil || startedWith.Variant != attestation.QEMUSEVSNP.Name || startedWith.SNP == nil || len(startedWith.Measurements) != 0 {
		t.Fatalf("the cluster services were started with %+v", startedWith)
	}
	if _, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: []byte("null"), Attestation: att}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second Init: %v, want FailedPrecondition", err)
	}
	// The CLI's check of a fresh node (and a join service's) no longer accepts it.
	verifier, err := snp.NewVerifier(img.vopts)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := snp.NewValidator(verifier, img.launch(t, "x").Policy())
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, attestation.NonceSize)
	ev, err := issuer.Issue(ctx, nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Validate(ctx, ev, nonce); !errors.Is(err, snp.ErrReportData) {
		t.Errorf("the initialised node passes as fresh: %v", err)
	}
}
