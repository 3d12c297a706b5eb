package joinservice

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// newImageEvent is what the fixture's node of the new image measured besides the old image's events.
var newImageEvent = []byte("node image sha256:" + strings.Repeat("2", 64))

// controlPlaneOfNewImage is a control-plane node of the fixture's cluster that booted the new image: its image
// set is the new node's, and it measured the cluster ID.
func (f *upgradeFixture) controlPlaneOfNewImage(t *testing.T) *tpmtest.Node {
	t.Helper()
	cp := swtpmNode(t)
	if err := cp.Issuer.Measure(measurements.PCRNodeImage, eventlog.IPL, newImageEvent); err != nil {
		t.Fatal(err)
	}
	if got := imageSetOf(t, cp); !equalSets(got, f.newSet) {
		t.Fatalf("the control-plane node of the new image measured %v, want %v", got, f.newSet)
	}
	measureClusterID(t, cp.Issuer, f.clusterID)
	return cp
}

func equalSets(a, b measurements.M) bool {
	return maps.Equal(a, b)
}

// joinServiceOn starts a join service like [upgradeFixture.joinService] on the control-plane node cp.
func (f *upgradeFixture) joinServiceOn(t *testing.T, cp *tpmtest.Node, log *slog.Logger) string {
	t.Helper()
	_, config := joinConfig(t, clusterPolicy(f.old), []*x509.Certificate{f.old.CA.Certificate(), f.new.CA.Certificate()}, f.clusterID, log)
	config.FollowPolicy(f.src)
	return startJoinService(t, Options{Config: config, Log: log}, cp.Issuer)
}

// joinAsBootstrapper lets node join the join service at addr as the bootstrapper does: it measures hint (nil:
// none) and then trusts a join service, certified by one of roots, of its own image or of a set of hint.
func joinAsBootstrapper(t *testing.T, addr string, node *tpmtest.Node, roots []*x509.Certificate, hint *policyupdate.PeerHint) error {
	t.Helper()
	if err := MeasurePeerHint(node.Issuer, hint); err != nil {
		t.Fatal(err)
	}
	v, err := PeerValidator(attestation.MiniVTPM, roots, imageSetOf(t, node), hint, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := atls.NewCredentials(node.Issuer, []attestation.Validator{v})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = joinpb.NewJoinClient(conn).Join(ctx, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
	return err
}

// The upgrade from the nodes' side. Without a peer policy a node trusts only a join service of its own image,
// so during the upgrade's window a node of the new image cannot join through the control plane of the old one,
// nor a node of the old image through a control-plane node of the new one (as before). With the operator's peer
// policy {old, new}, measured before the node trusts a peer by it, both join, and the join service that admits
// them logs the policy they trusted. Once the upgrade finished (only the new image in force), a node that still
// trusts the old image by its measured peer policy is refused: it must boot again with the current one.
func TestPeerPolicyOpensTheUpgradeToJoiningNodes(t *testing.T) {
	f := newUpgradeFixture(t)
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	cpNew := f.controlPlaneOfNewImage(t)
	roots := []*x509.Certificate{f.cp.CA.Certificate(), cpNew.CA.Certificate()}
	oldCP, _ := f.joinService(t, log)
	newCPAddr := f.joinServiceOn(t, cpNew, log)
	f.apply(t, 1, f.oldSet, f.newSet)

	// Without a peer policy: the nodes refuse the join service of the other image.
	if err := joinAsBootstrapper(t, oldCP, f.new, roots, nil); err == nil {
		t.Fatal("a node of the new image trusted the old image's join service without a peer policy")
	}
	if err := joinAsBootstrapper(t, newCPAddr, f.old, roots, nil); err == nil {
		t.Fatal("a node of the old image trusted the new image's join service without a peer policy")
	}

	hint, err := policyupdate.NewPeerHint(f.oldSet, f.newSet)
	if err != nil {
		t.Fatal(err)
	}
	if err := joinAsBootstrapper(t, oldCP, f.new, roots, hint); err != nil {
		t.Fatalf("a node of the new image with the peer policy {old, new}, at the old image's join service: %v", err)
	}
	if err := joinAsBootstrapper(t, newCPAddr, f.old, roots, hint); err != nil {
		t.Fatalf("a node of the old image with the peer policy {old, new}, at the new image's join service: %v", err)
	}
	if !strings.Contains(logs.String(), "the node's measured peer policy trusts only measurement sets in force") {
		t.Fatalf("the admission does not log the peer policy:\n%s", logs.String())
	}

	// The upgrade finished; the new node still trusts the old image by what it measured.
	f.apply(t, 2, f.newSet)
	if err := joinAsBootstrapper(t, newCPAddr, f.new, roots, nil); err == nil {
		t.Fatal("a node whose measured peer policy trusts the old image joined after the upgrade")
	}
	if !strings.Contains(logs.String(), "join refused: the node trusted peers by a measurement set that is not in force") {
		t.Fatalf("the refusal is not logged:\n%s", logs.String())
	}
}

// The attack: the host hints a rogue image's measurement set to a joining node, so that it trusts a join
// service of the host's making. The node's measured peer policy shows it: the genuine join service refuses the
// node, during the upgrade's window too, and logs the set that is not in force.
func TestPeerPolicyOfARogueImageIsRefused(t *testing.T) {
	f := newUpgradeFixture(t)
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	addr, _ := f.joinService(t, log)
	f.apply(t, 1, f.oldSet, f.newSet)
	roots := []*x509.Certificate{f.cp.CA.Certificate()}

	rogue := maps.Clone(f.oldSet)
	var d measurements.Digest
	rand.Read(d[:])
	rogue[measurements.PCRNodeImage] = measurements.Measurement{Expected: d}
	hint, err := policyupdate.NewPeerHint(f.oldSet, rogue)
	if err != nil {
		t.Fatal(err)
	}
	err = joinAsBootstrapper(t, addr, f.new, roots, hint)
	if err == nil {
		t.Fatal("a node that trusted a rogue image's join service by its peer policy was admitted")
	}
	rawRogue, _ := rogue.MarshalJSON()
	out := logs.String()
	if !strings.Contains(out, "join refused: the node trusted peers by a measurement set that is not in force") || !strings.Contains(out, strings.ReplaceAll(string(rawRogue), `"`, `\"`)) {
		t.Fatalf("the refusal does not name the rogue set %s:\n%s", rawRogue, out)
	}
}

// issue has issuer attest with a fresh nonce.
func issue(t *testing.T, issuer attestation.Issuer) (evidence, nonce []byte) {
	t.Helper()
	nonce = make([]byte, attestation.NonceSize)
	rand.Read(nonce)
	evidence, err := issuer.Issue(context.Background(), nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	return evidence, nonce
}

// editPeerPolicyEvent returns evidence whose event log claims data for the last peer policy event, with the
// digest of what was measured kept: what a log edited to hide a rogue peer policy looks like.
func editPeerPolicyEvent(t *testing.T, evidence []byte, data []byte) []byte {
	t.Helper()
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		t.Fatal(err)
	}
	events, err := eventlog.Parse(doc.TPM.EventLog)
	if err != nil {
		t.Fatal(err)
	}
	last := -1
	for i, e := range events {
		if e.PCR == measurements.PCRPeerPolicy {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("the evidence holds no peer policy event")
	}
	b := eventlog.NewBuilder()
	for i, e := range events {
		if i == last {
			e.Data = data
		}
		b.AppendDigest(e.PCR, e.Type, e.Digest, e.Data)
	}
	doc.TPM.EventLog = b.Bytes()
	raw, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// The attack: the node measured a rogue peer policy, and its event log is edited to claim the genuine one (the
// digest of what was measured kept, so that the log still replays to the quote). On a qemu-vtpm node the
// measurement scheme of the firmware's log binds the data of no EV_EVENT_TAG, so the quote's verification lets
// the log pass; the join service's admission replays PCR 14 from the events' data and refuses the node. On a
// mini-vtpm node the scheme binds every event's data, and the quote's verification refuses it already.
func TestPeerPolicyLogThatDisagreesWithTheQuoteIsRefused(t *testing.T) {
	node := simulatorNode(t)
	first, _ := issue(t, node.Issuer)
	doc, err := attestation.ParseDocument(first)
	if err != nil {
		t.Fatal(err)
	}
	qemu, err := vtpm.NewIssuerFor(attestation.QEMUVTPM, node.TPM, vtpm.ECC, doc.TPM.AKCert, func() ([]byte, error) { return node.Log.Bytes(), nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(qemu.Close)
	pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	set, err := measurements.FromPCRs(func(idx uint32) []byte { return pcrs.GetPcrs()[idx] }, 0, measurements.PCRNodeImage, measurements.PCRKernelBoot, measurements.PCRKernelConfig, measurements.PCRSysExts)
	if err != nil {
		t.Fatal(err)
	}
	rogue := maps.Clone(set)
	rogue[measurements.PCRNodeImage] = measurements.Measurement{Expected: measurements.Digest{0x66}}
	genuine, err := policyupdate.NewPeerHint(set)
	if err != nil {
		t.Fatal(err)
	}
	rogueHint, err := policyupdate.NewPeerHint(rogue)
	if err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	dir := t.TempDir()
	data, err := ConfigData(&validators.Policy{Variant: attestation.QEMUVTPM.Name, Measurements: set, AKRoots: []*x509.Certificate{node.CA.Certificate()}}, make([]byte, 32), testMACKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	config, err := NewConfig(dir, slog.New(slog.NewJSONHandler(&logs, nil)), testMACKey)
	if err != nil {
		t.Fatal(err)
	}
	admit := config.Validator()

	// The genuine peer policy passes; measured after it, the rogue one does not.
	if err := MeasurePeerHint(qemu, genuine); err != nil {
		t.Fatal(err)
	}
	ev, nonce := issue(t, qemu)
	if _, err := admit.Validate(context.Background(), ev, nonce); err != nil {
		t.Fatalf("a node that measured the genuine peer policy: %v", err)
	}
	if err := MeasurePeerHint(qemu, rogueHint); err != nil {
		t.Fatal(err)
	}
	ev, nonce = issue(t, qemu)
	if _, err := admit.Validate(context.Background(), ev, nonce); err == nil {
		t.Fatal("a node that measured a rogue peer policy was admitted")
	}

	// The log edited to claim the genuine peer policy where the rogue one was measured.
	edited := editPeerPolicyEvent(t, ev, genuine.Event().Data)
	if _, err := admit.Validate(context.Background(), edited, nonce); !errors.Is(err, errPeerPolicy) {
		t.Fatalf("a log edited to hide the rogue peer policy: %v, want the peer policy refused", err)
	}
	if !strings.Contains(logs.String(), "join refused: the node's peer policy (PCR 14) is not explained by its event log") {
		t.Fatalf("the refusal is not logged:\n%s", logs.String())
	}

	// The same edit of a mini-vtpm node's log: the quote's verification refuses it.
	if err := MeasurePeerHint(node.Issuer, rogueHint); err != nil {
		t.Fatal(err)
	}
	_, miniConfig := joinConfig(t, clusterPolicy(node), []*x509.Certificate{node.CA.Certificate()}, make([]byte, 32), nil)
	miniEv, miniNonce := issue(t, node.Issuer)
	if _, err := miniConfig.Validator().Validate(context.Background(), editPeerPolicyEvent(t, miniEv, genuine.Event().Data), miniNonce); err == nil || errors.Is(err, errPeerPolicy) {
		t.Fatalf("a mini-vtpm node's edited log: %v, want it refused by the quote's verification", err)
	}
}

// The continuous attestation checks members against the member policy of the sets in force, which leaves PCR 14
// alone: nodes that joined at different times, with and without a peer policy, are all members.
func TestMemberPolicyIgnoresThePeerPolicy(t *testing.T) {
	clusterID := make([]byte, 32)
	rand.Read(clusterID)
	plain, hinted := simulatorNode(t), swtpmNode(t)
	hint, err := policyupdate.NewPeerHint(imageSetOf(t, hinted))
	if err != nil {
		t.Fatal(err)
	}
	if err := MeasurePeerHint(hinted.Issuer, hint); err != nil {
		t.Fatal(err)
	}
	measureClusterID(t, plain.Issuer, clusterID)
	measureClusterID(t, hinted.Issuer, clusterID)
	_, config := joinConfig(t, clusterPolicy(plain), []*x509.Certificate{plain.CA.Certificate(), hinted.CA.Certificate()}, clusterID, nil)
	members, err := config.MemberValidator()
	if err != nil {
		t.Fatal(err)
	}
	for name, node := range map[string]*tpmtest.Node{"without a peer policy": plain, "with a peer policy": hinted} {
		ev, nonce := issue(t, node.Issuer)
		if _, err := members.Validate(context.Background(), ev, nonce); err != nil {
			t.Errorf("a member %s: %v", name, err)
		}
	}
}
