package bootstrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// testDisk is a state disk image for recovery tests, with its mount points in a test directory.
type testDisk struct {
	t     *testing.T
	dir   string
	image string
}

// newTestDisk makes a blank 64 MiB disk image; it skips the test where state disks cannot be used.
func newTestDisk(t *testing.T) testDisk {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("state disks need root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "state-disk.img")
	f, err := os.Create(image)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return testDisk{t: t, dir: dir, image: image}
}

// boot finds the disk as a node does at boot; the node's mounts of it go when the test ends.
func (d testDisk) boot() *stateDisk {
	d.t.Helper()
	s, err := prepareStateDisk(context.Background(), d.image, slog.New(slog.DiscardHandler))
	if err != nil {
		d.t.Fatal(err)
	}
	s.mountpoint = filepath.Join(d.dir, "mnt")
	s.targets = map[string]string{"var": filepath.Join(d.dir, "var"), "kubernetes": filepath.Join(d.dir, "kubernetes")}
	d.t.Cleanup(func() { unmountDisk(s) })
	return s
}

// unmountDisk takes the node's mounts of s down, as a reboot does.
func unmountDisk(s *stateDisk) {
	for _, target := range s.targets {
		exec.Command("umount", target).Run()
	}
	exec.Command("umount", s.mountpoint).Run()
}

// initSNPNode initialises the first control-plane node of img with its state disk for the cluster of ms
// under att (the wire form the CLI sends), and takes its mounts down, as a reboot does.
func initSNPNode(t *testing.T, img snpImage, disk testDisk, ms *kms.MasterSecret, att []byte) {
	t.Helper()
	issuer, _ := img.node(t, FirstControlPlane)
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: issuer, k8s: &recordingKubernetes{}, log: slog.New(slog.DiscardHandler), disk: disk.boot()}
	if _, err := s.Init(context.Background(), &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: []byte("null"), Attestation: att}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	unmountDisk(s.disk)
}

// recoveringSNPNode boots the first control-plane node of img again with disk: fresh, waiting for Recover.
// recovered records what the key service would get.
func recoveringSNPNode(t *testing.T, img snpImage, disk testDisk, recovered *[]KeptPolicy) (*initServer, *snp.Issuer) {
	t.Helper()
	issuer, _ := img.node(t, FirstControlPlane)
	d := disk.boot()
	if has, err := d.hasState(); err != nil || !has {
		t.Fatalf("hasState after init = %v, %v", has, err)
	}
	return &initServer{initSecretHash: testInitSecretHash[:], issuer: issuer, k8s: &recordingKubernetes{}, log: slog.New(slog.DiscardHandler), disk: d, recovering: true,
		life: lifecycleFuncs{recovered: func(_ *kms.MasterSecret, _ []byte, kept KeptPolicy) error {
			*recovered = append(*recovered, kept)
			return nil
		}}}, issuer
}

// The first control-plane node of a qemu-sev-snp cluster keeps the cluster's attestation policy on its
// encrypted state disk at init. After a reboot (a fresh report, no cluster binding) it refuses Init, refuses
// Recover with another cluster's master secret and stays fresh; with its own it unlocks the disk, binds the
// cluster ID into its reports, and its key service enforces the kept policy: members of the cluster's launch
// measurement get keys, a member of another launch measurement does not.
func TestSNPInitThenRecoverFromTheStateDisk(t *testing.T) {
	disk := newTestDisk(t)
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	c := newSNPCluster(t, img)
	att, err := validators.MarshalPolicy(c.att)
	if err != nil {
		t.Fatal(err)
	}
	initSNPNode(t, img, disk, c.ms, att)

	var recovered []KeptPolicy
	s, issuer := recoveringSNPNode(t, img, disk, &recovered)
	ctx := context.Background()
	if _, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: c.ms.Key, Salt: c.ms.Salt, Measurements: []byte("null"), Attestation: att}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Init of a node with a cluster on its disk = %v, want FailedPrecondition", err)
	}
	// The CLI of another cluster (the operator's init secret, another master secret).
	other := newSNPCluster(t, img)
	if _, err := s.Recover(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: other.ms.Key, Salt: other.ms.Salt}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Recover with another cluster's master secret = %v, want FailedPrecondition", err)
	}
	if issuer.ClusterID() != nil || len(recovered) != 0 {
		t.Fatalf("a refused recovery bound cluster %x into the node's reports, or started its services (%d)", issuer.ClusterID(), len(recovered))
	}
	resp, err := s.Recover(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: c.ms.Key, Salt: c.ms.Salt})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if !bytes.Equal(resp.GetClusterId(), c.clusterID) || !bytes.Equal(issuer.ClusterID(), c.clusterID) {
		t.Fatalf("Recover: cluster ID %x, the node's reports bind %x; want %x", resp.GetClusterId(), issuer.ClusterID(), c.clusterID)
	}
	if len(recovered) != 1 || recovered[0].Measurements != nil || !bytes.Equal(recovered[0].Attestation, att) {
		t.Fatalf("the key service got %+v, want the attestation policy of init alone", recovered)
	}
	if _, err := s.Recover(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: c.ms.Key, Salt: c.ms.Salt}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second Recover = %v, want FailedPrecondition", err)
	}

	// The key service of the recovered node, with the secret the bootstrapper hands it.
	secret := recoveredSecret(c.ms, c.clusterID, recovered[0], FirstControlPlane, s.disk.uuid)
	ksAddr, _ := startSNPKeyService(t, img, issuer, secret)
	rogue, _ := c.member(t, newSNPImage(t, pki, 0x66), "control-plane-1")
	member, _ := c.member(t, img, "control-plane-1")
	for name, tc := range map[string]struct {
		issuer attestation.Issuer
		wantOK bool
	}{
		"a member of the cluster's launch measurement": {member, true},
		"a member of another launch measurement":       {rogue, false},
	} {
		client, err := keyservice.NewClient(ksAddr, tc.issuer, []attestation.Validator{anySNPPeer(t, img)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.GetMasterSecret(ctx)
		client.Close()
		if (err == nil) != tc.wantOK {
			t.Errorf("%s: GetMasterSecret = %v, want success %v", name, err, tc.wantOK)
		}
	}
}

// The host cannot write a policy of its own onto an encrypted state disk (it has no disk key), but it can
// swap the whole disk for one of its own whose key it knows: here a disk of a cluster the host initialised
// itself, with the genuine image, whose kept policy also accepts the host's own launch measurement. The
// operator's recovery with the cluster's master secret does not open that disk: it is refused before anything
// of the disk is read, the node stays fresh, and no key service starts with the host's policy.
func TestSNPRecoverRefusesAStateDiskOfAnotherCluster(t *testing.T) {
	disk := newTestDisk(t)
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	c := newSNPCluster(t, img)
	hosts := newSNPCluster(t, img)
	loose := img.clusterPolicy(t)
	rogue := newSNPImage(t, pki, 0x66)
	loose.SNP.Policy.Measurements = append(loose.SNP.Policy.Measurements, rogue.measurement[:])
	att, err := validators.MarshalPolicy(loose)
	if err != nil {
		t.Fatal(err)
	}
	initSNPNode(t, img, disk, hosts.ms, att)

	var recovered []KeptPolicy
	s, issuer := recoveringSNPNode(t, img, disk, &recovered)
	_, err = s.Recover(context.Background(), &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: c.ms.Key, Salt: c.ms.Salt})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Recover on the host's disk = %v, want FailedPrecondition", err)
	}
	if issuer.ClusterID() != nil || len(recovered) != 0 {
		t.Fatalf("the refused recovery bound cluster %x, or started the key service with %+v", issuer.ClusterID(), recovered)
	}
	if _, err := os.Stat(s.disk.attestationFile()); err == nil {
		t.Fatal("the host's disk is mounted after the refused recovery")
	}
}

// What a node reads back from its unlocked state disk for its key service: the kept policy of its variant, or
// nothing; a disk with both policies, measurements on a node without a vTPM, or an attestation policy of
// another variant, of a vTPM variant, or one no validator can enforce, stops the recovery.
func TestReadKeptPolicy(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	att, err := validators.MarshalPolicy(img.clusterPolicy(t))
	if err != nil {
		t.Fatal(err)
	}
	noMeasurements := img.clusterPolicy(t)
	noMeasurements.SNP.Policy.Measurements = nil
	unenforceable, err := validators.MarshalPolicy(noMeasurements)
	if err != nil {
		t.Fatal(err)
	}
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	pcrs, _ := json.Marshal(node.Policy) // a valid measurement policy, as a vTPM node keeps it
	vtpmAtt := []byte(`{"version":1,"variant":"mini-vtpm"}`)
	snpVariant := attestation.QEMUSEVSNP
	for name, tc := range map[string]struct {
		measurements, attestation []byte
		own                       attestation.Variant
		wantErr                   string
	}{
		"an SEV-SNP node's policy":             {attestation: att, own: snpVariant},
		"a vTPM node's policy":                 {measurements: pcrs, own: attestation.MiniVTPM},
		"neither":                              {own: snpVariant},
		"both":                                 {measurements: pcrs, attestation: att, own: snpVariant, wantErr: "both a measurement policy"},
		"both on a vTPM node":                  {measurements: pcrs, attestation: att, own: attestation.MiniVTPM, wantErr: "attests as mini-vtpm"},
		"measurements on an SEV-SNP node":      {measurements: pcrs, own: snpVariant, wantErr: "no vTPM"},
		"a vTPM variant's attestation policy":  {attestation: vtpmAtt, own: snpVariant, wantErr: "mini-vtpm"},
		"an SEV-SNP policy on a vTPM node":     {attestation: att, own: attestation.MiniVTPM, wantErr: "attests as mini-vtpm"},
		"a policy without launch measurements": {attestation: unenforceable, own: snpVariant, wantErr: "cannot be enforced"},
		"not a policy":                         {attestation: []byte(`{"version":1,"variant":"qemu-sev-snp","snp":{"policy":{}},"extra":1}`), own: snpVariant, wantErr: "not a valid"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			d := &stateDisk{targets: map[string]string{"var": dir}}
			if err := os.MkdirAll(filepath.Dir(d.policyFile()), 0o700); err != nil {
				t.Fatal(err)
			}
			if tc.measurements != nil {
				os.WriteFile(d.policyFile(), tc.measurements, 0o600)
			}
			if tc.attestation != nil {
				os.WriteFile(d.attestationFile(), tc.attestation, 0o600)
			}
			kept, err := readKeptPolicy(d, tc.own)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("readKeptPolicy: %v", err)
			case tc.wantErr == "" && (!bytes.Equal(kept.Attestation, tc.attestation) || (kept.Measurements == nil) != (tc.measurements == nil)):
				t.Fatalf("readKeptPolicy = %+v, want the policy kept", kept)
			case tc.wantErr != "" && (err == nil || !strings.Contains(strings.ReplaceAll(err.Error(), dir, ""), tc.wantErr)):
				t.Fatalf("readKeptPolicy = %+v, %v; want an error about %q", kept, err, tc.wantErr)
			}
		})
	}
}

// After a recovery the key service gets the kept policy; a disk that kept neither gives it nothing (the first
// control-plane node then refuses to go on, firstNode.Recovered), and a secret of both, or of a vTPM variant's
// attestation policy, is refused before the key service could serve with it.
func TestRecoveredSecret(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	c := newSNPCluster(t, img)
	att, err := validators.MarshalPolicy(c.att)
	if err != nil {
		t.Fatal(err)
	}
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if s := recoveredSecret(c.ms, c.clusterID, KeptPolicy{}, FirstControlPlane, ""); s != nil {
		t.Fatalf("a disk without a policy gives the key service %+v", s)
	}
	holder := keyservice.NewSecretHolder(discard)
	if err := holder.Set(recoveredSecret(c.ms, c.clusterID, KeptPolicy{Attestation: att}, FirstControlPlane, "")); err != nil {
		t.Fatalf("the kept attestation policy: %v", err)
	}
	for name, kept := range map[string]KeptPolicy{
		"both":                       {Measurements: node.Policy, Attestation: att},
		"a vTPM variant's wire form": {Attestation: []byte(`{"version":1,"variant":"mini-vtpm"}`)},
	} {
		if err := holder.Set(recoveredSecret(c.ms, c.clusterID, kept, FirstControlPlane, "")); err == nil {
			t.Errorf("%s: the key service's secret was accepted", name)
		}
	}
}
