package bootstrapper

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// testInitSecret is the init secret of the tests' clusters; testInitSecretHash is what their nodes' instance
// metadata holds.
var (
	testInitSecret     = bytes.Repeat([]byte{0x5a}, initpb.InitSecretSize)
	testInitSecretHash = sha256.Sum256(testInitSecret)
)

// startInitService serves s over aTLS on loopback, as a node does (Run), and returns its address.
func startInitService(t *testing.T, s *initServer) string {
	t.Helper()
	creds, err := atls.NewCredentials(s.issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	initpb.RegisterInitServer(srv, s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// unattestedClient connects as anyone who reaches the init port can: plain TLS that does not look at the
// node's certificate (so it does not attest the node), with the application protocol h2 and the nonce
// protocol name the node's aTLS server asks for.
func unattestedClient(t *testing.T, addr string) initpb.InitClient {
	t.Helper()
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // the attacker does not care who the node is
		NextProtos:         []string{"h2", "atls-nonce/" + hex.EncodeToString(nonce)},
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return initpb.NewInitClient(conn)
}

// operatorClient connects as the CLI does: over aTLS, accepting only a fresh node (PCR 15 zero) that runs
// the expected image.
func operatorClient(t *testing.T, addr string, node *tpmtest.Node) initpb.InitClient {
	t.Helper()
	v, err := validators.New(&validators.Policy{
		Variant: "mini-vtpm", AKRoots: []*x509.Certificate{node.CA.Certificate()}, Measurements: measurements.FreshPolicy(node.Policy),
	}, validators.Options{})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := atls.NewCredentials(nil, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return initpb.NewInitClient(conn)
}

// kmsTrap stands where an attacker's KMS would: a loopback listener that records whether anyone dialled it.
type kmsTrap struct {
	addr    string
	dialled chan struct{}
}

func newKMSTrap(t *testing.T) *kmsTrap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trap := &kmsTrap{addr: ln.Addr().String(), dialled: make(chan struct{})}
	go func() {
		var once sync.Once
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			once.Do(func() { close(trap.dialled) })
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return trap
}

func (k *kmsTrap) wasDialled() bool {
	select {
	case <-k.dialled:
		return true
	default:
		return false
	}
}

// call runs an attacker's request. A node that dials the trap retries its KMS for a while: then the attack
// has got through, and call cancels the request instead of waiting for the node to give up.
func (k *kmsTrap) call(ctx context.Context, rpc func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- rpc(ctx) }()
	select {
	case err := <-errc:
		return err
	case <-k.dialled:
		cancel()
		<-errc
		return errors.New("the node dialled the attacker's KMS")
	}
}

// attackerKMS returns the KMS settings of an attacker: their own endpoint (the trap), CA and client
// certificate, and a master secret file "wrapped" by a key on that KMS.
func attackerKMS(t *testing.T, endpoint string) (*initpb.KMIP, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "attacker"},
		NotBefore: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	wrapped, err := (&kms.SecretFile{Salt: make([]byte, kms.MasterSaltSize), Wrapped: &kmip.Wrapped{
		Version: kmip.WrappedVersion, Algorithm: kmip.AlgorithmAES256GCM, KeyID: "attacker-kek",
		IV: make([]byte, kmip.IVSize), Ciphertext: make([]byte, 32), Tag: make([]byte, kmip.TagSize),
	}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &initpb.KMIP{Endpoint: endpoint, ServerCa: certPEM, ClientCert: certPEM, ClientKey: keyPEM}, wrapped
}

// acceptAllPolicy is an attacker's measurement policy: every PCR warn-only.
func acceptAllPolicy(t *testing.T) []byte {
	t.Helper()
	p := map[string]any{}
	for i := range 24 {
		p[fmt.Sprint(i)] = map[string]any{"expected": strings.Repeat("00", 32), "warnOnly": true}
	}
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// lockedBuffer collects log output written by the server's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// wrongSecrets are what an attacker without the init secret can send.
var wrongSecrets = map[string][]byte{
	"no secret":           nil,
	"a wrong secret":      bytes.Repeat([]byte{0xa5}, initpb.InitSecretSize),
	"the secret's hash":   testInitSecretHash[:],
	"a prefix of it":      testInitSecret[:initpb.InitSecretSize-1],
	"it with extra bytes": append(bytes.Clone(testInitSecret), 0),
}

// The attack: someone who reaches the first control-plane node's init port before the operator's CLI calls
// Init with their own master secret, an accept-all policy and their own KMS, over plain TLS (they do not
// attest the node). Without the init secret, or with a wrong one, the node refuses before it acts on any of
// it: it does not dial the attacker's KMS, runs no kubeadm, measures no cluster ID, and logs the attempt with
// the caller's address (never the secret). The operator's init then succeeds: the node stayed fresh.
func TestInitRefusesCallersWithoutTheInitSecret(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	logs := &lockedBuffer{}
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.NewJSONHandler(logs, nil))}
	addr := startInitService(t, s)
	attacker := unattestedClient(t, addr)
	theirSecret, _ := kms.GenerateMasterSecret()
	acceptAll := acceptAllPolicy(t)
	ctx := context.Background()

	for name, secret := range wrongSecrets {
		trap := newKMSTrap(t)
		theirKMS, theirWrapped := attackerKMS(t, trap.addr)
		err := trap.call(ctx, func(ctx context.Context) error {
			_, err := attacker.Init(ctx, &initpb.InitRequest{InitSecret: secret, WrappedMasterSecret: theirWrapped, Kmip: theirKMS, Measurements: acceptAll})
			return err
		})
		if status.Code(err) != codes.Unauthenticated || trap.wasDialled() {
			t.Errorf("Init with %s and their KMS = %v (KMS dialled: %v), want Unauthenticated", name, err, trap.wasDialled())
		}
		_, err = attacker.Init(ctx, &initpb.InitRequest{InitSecret: secret, MasterSecret: theirSecret.Key, Salt: theirSecret.Salt, Measurements: acceptAll})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "init secret") {
			t.Errorf("Init with %s and their master secret = %v, want Unauthenticated naming the init secret", name, err)
		}
	}
	if k8s.inits != 0 {
		t.Errorf("kubeadm init ran %d times for the attacker", k8s.inits)
	}
	pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pcrs.GetPcrs()[15], make([]byte, 32)) {
		t.Error("a refused Init measured a cluster ID: the node is no longer fresh")
	}
	logged := logs.String()
	if strings.Count(logged, "Init refused: wrong or missing init secret") != 2*len(wrongSecrets) || !strings.Contains(logged, `"remote":"127.0.0.1:`) {
		t.Errorf("the refusals are not logged with the caller's address:\n%s", logged)
	}
	for name, secret := range wrongSecrets {
		if len(secret) > 0 && (strings.Contains(logged, hex.EncodeToString(secret)) || bytes.Contains([]byte(logged), secret)) {
			t.Errorf("the log holds %s:\n%s", name, logged)
		}
	}

	// The operator: attests the node (still fresh) and initialises it with the init secret.
	policy, _ := json.Marshal(node.Policy)
	ms, _ := kms.GenerateMasterSecret()
	var pr peer.Peer
	resp, err := operatorClient(t, addr, node).Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy}, grpc.Peer(&pr))
	if err != nil {
		t.Fatalf("the operator's Init after the refused attempts: %v", err)
	}
	// The master secret crossed a channel whose key exchange is the post-quantum hybrid.
	if info, ok := pr.AuthInfo.(credentials.TLSInfo); !ok || info.State.CurveID != tls.X25519MLKEM768 {
		t.Fatalf("the init channel's key exchange is not X25519MLKEM768: %+v", pr.AuthInfo)
	}
	d, _ := kms.NewDeriver(ms)
	if want, _ := d.ClusterID(); !bytes.Equal(resp.GetClusterId(), want) || k8s.inits != 1 {
		t.Fatalf("the operator's Init: cluster ID %x, want %x; kubeadm init ran %d times", resp.GetClusterId(), want, k8s.inits)
	}
	if strings.Contains(logs.String(), hex.EncodeToString(testInitSecret)) {
		t.Error("the log holds the init secret")
	}
}

// The same attack on Recover: a control-plane node that waits for recovery must not dial a KMS of an
// attacker's choosing, nor try an attacker's master secret on its state disk.
func TestRecoverRefusesCallersWithoutTheInitSecret(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler), recovering: true}
	attacker := unattestedClient(t, startInitService(t, s))
	for name, secret := range wrongSecrets {
		trap := newKMSTrap(t)
		theirKMS, theirWrapped := attackerKMS(t, trap.addr)
		err := trap.call(context.Background(), func(ctx context.Context) error {
			_, err := attacker.Recover(ctx, &initpb.InitRequest{InitSecret: secret, WrappedMasterSecret: theirWrapped, Kmip: theirKMS})
			return err
		})
		if status.Code(err) != codes.Unauthenticated || trap.wasDialled() {
			t.Errorf("Recover with %s and their KMS = %v (KMS dialled: %v), want Unauthenticated", name, err, trap.wasDialled())
		}
	}
	if k8s.restarts != 0 {
		t.Error("a refused Recover restarted Kubernetes")
	}
	if s.done {
		t.Error("a refused Recover used up the node's one recovery")
	}
}

// A node whose instance metadata holds no init-secret hash cannot tell the operator from anyone else: it
// refuses Init and Recover whatever they carry, and says what is missing.
func TestInitWithoutAnInitSecretHashIsRefused(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	s := &initServer{issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler)}
	attacker := unattestedClient(t, startInitService(t, s))
	ms, _ := kms.GenerateMasterSecret()
	policy, _ := json.Marshal(node.Policy)
	for what, secret := range map[string][]byte{"no secret": nil, "the operator's secret": testInitSecret} {
		trap := newKMSTrap(t)
		theirKMS, theirWrapped := attackerKMS(t, trap.addr)
		req := &initpb.InitRequest{InitSecret: secret, WrappedMasterSecret: theirWrapped, Kmip: theirKMS, Measurements: policy}
		err := trap.call(context.Background(), func(ctx context.Context) error {
			_, err := attacker.Init(ctx, req)
			return err
		})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "metadata holds no hash of the cluster's init secret") {
			t.Errorf("Init with %s = %v, want FailedPrecondition naming the missing init-secret hash", what, err)
		}
		err = trap.call(context.Background(), func(ctx context.Context) error {
			_, err := attacker.Recover(ctx, req)
			return err
		})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("Recover with %s = %v, want FailedPrecondition", what, err)
		}
		if trap.wasDialled() {
			t.Errorf("a node without an init-secret hash dialled the KMS of a request with %s", what)
		}
		_, err = attacker.Init(context.Background(), &initpb.InitRequest{InitSecret: secret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("Init with %s and a plain master secret = %v, want FailedPrecondition", what, err)
		}
	}
	if k8s.inits != 0 || s.done {
		t.Errorf("a node without an init-secret hash initialised: kubeadm init ran %d times", k8s.inits)
	}
}

// Whatever an unauthenticated caller sends as an Init or Recover request, the node refuses it as
// unauthenticated, before it looks at anything else: the server here has no TPM, no Kubernetes and no disk,
// so anything that got past the check would fail differently (or panic).
func FuzzInitRefusesWithoutTheInitSecret(f *testing.F) {
	theirSecret, _ := kms.GenerateMasterSecret()
	for _, req := range []*initpb.InitRequest{
		{},
		{MasterSecret: theirSecret.Key, Salt: theirSecret.Salt, Measurements: []byte(`{"4":{"expected":"` + strings.Repeat("00", 32) + `","warnOnly":true}}`)},
		{InitSecret: bytes.Repeat([]byte{0xa5}, initpb.InitSecretSize), WrappedMasterSecret: []byte(`{"version":1}`), Kmip: &initpb.KMIP{Endpoint: "127.0.0.1:5696"}},
		{InitSecret: testInitSecretHash[:], Attestation: []byte(`{"version":1,"variant":"mini-vtpm"}`)},
		{InitSecret: testInitSecret[:initpb.InitSecretSize-1]},
	} {
		raw, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	s := &initServer{initSecretHash: testInitSecretHash[:], log: slog.New(slog.DiscardHandler), recovering: true}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req initpb.InitRequest
		if err := proto.Unmarshal(raw, &req); err != nil {
			return // gRPC refuses it before the node sees it
		}
		if bytes.Equal(req.GetInitSecret(), testInitSecret) {
			return
		}
		if _, err := s.Init(context.Background(), &req); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Init = %v, want Unauthenticated", err)
		}
		if _, err := s.Recover(context.Background(), &req); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Recover = %v, want Unauthenticated", err)
		}
	})
}

// The host writes the instance metadata, so it can put there the hash of a secret of its own and initialise the
// node itself. What it must not gain is anything of the operator's: the operator's CLI attests the node before
// it sends a request and accepts only a fresh node (PCR 15 zero), so once the host initialised the node the
// operator's handshake fails and its master secret, policy and init secret never reach the node.
func TestHostInitialisedNodeGetsNothingFromTheOperator(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	hostSecret := bytes.Repeat([]byte{0xa5}, initpb.InitSecretSize)
	hostHash := sha256.Sum256(hostSecret)
	k8s := &recordingKubernetes{}
	s := &initServer{initSecretHash: hostHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler)}
	addr := startInitService(t, s)
	ctx := context.Background()

	// The host initialises the node with the secret whose hash it wrote, its own master secret and policy.
	theirSecret, _ := kms.GenerateMasterSecret()
	policy, _ := json.Marshal(node.Policy)
	if _, err := unattestedClient(t, addr).Init(ctx, &initpb.InitRequest{InitSecret: hostSecret, MasterSecret: theirSecret.Key, Salt: theirSecret.Salt, Measurements: policy}); err != nil {
		t.Fatalf("the host's own Init: %v", err)
	}
	if k8s.inits != 1 {
		t.Fatalf("kubeadm init ran %d times, want 1", k8s.inits)
	}

	// The operator: the node is no longer fresh, so the aTLS handshake fails before any request is sent.
	logs := &lockedBuffer{}
	s.log = slog.New(slog.NewJSONHandler(logs, nil))
	ms, _ := kms.GenerateMasterSecret()
	_, err = operatorClient(t, addr, node).Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy})
	if err == nil {
		t.Fatal("the operator's Init reached a node the host initialised")
	}
	if c := status.Code(err); c == codes.Unauthenticated || c == codes.FailedPrecondition {
		t.Fatalf("the operator's request reached the node's handler (%v): it must fail in the handshake, before anything is sent", err)
	}
	if k8s.inits != 1 || logs.String() != "" {
		t.Fatalf("the node acted on the operator's request: kubeadm init ran %d times; log:\n%s", k8s.inits, logs.String())
	}
}
