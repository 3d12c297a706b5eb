package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// The init secret is generated once per workspace, from crypto/rand, kept readable by its owner only, and
// reused by a retried apply; a damaged or exposed file is refused, never replaced.
func TestInitSecretIsGeneratedOnceAndKeptPrivate(t *testing.T) {
	ws := t.TempDir()
	if _, err := requireInitSecret(ws); err == nil || !strings.Contains(err.Error(), "no "+InitSecretFile) || !strings.Contains(err.Error(), "apply") {
		t.Fatalf("requireInitSecret without a file = %v", err)
	}
	secret, err := loadOrCreateInitSecret(ws)
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) != initpb.InitSecretSize || bytes.Equal(secret, make([]byte, len(secret))) {
		t.Fatalf("init secret %d bytes, all zero: %v", len(secret), bytes.Equal(secret, make([]byte, len(secret))))
	}
	path := filepath.Join(ws, InitSecretFile)
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("%s: mode %v, %v; want 0600", InitSecretFile, info.Mode().Perm(), err)
	}
	again, err := loadOrCreateInitSecret(ws)
	if err != nil || !bytes.Equal(again, secret) {
		t.Fatalf("a retried apply got another init secret (%v): the nodes would refuse it", err)
	}
	if got, err := requireInitSecret(ws); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("requireInitSecret = %v", err)
	}
	other, err := loadOrCreateInitSecret(t.TempDir())
	if err != nil || bytes.Equal(other, secret) {
		t.Fatalf("two workspaces got the same init secret (%v)", err)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreateInitSecret(ws); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable init secret = %v, want refused", err)
	}
	if err := os.WriteFile(path, []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreateInitSecret(ws); err == nil || strings.Contains(err.Error(), "not hex") {
		t.Fatalf("a damaged init secret = %v, want refused without its content", err)
	}
	if raw, _ := os.ReadFile(path); string(raw) != "not hex\n" {
		t.Fatal("a damaged init secret was replaced")
	}
}

// fakeFirstNode is the first control-plane node as the CLI sees it: it attests with a real TPM over aTLS on
// the init port, and, like the bootstrapper, accepts only a request whose init secret hashes to the hash it
// read from its instance metadata.
type fakeFirstNode struct {
	initpb.UnimplementedInitServer
	hash []byte

	mu  sync.Mutex
	got [][]byte
}

func (f *fakeFirstNode) Init(_ context.Context, req *initpb.InitRequest) (*initpb.InitResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, bytes.Clone(req.GetInitSecret()))
	sum := sha256.Sum256(req.GetInitSecret())
	if subtle.ConstantTimeCompare(sum[:], f.hash) != 1 {
		return nil, status.Error(codes.Unauthenticated, "wrong init secret")
	}
	return &initpb.InitResponse{Kubeconfig: []byte(testAdminKubeconfig), ClusterId: bytes.Repeat([]byte{7}, 32)}, nil
}

// testAdminKubeconfig is an admin kubeconfig as kubeadm writes it on a node, naming the node's own endpoint.
const testAdminKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster: {server: "https://127.0.0.1:7445", certificate-authority-data: ""}
contexts:
- name: kubernetes-admin@kubernetes
  context: {cluster: kubernetes, user: kubernetes-admin}
current-context: kubernetes-admin@kubernetes
users:
- name: kubernetes-admin
  user: {}
`

// listenInitPort listens on the init port of a loopback address of its own (127.0.0.0/8), as a node listens on
// its own address: the CLI always dials the init port.
func listenInitPort(t *testing.T) (net.Listener, string) {
	t.Helper()
	var lastErr error
	for range 20 {
		n, err := rand.Int(rand.Reader, big.NewInt(1<<22))
		if err != nil {
			t.Fatal(err)
		}
		v := n.Int64()
		ip := fmt.Sprintf("127.%d.%d.%d", 1+v>>16%254, v>>8&0xff, 1+v%254)
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(initpb.Port)))
		if err == nil {
			return ln, ip
		}
		lastErr = err
	}
	t.Fatalf("no free loopback address for the init port: %v", lastErr)
	return nil, ""
}

// The path of apply, in-process up to the provider: the CLI generates the init secret and hands the provider
// daemon only its hash; the daemon puts it into the metadata service, from which the node reads it at boot;
// initCluster sends the secret over aTLS, and the node accepts it. recover sends the same secret.
func TestApplyHandsTheProviderTheHashAndInitSendsTheSecret(t *testing.T) {
	ws := t.TempDir()
	c := &config.Config{Provider: config.Provider{Mini: &config.Mini{ControlPlanes: 1, Workers: 2, Image: "node-image.squashfs", ImageDigest: "sha256:" + strings.Repeat("ab", 32)}}}
	secret, err := loadOrCreateInitSecret(ws)
	if err != nil {
		t.Fatal(err)
	}

	cred, err := loadOrCreateControllerCredential(ws)
	if err != nil {
		t.Fatal(err)
	}

	// apply → provider daemon: the command line carries the hashes, never the secret or the credential.
	args := providerDaemonArgs(ws, c, secret, cred)
	if slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, hex.EncodeToString(secret)) }) {
		t.Fatal("the provider's command line holds the init secret")
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, hex.EncodeToString(cred)) }) {
		t.Fatal("the provider's command line holds the controller credential")
	}
	root := newMiniCmd()
	daemon, rest, err := root.Find(args[1:])
	if err != nil || daemon.Name() != "daemon" {
		t.Fatalf("providerDaemonArgs do not name the daemon: %v %v", rest, err)
	}
	if err := daemon.ParseFlags(rest); err != nil {
		t.Fatalf("the daemon does not take its arguments: %v", err)
	}
	hashHex, _ := daemon.Flags().GetString("init-secret-hash")
	credHashHex, _ := daemon.Flags().GetString("controller-credential-hash")
	spec, err := daemonSpec(c, ws, hashHex, credHashHex)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(secret)
	if !bytes.Equal(spec.InitSecretHash, want[:]) || spec.ControlPlanes != 1 || spec.Workers != 2 {
		t.Fatalf("the provider boots %+v, want the init secret's hash %x", spec, want)
	}
	if wantCred := sha256.Sum256(cred); !bytes.Equal(spec.ControllerCredentialHash, wantCred[:]) {
		t.Fatalf("the provider gets %x as the controller credential's hash, want %x", spec.ControllerCredentialHash, wantCred)
	}
	if _, err := daemonSpec(c, ws, "abcd", ""); err == nil {
		t.Fatal("a malformed init-secret hash was accepted")
	}
	if _, err := daemonSpec(c, ws, hashHex, "abcd"); err == nil {
		t.Fatal("a malformed controller-credential hash was accepted")
	}

	// provider → node: the metadata service serves the hash to the node.
	caKey, caCert, err := tpmtest.NewCACert("ak ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, ekRoot, err := tpmtest.NewCACert("ek root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := akca.New(caKey, caCert, []*x509.Certificate{ekRoot})
	if err != nil {
		t.Fatal(err)
	}
	md := metadata.NewServer(ca, nil)
	if err := md.SetInitSecretHash(spec.InitSecretHash); err != nil {
		t.Fatal(err)
	}
	md.SetInstance(metadata.Instance{Name: bootstrapper.FirstControlPlane, Role: metadata.RoleControlPlane, IP: "127.0.0.1"}, nil, nil)
	hs := httptest.NewServer(md.Handler())
	defer hs.Close()
	nodeHash, err := metadata.NewClient(hs.URL).InitSecretHash(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// CLI → node: init over aTLS with the secret.
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	fake := &fakeFirstNode{hash: nodeHash}
	creds, err := atls.NewCredentials(node.Issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	initpb.RegisterInitServer(srv, fake)
	ln, ip := listenInitPort(t)
	go srv.Serve(ln)
	defer srv.Stop()
	policy := miniPolicy([]*x509.Certificate{node.CA.Certificate()}, node.Policy)

	// A workspace without the init secret sends nothing.
	bare := t.TempDir()
	if _, err := initCluster(context.Background(), bare, ip, "", policy, nil, nil); err == nil || !strings.Contains(err.Error(), InitSecretFile) {
		t.Fatalf("init without the init secret = %v", err)
	}
	if _, err := os.Stat(filepath.Join(bare, kms.MasterSecretFileName)); !os.IsNotExist(err) {
		t.Fatal("init without the init secret generated a master secret")
	}

	cs, err := initCluster(context.Background(), ws, ip, "", policy, nil, nil)
	if err != nil {
		t.Fatalf("initCluster: %v", err)
	}
	// The workspace's kubeconfig names the attested node's API server, not the node's own endpoint.
	if cs.ClusterID != strings.Repeat("07", 32) || cs.Endpoint != ip+":6443" {
		t.Fatalf("cluster state %+v", cs)
	}
	if raw, err := os.ReadFile(filepath.Join(ws, AdminKubeconfigFile)); err != nil || !strings.Contains(string(raw), "server: https://"+ip+":6443") {
		t.Fatalf("the workspace's admin kubeconfig: %v\n%s", err, raw)
	}
	fake.mu.Lock()
	got := fake.got
	fake.mu.Unlock()
	if len(got) != 1 || !bytes.Equal(got[0], secret) {
		t.Fatalf("the node got init secrets %x, want exactly the workspace's", got)
	}

	// recover sends the same secret.
	req, err := recoverRequest(ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(req.GetInitSecret(), secret) || len(req.GetMasterSecret()) == 0 {
		t.Fatal("the recover request does not carry the workspace's init secret and master secret")
	}
	if err := os.Remove(filepath.Join(ws, InitSecretFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := recoverRequest(ws, nil); err == nil || !strings.Contains(err.Error(), InitSecretFile) {
		t.Fatalf("recover without the init secret = %v", err)
	}
}
