package joinservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// An administrator of the cluster edits the join configuration (a ConfigMap it may edit) so that a node of
// another image joins: its measurements, an accept-all (warn-only) policy, or the measurements with a MAC under
// a key of its own or without a MAC; or so that a node whose vTPM its own CA certified joins (another
// attestation-key root). Each edit is detected and logged, and the node is refused; the same change made by
// who holds the master secret (the CLI) does take effect.
func TestEditedJoinConfigurationIsRefused(t *testing.T) {
	cp := swtpmNode(t)
	node := simulatorNode(t)
	roots := []*x509.Certificate{node.CA.Certificate()}
	var logs syncBuffer
	dir, config := joinConfig(t, clusterPolicy(node), roots, bytes.Repeat([]byte{1}, 32), slog.New(slog.NewJSONHandler(&logs, nil)))
	tokens := &countingTokens{}
	addr := startJoinService(t, Options{Config: config, Tokens: tokens}, cp.Issuer)
	joinAs := func(issuer attestation.Issuer) error {
		_, err := joiner{addr: addr, issuer: issuer, roots: []*x509.Certificate{cp.CA.Certificate()}, policy: clusterPolicy(cp)}.join(t, &joinpb.JoinRequest{KubeletCsr: kubeletCSR(t, "node-0")})
		return err
	}
	join := func() error { return joinAs(node.Issuer) }
	// A node whose vTPM a CA of the administrator's (or the host's) certified: it can claim any measurements.
	forged, adminCA := namedNode(t, "node-0")
	if err := joinAs(forged); err == nil {
		t.Fatal("a node whose attestation key the cluster does not trust joined")
	}
	if err := join(); err != nil {
		t.Fatalf("a node of the cluster's image: %v", err)
	}
	// The node now runs another image.
	if err := node.Issuer.Measure(measuredboot.PCRNodeImage, eventlog.IPL, []byte("node image sha256:"+strings.Repeat("2", 64))); err != nil {
		t.Fatal(err)
	}
	if err := join(); err == nil {
		t.Fatal("a node of another image joined")
	}
	// The other image's measurements, as its TPM holds them.
	pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	other := measurements.M{}
	for idx := range clusterPolicy(node) {
		var d measurements.Digest
		copy(d[:], pcrs.GetPcrs()[idx])
		other[idx] = measurements.Measurement{Expected: d}
	}
	if other[measuredboot.PCRNodeImage] == clusterPolicy(node)[measuredboot.PCRNodeImage] {
		t.Fatal("the other image has the same measurement")
	}
	otherJSON, _ := json.Marshal(other)
	acceptAll := measurements.M{}
	for idx := range other {
		acceptAll[idx] = measurements.Measurement{WarnOnly: true}
	}
	acceptAllJSON, _ := json.Marshal(acceptAll)
	original := map[string][]byte{}
	for _, name := range append(configFiles, MACFile) {
		original[name], _ = os.ReadFile(filepath.Join(dir, name))
	}
	restore := func() {
		for name, content := range original {
			os.WriteFile(filepath.Join(dir, name), content, 0o644)
		}
	}
	attacker := map[string]attestation.Issuer{"another AK root": forged}
	for name, edit := range map[string]func(){
		"the other image's measurements": func() { os.WriteFile(filepath.Join(dir, MeasurementsFile), otherJSON, 0o644) },
		"an accept-all policy":           func() { os.WriteFile(filepath.Join(dir, MeasurementsFile), acceptAllJSON, 0o644) },
		"another AK root": func() {
			os.WriteFile(filepath.Join(dir, AKRootsFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: adminCA.Raw}), 0o644)
		},
		"a MAC under the administrator's key": func() {
			os.WriteFile(filepath.Join(dir, MeasurementsFile), otherJSON, 0o644)
			files := map[string][]byte{}
			for _, name := range configFiles {
				files[name], _ = os.ReadFile(filepath.Join(dir, name))
			}
			os.WriteFile(filepath.Join(dir, MACFile), []byte(hex.EncodeToString(ConfigMAC(bytes.Repeat([]byte{0xad}, 32), files))), 0o644)
		},
		"no MAC": func() {
			os.WriteFile(filepath.Join(dir, MeasurementsFile), otherJSON, 0o644)
			os.WriteFile(filepath.Join(dir, MACFile), nil, 0o644)
		},
	} {
		t.Run(name, func(t *testing.T) {
			defer restore()
			before := strings.Count(logs.String(), "join configuration refused: it is not the one the control plane wrote")
			edit()
			var issuer attestation.Issuer = node.Issuer
			if a, ok := attacker[name]; ok {
				issuer = a
			}
			if err := joinAs(issuer); err == nil {
				t.Fatal("the node the edit is for joined")
			}
			if after := strings.Count(logs.String(), "join configuration refused: it is not the one the control plane wrote"); after != before+1 {
				t.Fatalf("the edit was logged %d times, want once:\n%s", after-before, logs.String())
			}
		})
	}
	if tokens.n != 1 {
		t.Fatalf("%d tokens, want 1 (the first join)", tokens.n)
	}
	// The same change by who holds the master secret takes effect: the MAC is what stopped the edits.
	writeSigned(t, dir, MeasurementsFile, otherJSON)
	if err := join(); err != nil {
		t.Fatalf("after an authentic change of the policy: %v", err)
	}
}

// The join service gets the key of its configuration's MAC from the key service, which it trusts by its own
// node's boot measurements and cluster ID, not by the configuration the key authenticates.
func TestFetchConfigKey(t *testing.T) {
	ctx := context.Background()
	cp := swtpmNode(t)
	d, clusterID := masterSecret(t)
	roots := []*x509.Certificate{cp.CA.Certificate()}
	if _, err := OwnMemberPolicy(ctx, cp.Issuer); err == nil || !strings.Contains(err.Error(), "no member") {
		t.Fatalf("the policy of a node without a cluster ID: %v", err)
	}
	measureClusterID(t, cp.Issuer, clusterID)
	own, err := OwnMemberPolicy(ctx, cp.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	members, _ := vtpm.NewValidator(roots, own, nil)
	ksAddr, _ := startKeyService(t, keyservice.New(d, slog.New(slog.DiscardHandler)), cp.Issuer, members)
	key, err := FetchConfigKey(ctx, fixedAddrs(ksAddr), KeyServiceTrust{Issuer: cp.Issuer, AKRoots: roots, Roles: roles{"node-0": true}})
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := d.JoinConfigKey(); !bytes.Equal(key, want) {
		t.Fatal("the key is not the master secret's join-config key")
	}
	// A key service on a vTPM the provider did not certify is not asked.
	_, otherCA, _ := tpmtest.NewCACert("other AK CA", time.Hour)
	if _, err := FetchConfigKey(ctx, fixedAddrs(ksAddr), KeyServiceTrust{Issuer: cp.Issuer, AKRoots: []*x509.Certificate{otherCA}, Roles: roles{"node-0": true}}); err == nil {
		t.Fatal("the key was taken from a key service with an attestation key of another CA")
	}
}
