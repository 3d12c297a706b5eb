package joinservice

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// imageSetOf is the measurement set of the image node booted, as its TPM holds it: PCRs 0, 4 and 8.
func imageSetOf(t *testing.T, node *tpmtest.Node) measurements.M {
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

// upgradeFixture is a control-plane node running the key service (with its measurement policy) and the join
// service, a node of the cluster's image (old) and one of the image the cluster upgrades to (new).
type upgradeFixture struct {
	cp, old, new   *tpmtest.Node
	oldSet, newSet measurements.M
	policy         *keyservice.Policy
	src            PolicySource
	key, clusterID []byte
	own            measurements.M // the control-plane node's own member policy, by which the nodes trust it
}

func newUpgradeFixture(t *testing.T) *upgradeFixture {
	t.Helper()
	ctx := context.Background()
	cp, d, clusterID := memberControlPlane(t)
	f := &upgradeFixture{cp: cp, old: simulatorNode(t), new: swtpmNode(t), clusterID: clusterID}
	if err := f.new.Issuer.Measure(measurements.PCRNodeImage, eventlog.IPL, []byte("node image sha256:"+strings.Repeat("2", 64))); err != nil {
		t.Fatal(err)
	}
	f.oldSet, f.newSet = imageSetOf(t, f.old), imageSetOf(t, f.new)
	var err error
	if f.key, err = d.MeasurementPolicyKey(); err != nil {
		t.Fatal(err)
	}
	// The key service of the control-plane node, with the cluster's init measurements (the old image's).
	if f.policy, err = keyservice.NewPolicy(d, clusterID, f.oldSet, filepath.Join(t.TempDir(), "policy.json"), nil, nil); err != nil {
		t.Fatal(err)
	}
	ks := keyservice.New(d, slog.New(slog.DiscardHandler))
	ks.EnforcePolicy(f.policy)
	if f.own, err = OwnMemberPolicy(ctx, cp.Issuer); err != nil {
		t.Fatal(err)
	}
	cpRoots := []*x509.Certificate{cp.CA.Certificate()}
	members, err := keyserviceMembers(cpRoots, f.own)
	if err != nil {
		t.Fatal(err)
	}
	startKeyService(t, ks, cp.Issuer, members)
	psrv, err := keyservice.NewPolicyServer(f.policy, cp.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	src, closeSrc, err := KeyServicePolicy(ctx, fixedAddrs(serveLoopback(t, psrv)), KeyServiceTrust{Issuer: cp.Issuer, AKRoots: cpRoots, Roles: roles{"node-0": true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeSrc() })
	f.src = src
	return f
}

// apply authors the update of epoch with sets, as the CLI does with the master secret, and sends it to the key
// service.
func (f *upgradeFixture) apply(t *testing.T, epoch uint64, sets ...measurements.M) []byte {
	t.Helper()
	u, err := policyupdate.Author(f.key, f.clusterID, epoch, imageSets(sets...)...)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.policy.Apply(raw); err != nil {
		t.Fatal(err)
	}
	return raw
}

// joinService starts a join service on the control-plane node whose configuration (in a directory of its
// own) holds the old image's measurements and follows the key service's measurement policy.
func (f *upgradeFixture) joinService(t *testing.T, log *slog.Logger) (addr, dir string) {
	t.Helper()
	dir, config := joinConfig(t, clusterPolicy(f.old), []*x509.Certificate{f.old.CA.Certificate(), f.new.CA.Certificate()}, f.clusterID, log)
	config.FollowPolicy(f.src)
	return startJoinService(t, Options{Config: config, Log: log}, f.cp.Issuer), dir
}

// join lets node join the join service at addr.
func (f *upgradeFixture) join(t *testing.T, addr string, node *tpmtest.Node) error {
	t.Helper()
	_, err := joiner{addr: addr, issuer: node.Issuer, roots: []*x509.Certificate{f.cp.CA.Certificate()}, policy: f.own}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
	return err
}

// An upgrade as the join service sees it: before it, only nodes of the cluster's image join; while it runs
// (the key service has the CLI's two-set update), nodes of both images, so a node of the old image that
// rebooted rejoins; once the CLI narrowed the policy to the new image, a node of the old image is refused and
// the log names the PCR that differs. The attacks: an administrator of the cluster sends the two-set update
// it saved from the window again, and puts back the join configuration (its MAC verifies: the CLI wrote it)
// that holds the old image's measurements; the old node stays refused, on a restarted join service too. And
// if the key service cannot tell the policy in force, nobody joins.
func TestUpgradeWindowAndItsReplay(t *testing.T) {
	f := newUpgradeFixture(t)
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	addr, dir := f.joinService(t, log)
	if err := f.join(t, addr, f.old); err != nil {
		t.Fatalf("a node of the cluster's image before the upgrade: %v", err)
	}
	if err := f.join(t, addr, f.new); err == nil {
		t.Fatal("a node of the new image joined before the upgrade")
	}
	saved := map[string][]byte{}
	for _, name := range append(configFiles, MACFile) {
		saved[name], _ = os.ReadFile(filepath.Join(dir, name))
	}

	window := f.apply(t, 1, f.oldSet, f.newSet)
	for name, node := range map[string]*tpmtest.Node{"old": f.old, "new": f.new} {
		if err := f.join(t, addr, node); err != nil {
			t.Fatalf("a node of the %s image during the upgrade: %v", name, err)
		}
	}

	f.apply(t, 2, f.newSet)
	if err := f.join(t, addr, f.new); err != nil {
		t.Fatalf("a node of the new image after the upgrade: %v", err)
	}
	before := strings.Count(logs.String(), `"msg":"join refused: the node's measurements differ from the cluster's","pcrs":[4]`)
	if err := f.join(t, addr, f.old); err == nil {
		t.Fatal("a node of the old image joined after the upgrade")
	}
	if after := strings.Count(logs.String(), `"msg":"join refused: the node's measurements differ from the cluster's","pcrs":[4]`); after != before+1 {
		t.Fatalf("the refusal does not name PCR 4, the image's:\n%s", logs.String())
	}

	// The attacks: the saved two-set update, and the saved join configuration.
	if _, _, err := f.policy.Apply(window); !errors.Is(err, policyupdate.ErrStale) {
		t.Fatalf("the saved two-set update sent again: %v, want ErrStale", err)
	}
	for name, content := range saved {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.join(t, addr, f.old); err == nil {
		t.Fatal("a node of the old image joined after the saved update and join configuration were put back")
	}
	restarted, _ := f.joinService(t, log)
	if err := f.join(t, restarted, f.old); err == nil {
		t.Fatal("a node of the old image joined a restarted join service")
	}
	if err := f.join(t, restarted, f.new); err != nil {
		t.Fatalf("a node of the new image at the restarted join service: %v", err)
	}

	// Without an answer about the policy in force, nobody joins.
	_, config := joinConfig(t, clusterPolicy(f.old), []*x509.Certificate{f.old.CA.Certificate(), f.new.CA.Certificate()}, f.clusterID, nil)
	config.FollowPolicy(func(context.Context) (*policyupdate.Update, error) { return nil, errors.New("no key service answered") })
	silent := startJoinService(t, Options{Config: config}, f.cp.Issuer)
	if err := f.join(t, silent, f.old); err == nil {
		t.Fatal("a node joined while the policy in force was unknown")
	}
}

// keyserviceMembers trusts callers that are members of the cluster with the measurements own, on a vTPM
// roots certified: the control-plane node's join service, as the key service on the same node trusts it.
func keyserviceMembers(roots []*x509.Certificate, own measurements.M) (attestation.Validator, error) {
	return vtpm.NewValidator(roots, own, nil)
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
