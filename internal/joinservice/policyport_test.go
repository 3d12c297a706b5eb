package joinservice

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// runningKeyService is a key service as it runs on a control-plane node (keyservice.Run), with its
// measurement policy kept in a file, its port and its policy port on loopback.
type runningKeyService struct {
	addr, policyAddr string
	stop             func()
}

// runKeyService runs a key service on node with secret, keeping its policy in file and trusting callers whose
// attestation keys roots certified; it ends with the test or stop.
func runKeyService(t *testing.T, node *tpmtest.Node, secret *keyservice.Secret, roots []*x509.Certificate, file string) *runningKeyService {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "keys.sock")
	sl, err := agent.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	h := keyservice.NewSecretHolder(slog.New(slog.DiscardHandler))
	if err := h.Set(secret); err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(sl)
	t.Cleanup(func() { hs.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- keyservice.Run(ctx, keyservice.Options{
			Listener: ln, SecretSocket: socket, Issuer: node.Issuer,
			AKRoots:      func(context.Context) ([]*x509.Certificate, error) { return roots, nil },
			Allowed:      func(context.Context, string) (bool, error) { return true, nil },
			DiskBindings: keyservice.NewDiskBindings(),
			PolicyFile:   file, PolicyListen: func() (net.Listener, error) { return pl, nil },
			Log: slog.New(slog.DiscardHandler),
		})
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("the key service after its stop: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &runningKeyService{addr: ln.Addr().String(), policyAddr: pl.Addr().String(), stop: stop}
}

// endpoints are addresses a test changes while a pool uses them, as the provider's list of control-plane
// nodes changes.
type endpoints struct {
	mu    sync.Mutex
	addrs []string
}

func (e *endpoints) set(addrs ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.addrs = addrs
}

func (e *endpoints) get(context.Context) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.addrs...), nil
}

// newImageOf makes node one that booted another node image: one more event in the image's PCR.
func newImageOf(t *testing.T, node *tpmtest.Node) {
	t.Helper()
	if err := node.Issuer.Measure(measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:"+strings.Repeat("2", 64))); err != nil {
		t.Fatal(err)
	}
}

// sameSet reports whether a and b are the same measurement set.
func sameSet(a, b measurements.M) bool {
	ra, _ := a.MarshalJSON()
	rb, _ := b.MarshalJSON()
	return string(ra) == string(rb)
}

// memberEvidence is node's evidence for a fresh nonce, as the continuous attestation asks for it.
func memberEvidence(t *testing.T, node *tpmtest.Node) (evidence, nonce []byte) {
	t.Helper()
	nonce = make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	evidence, err := node.Issuer.Issue(context.Background(), nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	return evidence, nonce
}

// The operator's CLI removes the image the cluster runs from the measurement policy: it opens an upgrade to
// another image and finishes it (the narrowing to the new image only) while the control-plane node still runs
// the old one. The key service, as it runs on that node, then refuses the node's own join service at a mutual
// handshake, and the policy must still reach the join service: it asks on the key service's policy port, where
// only the key service attests itself. The join service refuses a node of the old image at join (the log names
// the image's PCR) and admits one of the new image; the continuous attestation's policy fails every node of
// the old image, the join service's own included, also after the key service restarted (new connections).
// A second key service that missed the narrowing (it was down) does not roll the join service back.
func TestPolicyReachesJoinServiceOfRemovedImage(t *testing.T) {
	ctx := context.Background()
	cp, old, next := swtpmNode(t), simulatorNode(t), swtpmNode(t)
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
	oldSet := imageSetOf(t, cp)
	if !sameSet(oldSet, imageSetOf(t, old)) {
		t.Fatal("the control-plane node and the old node booted different images")
	}
	newImageOf(t, next)
	newSet := imageSetOf(t, next)
	measureClusterID(t, cp.Issuer, clusterID)
	cpRoots := []*x509.Certificate{cp.CA.Certificate()}
	secret := &keyservice.Secret{MasterSecret: ms, ClusterID: clusterID, Measurements: oldSet}
	file := filepath.Join(t.TempDir(), "measurement-policy.json")
	ks := runKeyService(t, cp, secret, cpRoots, file)
	mainPort, policyPort := &endpoints{}, &endpoints{}
	mainPort.set(ks.addr)
	policyPort.set(ks.policyAddr)

	// The join service as it starts on the control-plane node: the configuration's key over mutual aTLS, the
	// policy in force from the policy port.
	macKey, err := FetchConfigKey(ctx, mainPort.get, KeyServiceTrust{Issuer: cp.Issuer, AKRoots: cpRoots, Roles: roles{"node-0": true}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data, err := ConfigData(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: clusterPolicy(old), AKRoots: []*x509.Certificate{old.CA.Certificate(), next.CA.Certificate()}}, clusterID, macKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var logs syncBuffer
	config, err := NewConfig(dir, slog.New(slog.NewJSONHandler(&logs, nil)), macKey)
	if err != nil {
		t.Fatal(err)
	}
	src, closeSrc, err := KeyServicePolicy(ctx, policyPort.get, KeyServiceTrust{Issuer: cp.Issuer, AKRoots: cpRoots, Roles: roles{"node-0": true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeSrc() })
	config.FollowPolicy(src)
	addr := startJoinService(t, Options{Config: config, Log: slog.New(slog.NewJSONHandler(&logs, nil))}, cp.Issuer)
	own, err := OwnMemberPolicy(ctx, cp.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	join := func(node *tpmtest.Node) error {
		_, err := joiner{addr: addr, issuer: node.Issuer, roots: cpRoots, policy: own}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
		return err
	}
	if err := join(old); err != nil {
		t.Fatalf("a node of the cluster's image before the upgrade: %v", err)
	}
	if err := join(next); err == nil {
		t.Fatal("a node of the other image joined before the upgrade")
	}

	// The CLI: upgrade start (both images), then upgrade finish (the other image only), on the policy port.
	key, err := d.MeasurementPolicyKey()
	if err != nil {
		t.Fatal(err)
	}
	send := func(epoch uint64, to []string, sets ...measurements.M) {
		t.Helper()
		u, err := policyupdate.Author(key, clusterID, epoch, imageSets(sets...)...)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := u.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		trust, err := keyservice.MemberValidators(cp.Issuer.Variant(), cpRoots, clusterID, nil)([]measurements.M{oldSet})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := keyservice.SendPolicy(ctx, to, trust, raw); err != nil {
			t.Fatal(err)
		}
	}
	send(1, []string{ks.policyAddr}, oldSet, newSet)
	if err := join(next); err != nil {
		t.Fatalf("a node of the new image during the upgrade: %v", err)
	}
	send(2, []string{ks.policyAddr}, newSet)

	// The key service no longer takes the join service's own node for a member.
	if _, err := FetchConfigKey(ctx, mainPort.get, KeyServiceTrust{Issuer: cp.Issuer, AKRoots: cpRoots, Roles: roles{"node-0": true}}); err == nil {
		t.Fatal("the key service still hands keys to a node of the image removed from the policy")
	}
	refusals := func() int {
		return strings.Count(logs.String(), `"msg":"join refused: the node's measurements differ from the cluster's","pcrs":[4]`)
	}
	check := func(when string) {
		t.Helper()
		before := refusals()
		if err := join(old); err == nil {
			t.Fatalf("%s: a node of the removed image joined", when)
		}
		if refusals() != before+1 {
			t.Fatalf("%s: the refusal of the removed image's node does not name PCR 4:\n%s", when, logs.String())
		}
		if err := join(next); err != nil {
			t.Fatalf("%s: a node of the new image: %v", when, err)
		}
		// The continuous attestation's policy: every node of the removed image fails, this one included.
		v, err := config.MemberValidator()
		if err != nil {
			t.Fatalf("%s: the continuous attestation's policy: %v", when, err)
		}
		evidence, nonce := memberEvidence(t, cp)
		if _, err := v.Validate(ctx, evidence, nonce); err == nil {
			t.Fatalf("%s: the continuous attestation still accepts the join service's own node of the removed image", when)
		}
		if s, _ := config.Effective(ctx); s == nil || s.Epoch != 2 {
			t.Fatalf("%s: the join service enforces %+v, want epoch 2", when, s)
		}
	}
	check("after the narrowing")

	// The key service restarts (its pod does): every connection to it is a new one.
	ks.stop()
	ks = runKeyService(t, cp, secret, cpRoots, file)
	mainPort.set(ks.addr)
	policyPort.set(ks.policyAddr)
	check("after the key service restarted")

	// A key service that was down while the CLI narrowed the policy answers with the window: the join service
	// keeps the narrowing.
	lagging := runKeyService(t, cp, secret, cpRoots, filepath.Join(t.TempDir(), "measurement-policy.json"))
	send(1, []string{lagging.policyAddr}, oldSet, newSet)
	ks.stop()
	policyPort.set(lagging.policyAddr)
	check("with a key service that missed the narrowing")
}
