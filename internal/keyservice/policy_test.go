package keyservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// newImage makes node one that booted another node image: one more event in the image's PCR.
func newImage(t *testing.T, node *tpmtest.Node) {
	t.Helper()
	if err := node.Issuer.Measure(measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:"+strings.Repeat("2", 64))); err != nil {
		t.Fatal(err)
	}
}

// imageSet is the measurement set of the image node booted, as its TPM holds it: PCRs 0, 4 and 8.
func imageSet(t *testing.T, node *tpmtest.Node) measurements.M {
	t.Helper()
	pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	m, err := measurements.FromPCRs(func(idx uint32) []byte { return pcrs.GetPcrs()[idx] }, 0, measurements.PCRNodeImage, measurements.PCRBootParams)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// member measures the cluster ID of secret into node, as a node admitted by the join service does.
func member(t *testing.T, node *tpmtest.Node, secret *Secret) {
	t.Helper()
	ev := measurements.ClusterIDEvent(secret.ClusterID)
	if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
}

// policyKeyService runs a key service (Run) on node for the cluster of secret, keeping its policy in file,
// for control-plane callers whose AKs roots certified. It returns the addresses of its mutual aTLS port and
// its policy port, and a stop that ends it (for a restart).
func policyKeyService(t *testing.T, node *tpmtest.Node, roots []*x509.Certificate, secret *Secret, file string, api *kubeapitest.Server, log *slog.Logger) (addr, policyAddr string, stop func()) {
	t.Helper()
	h, socket := serveSecrets(t, log)
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
		done <- Run(ctx, Options{
			Listener: ln, SecretSocket: socket, Issuer: node.Issuer,
			AKRoots:      func(context.Context) ([]*x509.Certificate, error) { return roots, nil },
			Allowed:      func(context.Context, string) (bool, error) { return true, nil },
			DiskBindings: NewAPIDiskBindings(api.Client(t)),
			PolicyFile:   file, PolicyListen: func() (net.Listener, error) { return pl, nil },
			Log: log,
		})
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	}
	t.Cleanup(stop)
	if err := h.Set(secret); err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String(), pl.Addr().String(), stop
}

// policyFixture is a key service's node, the cluster's secret and the master secret's measurement-policy key.
type policyFixture struct {
	ks     *tpmtest.Node
	secret *Secret
	key    []byte
	roots  []*x509.Certificate
	api    *kubeapitest.Server
}

func newPolicyFixture(t *testing.T, callers ...*tpmtest.Node) *policyFixture {
	t.Helper()
	ks := swtpmNode(t)
	secret := testSecret(t)
	secret.Measurements = imageSet(t, ks)
	member(t, ks, secret)
	d, _ := kms.NewDeriver(secret.MasterSecret)
	key, err := d.MeasurementPolicyKey()
	if err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{ks.CA.Certificate()}
	for _, c := range callers {
		roots = append(roots, c.CA.Certificate())
	}
	return &policyFixture{ks: ks, secret: secret, key: key, roots: roots, api: kubeapitest.New(t, DiskBindingsNamespace)}
}

// update authors the update of epoch with sets, as the CLI does with the master secret.
func (f *policyFixture) update(t *testing.T, epoch uint64, sets ...measurements.M) []byte {
	t.Helper()
	u, err := policyupdate.Author(f.key, f.secret.ClusterID, epoch, imageSets(sets...)...)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// send sends raw to the key service's policy port, trusting a key service that is a member with its image.
func (f *policyFixture) send(t *testing.T, policyAddr string, raw []byte) (*policyupdate.Update, error) {
	t.Helper()
	c, err := NewPolicyClient(policyAddr, []attestation.Validator{memberValidator(t, f.ks, f.secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.UpdateMeasurementPolicy(context.Background(), raw)
}

// inForce returns the key service's update in force (nil: none).
func (f *policyFixture) inForce(t *testing.T, policyAddr string) *policyupdate.Update {
	t.Helper()
	c, err := NewPolicyClient(policyAddr, []attestation.Validator{memberValidator(t, f.ks, f.secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u, _, err := c.GetMeasurementPolicy(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// dataKey asks the key service at addr for a data key as caller, on a connection of its own.
func (f *policyFixture) dataKey(t *testing.T, addr string, caller *tpmtest.Node) error {
	t.Helper()
	c, err := NewClient(addr, caller.Issuer, []attestation.Validator{memberValidator(t, f.ks, f.secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.GetDataKey(context.Background(), "data-key/upgrade-test", 32)
	return err
}

// The attack: whoever reaches the policy port (the host, an administrator of the cluster) sends an update
// with a MAC under a key of its own, a genuine update with its sets edited, an update with three sets, or one
// whose set accepts any image. Each is refused, and the policy in force and its file stay as they were.
func TestPolicyRefusesForgedUpdates(t *testing.T) {
	oldNode, newNode := swtpmNode(t), swtpmNode(t)
	f := newPolicyFixture(t, oldNode, newNode)
	newImage(t, newNode)
	oldSet, newSet := imageSet(t, oldNode), imageSet(t, newNode)
	file := filepath.Join(t.TempDir(), "measurement-policy.json")
	_, policyAddr, _ := policyKeyService(t, f.ks, f.roots, f.secret, file, f.api, slog.New(slog.DiscardHandler))
	genuine := f.update(t, 1, oldSet)
	if _, err := f.send(t, policyAddr, genuine); err != nil {
		t.Fatalf("a genuine update: %v", err)
	}
	kept, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	foreignKey, _ := policyupdate.Author(bytes.Repeat([]byte{0xad}, 32), f.secret.ClusterID, 2, imageSets(oldSet, newSet)...)
	foreign, _ := foreignKey.Marshal()
	// The genuine two-set update of epoch 2, with its second set replaced by the attacker's image.
	edited := bytes.Replace(f.update(t, 2, oldSet, newSet), []byte(newSet[measurements.PCRNodeImage].Expected.String()), []byte(strings.Repeat("ab", 32)), 1)
	// Three sets: the genuine two, and the attacker's, in the wire form.
	three := bytes.Replace(f.update(t, 2, oldSet, newSet), []byte(`]`), []byte(`,`+string(mustJSON(t, attackerSet(newSet)))+`]`), 1)
	anyImage := measurements.M{}
	for idx, m := range newSet {
		anyImage[idx] = measurements.Measurement{Expected: m.Expected, WarnOnly: true}
	}
	accepting := bytes.Replace(f.update(t, 2, oldSet, newSet), mustJSON(t, newSet), mustJSON(t, anyImage), 1)
	for name, tc := range map[string]struct {
		raw  []byte
		code codes.Code
	}{
		"MAC under another key": {foreign, codes.PermissionDenied},
		"edited set":            {edited, codes.PermissionDenied},
		"three sets":            {three, codes.InvalidArgument},
		"accept-any-image set":  {accepting, codes.InvalidArgument},
		"not an update":         {[]byte(`{"acceptAll":true}`), codes.InvalidArgument},
		"for another cluster":   {otherCluster(t, f, 2, oldSet, newSet), codes.PermissionDenied},
	} {
		t.Run(name, func(t *testing.T) {
			if bytes.Equal(tc.raw, genuine) {
				t.Fatal("the forged update is the genuine one")
			}
			if _, err := f.send(t, policyAddr, tc.raw); status.Code(err) != tc.code {
				t.Fatalf("%v, want %v", err, tc.code)
			}
			if u := f.inForce(t, policyAddr); u == nil || u.Epoch != 1 || len(u.Sets) != 1 {
				t.Fatalf("the policy in force changed: %v", u)
			}
			if now, _ := os.ReadFile(file); !bytes.Equal(now, kept) {
				t.Fatal("the kept policy changed")
			}
		})
	}
}

func mustJSON(t *testing.T, m measurements.M) []byte {
	t.Helper()
	raw, err := m.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// attackerSet is set with the attacker's node image.
func attackerSet(set measurements.M) measurements.M {
	out := measurements.M{}
	for idx, m := range set {
		out[idx] = m
	}
	out[measurements.PCRNodeImage] = measurements.Measurement{Expected: measurements.Digest(bytes.Repeat([]byte{0xab}, 32))}
	return out
}

// otherCluster is a genuine update of another cluster's master secret.
func otherCluster(t *testing.T, f *policyFixture, epoch uint64, sets ...measurements.M) []byte {
	t.Helper()
	other := testSecret(t)
	d, _ := kms.NewDeriver(other.MasterSecret)
	key, _ := d.MeasurementPolicyKey()
	u, err := policyupdate.Author(key, other.ClusterID, epoch, imageSets(sets...)...)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := u.Marshal()
	return raw
}

// An upgrade as the key service sees it, and the replay of its window: the CLI sends the two-set update
// (old and new image), then the narrowed one (new image only). A control-plane node of the old image gets keys
// during the window, not after; not on the connection it made during the window either. An administrator who
// saved the two-set update sends it again after the window closed, before and after a restart of the key
// service (its bootstrapper hands it the cluster's init measurements again, the old image's): it is refused,
// because the key service kept the epoch on its node's state disk, and the old node stays refused.
func TestPolicyUpgradeWindowAndReplay(t *testing.T) {
	oldNode, newNode := swtpmNode(t), swtpmNode(t)
	f := newPolicyFixture(t, oldNode, newNode)
	newImage(t, newNode)
	oldSet, newSet := imageSet(t, oldNode), imageSet(t, newNode)
	member(t, oldNode, f.secret)
	member(t, newNode, f.secret)
	file := filepath.Join(t.TempDir(), "measurement-policy.json")
	var logged syncBuffer
	log := slog.New(slog.NewJSONHandler(&logged, nil))
	addr, policyAddr, stop := policyKeyService(t, f.ks, f.roots, f.secret, file, f.api, log)

	if err := f.dataKey(t, addr, oldNode); err != nil {
		t.Fatalf("a node of the cluster's image before the upgrade: %v", err)
	}
	if err := f.dataKey(t, addr, newNode); err == nil {
		t.Fatal("a node of the new image got a key before the upgrade")
	}
	window := f.update(t, 1, oldSet, newSet)
	if _, err := f.send(t, policyAddr, window); err != nil {
		t.Fatal(err)
	}
	// The old node's connection from the window, kept open.
	kept, err := NewClient(addr, oldNode.Issuer, []attestation.Validator{memberValidator(t, f.ks, f.secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	for name, node := range map[string]*tpmtest.Node{"old": oldNode, "new": newNode} {
		if err := f.dataKey(t, addr, node); err != nil {
			t.Fatalf("a node of the %s image during the upgrade: %v", name, err)
		}
	}
	if _, err := kept.GetDataKey(context.Background(), "data-key/upgrade-test", 32); err != nil {
		t.Fatal(err)
	}
	if _, err := f.send(t, policyAddr, f.update(t, 2, newSet)); err != nil {
		t.Fatal(err)
	}
	if err := f.dataKey(t, addr, newNode); err != nil {
		t.Fatalf("a node of the new image after the upgrade: %v", err)
	}
	if err := f.dataKey(t, addr, oldNode); err == nil {
		t.Fatal("a node of the old image got a key after the upgrade")
	}
	if _, err := kept.GetDataKey(context.Background(), "data-key/upgrade-test", 32); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the old node's connection from the window: %v, want PermissionDenied", err)
	}
	replay := func(when string) {
		t.Helper()
		if _, err := f.send(t, policyAddr, window); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "older") {
			t.Fatalf("the saved two-set update sent again %s: %v, want FailedPrecondition", when, err)
		}
		if err := f.dataKey(t, addr, oldNode); err == nil {
			t.Fatalf("a node of the old image got a key after the replay %s", when)
		}
		if u := f.inForce(t, policyAddr); u == nil || u.Epoch != 2 || len(u.Sets) != 1 {
			t.Fatalf("the policy in force %s: %v", when, u)
		}
	}
	replay("after the window")
	stop()
	addr, policyAddr, _ = policyKeyService(t, f.ks, f.roots, f.secret, file, f.api, log)
	replay("after a restart of the key service")
	if !strings.Contains(logged.String(), `"msg":"measurement policy update refused"`) {
		t.Fatalf("the replay is not logged:\n%s", logged.String())
	}
}

// A key service of a control-plane node that joined after the upgrade began gets the update in force with the
// master secret (its bootstrapper hands it over with the init's measurements), and enforces it: the new image,
// not the init's.
func TestLateKeyServiceGetsThePolicyInForce(t *testing.T) {
	oldNode, newNode := swtpmNode(t), swtpmNode(t)
	f := newPolicyFixture(t, oldNode, newNode)
	newImage(t, newNode)
	oldSet, newSet := imageSet(t, oldNode), imageSet(t, newNode)
	member(t, oldNode, f.secret)
	member(t, newNode, f.secret)
	addr, policyAddr, _ := policyKeyService(t, f.ks, f.roots, f.secret, filepath.Join(t.TempDir(), "policy.json"), f.api, slog.New(slog.DiscardHandler))
	if _, err := f.send(t, policyAddr, f.update(t, 1, oldSet, newSet)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.send(t, policyAddr, f.update(t, 2, newSet)); err != nil {
		t.Fatal(err)
	}
	// The new control-plane node asks for the master secret, as its bootstrapper does after it joined.
	c, err := NewClient(addr, newNode.Issuer, []attestation.Validator{memberValidator(t, f.ks, f.secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.GetMasterSecret(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u, err := policyupdate.Open(got.PolicyUpdate, f.key, f.secret.ClusterID); err != nil || u.Epoch != 2 {
		t.Fatalf("the update handed over with the master secret: %v, %v", u, err)
	}
	// Its key service, on the new node, with the init's measurements from its bootstrapper and the update.
	late, lateSecret := newNode, *got
	lateFile := filepath.Join(t.TempDir(), "policy.json")
	lateAddr, latePolicy, _ := policyKeyService(t, late, f.roots, &lateSecret, lateFile, f.api, slog.New(slog.DiscardHandler))
	trustLate := func(caller *tpmtest.Node) error {
		c, err := NewClient(lateAddr, caller.Issuer, []attestation.Validator{mustValidator(t, f.roots, newSet, f.secret.ClusterID)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.GetDataKey(context.Background(), "data-key/upgrade-test", 32)
		return err
	}
	if err := trustLate(newNode); err != nil {
		t.Fatalf("a node of the new image at the late key service: %v", err)
	}
	if err := trustLate(oldNode); err == nil {
		t.Fatal("a node of the old image got a key from the late key service: it enforces the init's measurements, not the update in force")
	}
	pc, err := NewPolicyClient(latePolicy, []attestation.Validator{mustValidator(t, f.roots, newSet, f.secret.ClusterID)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if u, _, err := pc.GetMeasurementPolicy(context.Background()); err != nil || u == nil || u.Epoch != 2 {
		t.Fatalf("the late key service's policy: %v, %v", u, err)
	}
	if raw, err := os.ReadFile(lateFile); err != nil || !bytes.Contains(raw, []byte(`"epoch":2`)) {
		t.Fatalf("the late key service did not keep the policy: %v", err)
	}
}

// mustValidator trusts a member of cluster clusterID with set on a vTPM that roots certified.
func mustValidator(t *testing.T, roots []*x509.Certificate, set measurements.M, clusterID []byte) attestation.Validator {
	t.Helper()
	v, err := vtpm.NewValidator(roots, measurements.MemberPolicy(set, clusterID), nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The master secret's handover carries the update in force only if it verifies under that master secret: a
// handover (from the bootstrapper, or another key service's answer) with a forged update is refused whole.
func TestSecretRefusesAForgedPolicyUpdate(t *testing.T) {
	secret := testSecret(t)
	other := testSecret(t)
	d, _ := kms.NewDeriver(other.MasterSecret)
	key, _ := d.MeasurementPolicyKey()
	forged, err := policyupdate.Author(key, secret.ClusterID, 9, imageSets(secret.Measurements)...)
	if err != nil {
		t.Fatal(err)
	}
	secret.PolicyUpdate, _ = forged.Marshal()
	h := NewSecretHolder(slog.New(slog.DiscardHandler))
	if err := h.Set(secret); !errors.Is(err, policyupdate.ErrNotAuthentic) {
		t.Fatalf("a handover with an update under another master secret's key: %v, want ErrNotAuthentic", err)
	}
	d, _ = kms.NewDeriver(secret.MasterSecret)
	key, _ = d.MeasurementPolicyKey()
	genuine, _ := policyupdate.Author(key, secret.ClusterID, 9, imageSets(secret.Measurements)...)
	secret.PolicyUpdate, _ = genuine.Marshal()
	if err := h.Set(secret); err != nil {
		t.Fatalf("a handover with the genuine update: %v", err)
	}
	raw, _ := json.Marshal(map[string]any{"version": 1, "key": secret.MasterSecret.Key, "salt": secret.MasterSecret.Salt, "clusterID": secret.ClusterID, "measurements": secret.Measurements, "policyUpdate": bytes.Replace(secret.PolicyUpdate, []byte(`"epoch":9`), []byte(`"epoch":99`), 1)})
	if _, err := ParseSecret(raw); !errors.Is(err, policyupdate.ErrNotAuthentic) {
		t.Fatalf("a handover whose update's epoch was raised: %v, want ErrNotAuthentic", err)
	}
}

// imageSets names each set's node image: sha256: and its PCR 4 value, as the CLI names the image a set was
// signed for.
func imageSets(sets ...measurements.M) []policyupdate.ImageSet {
	var out []policyupdate.ImageSet
	for _, set := range sets {
		out = append(out, policyupdate.ImageSet{Image: "sha256:" + set[measurements.PCRNodeImage].Expected.String(), Measurements: set})
	}
	return out
}

// Once the policy in force no longer accepts the image of a caller (the operator removed the image the
// cluster runs), the key service refuses that caller at its mutual aTLS port, yet the caller still reads the
// policy in force on the policy port, through a pool of policy ports (the join service does). The mutual aTLS
// port serves no measurement policy.
func TestPolicyPortAnswersCallerOfRemovedImage(t *testing.T) {
	oldNode, newNode := swtpmNode(t), swtpmNode(t)
	f := newPolicyFixture(t, oldNode, newNode)
	newImage(t, newNode)
	oldSet, newSet := imageSet(t, f.ks), imageSet(t, newNode)
	member(t, oldNode, f.secret)
	addr, policyAddr, _ := policyKeyService(t, f.ks, f.roots, f.secret, filepath.Join(t.TempDir(), "policy.json"), f.api, slog.New(slog.DiscardHandler))
	if err := f.dataKey(t, addr, oldNode); err != nil {
		t.Fatalf("a member of the cluster's image before the narrowing: %v", err)
	}
	if _, err := f.send(t, policyAddr, f.update(t, 1, oldSet, newSet)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.send(t, policyAddr, f.update(t, 2, newSet)); err != nil {
		t.Fatal(err)
	}
	if err := f.dataKey(t, addr, oldNode); err == nil {
		t.Fatal("a member of the removed image got a key")
	}
	ctx := context.Background()
	trust := memberValidator(t, f.ks, f.secret)
	mutual, err := NewClient(addr, oldNode.Issuer, []attestation.Validator{trust})
	if err != nil {
		t.Fatal(err)
	}
	defer mutual.Close()
	if _, _, err := mutual.GetMeasurementPolicy(ctx); err == nil {
		t.Fatal("the mutual aTLS port served the measurement policy")
	}
	pool := NewPolicyPool(func(context.Context) ([]string, error) { return []string{"127.0.0.1:1", policyAddr}, nil }, trust)
	defer pool.Close()
	var u *policyupdate.Update
	if err := pool.Do(ctx, func(ctx context.Context, c *Client) error {
		var err error
		u, _, err = c.GetMeasurementPolicy(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if u == nil || u.Epoch != 2 || len(u.Sets) != 1 {
		t.Fatalf("the policy in force through the pool: %v", u)
	}
}
