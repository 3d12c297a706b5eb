package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc/codes"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// controlPlaneKeyServices runs n key services, each on a control-plane node of its own (a swtpm, a member of
// the cluster of d), with their policy ports on loopback; it returns their policies, the policy ports' addresses
// and the AK roots of their nodes.
func controlPlaneKeyServices(t *testing.T, n int, d *kms.Deriver, clusterID []byte) ([]*keyservice.Policy, []string, []*x509.Certificate, measurements.M) {
	t.Helper()
	var policies []*keyservice.Policy
	var addrs []string
	var roots []*x509.Certificate
	var image measurements.M
	for range n {
		node, err := tpmtest.NewSWTPMNode(context.Background(), t.TempDir(), vtpm.ECC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Close() })
		pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
		if err != nil {
			t.Fatal(err)
		}
		if image, err = measurements.FromPCRs(func(idx uint32) []byte { return pcrs.GetPcrs()[idx] }, 0, measurements.PCRNodeImage, measurements.PCRBootParams); err != nil {
			t.Fatal(err)
		}
		ev := measurements.ClusterIDEvent(clusterID)
		if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
			t.Fatal(err)
		}
		p, err := keyservice.NewPolicy(d, clusterID, image, t.TempDir()+"/policy.json", nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		srv, err := keyservice.NewPolicyServer(p, node.Issuer)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(srv.Stop)
		policies, addrs, roots = append(policies, p), append(addrs, ln.Addr().String()), append(roots, node.CA.Certificate())
	}
	return policies, addrs, roots, image
}

// otherImage is image with the node image b.
func otherImage(image measurements.M, b byte) measurements.M {
	out := measurements.M{}
	for idx, m := range image {
		out[idx] = m
	}
	out[measurements.PCRNodeImage] = measurements.Measurement{Expected: measurements.Digest(bytes.Repeat([]byte{b}, 32))}
	return out
}

// An upgrade's measurement policy, driven by the CLI's functions against the key services of two
// control-plane nodes and a real API server: start (both images, the narrowing left in the cluster), abort
// (the old image only, at an epoch above the narrowing), start again and finish (the new image only). The
// attack: the narrowing left in the cluster before the abort, sent by anyone after it (an administrator, or an
// upgrade controller that did not see the abort), is refused, and the old image stays in force.
func TestUpgradePolicyStartAbortFinish(t *testing.T) {
	ctx := context.Background()
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := kms.NewDeriver(ms)
	clusterID, _ := d.ClusterID()
	key, _ := d.MeasurementPolicyKey()
	policies, addrs, roots, old := controlPlaneKeyServices(t, 2, d, clusterID)
	newImage := otherImage(old, 0x2e)
	api := kubeapitest.New(t)
	var out bytes.Buffer
	up := &PolicyUpgrade{
		Key: key, ClusterID: clusterID, KeyServices: addrs, Known: []measurements.M{newImage}, API: api.Client(t), Out: &out,
		Trust: func(sets ...measurements.M) (attestation.Validator, error) {
			return keyservice.MemberValidators(attestation.MiniVTPM, roots, clusterID, nil)(sets)
		},
	}
	// The peer policy the provider hands joining nodes: the window's sets while it is open, none otherwise.
	var peerPolicy []measurements.M
	up.PeerPolicy = func(_ context.Context, sets ...measurements.M) error {
		peerPolicy = sets
		return nil
	}
	inForce := func() []*policyupdate.Update {
		var us []*policyupdate.Update
		for _, p := range policies {
			u, _ := p.Current()
			us = append(us, u)
		}
		return us
	}
	oldSet := policyupdate.ImageSet{Image: "sha256:" + strings.Repeat("11", 32), Measurements: old}
	newSet := policyupdate.ImageSet{Image: "sha256:" + strings.Repeat("2e", 32), Measurements: newImage}
	window, narrowing, err := up.Start(ctx, oldSet, newSet)
	if err != nil {
		t.Fatal(err)
	}
	if window.Epoch != 1 || narrowing.Epoch != 2 || len(window.Sets) != 2 || len(narrowing.Sets) != 1 {
		t.Fatalf("start: %v, %v", window, narrowing)
	}
	// Each set names its image, under the MAC.
	if window.ImageOf(0) != oldSet.Image || window.ImageOf(1) != newSet.Image || narrowing.ImageOf(0) != newSet.Image {
		t.Fatalf("the images of the start's sets: %q, %q", window.Images, narrowing.Images)
	}
	if len(peerPolicy) != 2 || !containsSet(peerPolicy[:1], old) || !containsSet(peerPolicy[1:], newImage) {
		t.Fatalf("the peer policy after the start: %v, want the old and the new image", peerPolicy)
	}
	for _, u := range inForce() {
		if !u.Same(window) {
			t.Fatalf("a key service has %v in force, want %v", u, window)
		}
	}
	left, leftRaw, found, err := keyservice.LoadNarrowing(ctx, api.Client(t))
	if err != nil || !found || !left.Same(narrowing) {
		t.Fatalf("the narrowing left in the cluster: %v, %v, %v", left, found, err)
	}
	// check shows the configuration's image against both in force, and the PCR that differs.
	st, err := up.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var check bytes.Buffer
	c := &config.Config{Provider: config.Provider{Mini: &config.Mini{ImageDigest: "sha256:" + strings.Repeat("2e", 32)}}, Attestation: config.Attestation{Measurements: newImage}}
	if err := printUpgradeCheck(&check, c, st, kubernetesVersions{Cluster: "v1.36.3", Image: "v1.37.2"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"node image sha256:2e2e", "An upgrade is open",
		"Kubernetes: the cluster runs v1.36.3, the configuration's node image v1.37.2", "apply upgrades Kubernetes from v1.36.3 to v1.37.2", "PCR 4: " + old[measurements.PCRNodeImage].Expected.String() + " -> " + strings.Repeat("2e", 32)} {
		if !strings.Contains(check.String(), want) {
			t.Errorf("check does not say %q:\n%s", want, check.String())
		}
	}
	// Another upgrade cannot start while one is open; the same one resumes.
	if _, _, err := up.Start(ctx, oldSet, policyupdate.ImageSet{Image: "sha256:" + strings.Repeat("3f", 32), Measurements: otherImage(old, 0x3f)}); err == nil || !strings.Contains(err.Error(), "open already") {
		t.Fatalf("a second upgrade while one is open: %v", err)
	}
	if again, _, err := up.Start(ctx, oldSet, newSet); err != nil || !again.Same(window) {
		t.Fatalf("the same upgrade started again: %v, %v", again, err)
	}

	rollback, err := up.Abort(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rollback.Epoch != 3 || len(rollback.Sets) != 1 || !containsSet(rollback.Sets, old) || rollback.ImageOf(0) != oldSet.Image {
		t.Fatalf("abort: %v", rollback)
	}
	if peerPolicy != nil {
		t.Fatalf("the peer policy after the abort: %v, want none", peerPolicy)
	}
	if _, _, found, _ := keyservice.LoadNarrowing(ctx, api.Client(t)); found {
		t.Fatal("the narrowing is still left in the cluster after the abort")
	}
	// The attack: the narrowing saved from before the abort is sent to every key service.
	v, _ := up.Trust(old, newImage)
	if _, err := keyservice.SendPolicy(ctx, addrs, v, leftRaw); err == nil || !strings.Contains(err.Error(), "older") || !strings.Contains(err.Error(), codes.FailedPrecondition.String()) {
		t.Fatalf("the narrowing from before the abort: %v, want refused as older", err)
	}
	for _, u := range inForce() {
		if !u.Same(rollback) {
			t.Fatalf("a key service has %v in force after the narrowing was replayed, want %v", u, rollback)
		}
	}

	window, narrowing, err = up.Start(ctx, oldSet, newSet)
	if err != nil || window.Epoch != 4 || narrowing.Epoch != 5 {
		t.Fatalf("start after the abort: %v, %v, %v", window, narrowing, err)
	}
	if len(peerPolicy) != 2 {
		t.Fatalf("the peer policy after the second start: %v", peerPolicy)
	}
	done, err := up.Finish(ctx)
	if err != nil || !done.Same(narrowing) {
		t.Fatalf("finish: %v, %v", done, err)
	}
	if peerPolicy != nil {
		t.Fatalf("the peer policy after the finish: %v, want none", peerPolicy)
	}
	for _, u := range inForce() {
		if !u.Same(narrowing) {
			t.Fatalf("a key service has %v in force after the finish, want %v", u, narrowing)
		}
	}
	// The key services of this test still run the old image, which the policy in force no longer names: the
	// CLI trusts them by a configuration that names it.
	if _, err := up.Status(ctx); err == nil {
		if st, _ := up.Status(ctx); len(st.Unreachable) == 0 {
			t.Fatal("key services of an image no set names were trusted")
		}
	}
	up.Known = append(up.Known, old)
	if _, err := up.Abort(ctx); err == nil || !strings.Contains(err.Error(), "no upgrade is open") {
		t.Fatalf("abort without an open upgrade: %v", err)
	}
	st, err = up.Status(ctx)
	if err != nil || len(st.Unreachable) != 0 || !st.Latest.Same(narrowing) {
		t.Fatalf("status: %+v, %v", st, err)
	}
	if !strings.Contains(out.String(), "in force at 2 key services") {
		t.Fatalf("the CLI's output:\n%s", out.String())
	}
}

// upgrade start refuses, before it reads the workspace or reaches a key service, new measurements that would
// let any image in, and a file that is not a measurement policy.
func TestUpgradeStartRefusesAcceptAnyImage(t *testing.T) {
	dir := t.TempDir()
	warnOnly := filepath.Join(dir, "warn-only.json")
	write(t, warnOnly, []byte(`{"4": {"expected": "`+strings.Repeat("ab", 32)+`", "warnOnly": true}, "8": {"expected": "`+strings.Repeat("cd", 32)+`"}}`))
	garbage := filepath.Join(dir, "garbage.json")
	write(t, garbage, []byte(`{"4": "not a measurement"}`))
	for file, want := range map[string]string{warnOnly: "accepts any node image", garbage: "parsing measurements"} {
		_, errOut, code := run("upgrade", "start", "--measurements", file, "--workspace", dir)
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, want 2 and %q:\n%s", filepath.Base(file), code, want, errOut)
		}
	}
	if _, errOut, code := run("upgrade", "start", "--workspace", dir); code == 0 || !strings.Contains(errOut, "measurements") {
		t.Errorf("without --measurements: exit %d\n%s", code, errOut)
	}
}
