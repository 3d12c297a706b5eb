package bootstrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// The first control-plane node keeps the cluster's state on its encrypted state disk. After a reboot it has
// no master secret: it refuses Init, refuses Recover with another master secret (and stays fresh), and with
// the right one unlocks the disk, measures the cluster ID and restarts Kubernetes from its state.
func TestInitThenRecoverFromTheStateDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("state disks need root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	image := filepath.Join(dir, "state-disk.img")
	f, _ := os.Create(image)
	f.Truncate(64 << 20)
	f.Close()
	log := slog.New(slog.DiscardHandler)
	newDisk := func() *stateDisk {
		d, err := prepareStateDisk(ctx, image, log)
		if err != nil {
			t.Fatal(err)
		}
		d.mountpoint = filepath.Join(dir, "mnt")
		d.targets = map[string]string{"var": filepath.Join(dir, "var"), "kubernetes": filepath.Join(dir, "kubernetes")}
		return d
	}
	unmount := func(d *stateDisk) {
		for _, target := range d.targets {
			exec.Command("umount", target).Run()
		}
		exec.Command("umount", d.mountpoint).Run()
	}
	ms, _ := kms.GenerateMasterSecret()
	deriver, _ := kms.NewDeriver(ms)
	clusterID, _ := deriver.ClusterID()

	// First boot: init.
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	disk := newDisk()
	policy, _ := json.Marshal(node.Policy)
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: &recordingKubernetes{}, log: log, disk: disk}
	mirrors := []*initpb.RegistryMirror{{Registry: "localhost:5001", Endpoints: []string{"http://10.217.0.1:5000"}}, {Registry: "docker.io", Endpoints: []string{"https://10.0.0.5"}}}
	creds := []*initpb.RegistryCredentials{{Registry: "docker.io", Username: "robot", Password: testPassword}}
	if _, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, RegistryMirrors: mirrors, RegistryCredentials: creds, DnsServers: []string{"10.0.0.53"}}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	// The credentials are kept on the encrypted state disk, readable by root only.
	if fi, err := os.Stat(disk.credentialsFile()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kept credentials: %v, %v", fi, err)
	}
	if err := os.WriteFile(filepath.Join(disk.targets["var"], "etcd-data"), []byte("the cluster's state"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No device nodes and no set-user-ID programs from the state disk; nothing runs from /etc/kubernetes.
	for target, want := range map[string][]string{
		disk.mountpoint:            {"nodev", "nosuid"},
		disk.targets["var"]:        {"nodev", "nosuid"},
		disk.targets["kubernetes"]: {"nodev", "nosuid", "noexec"},
	} {
		opts := mountOptions(t, target)
		for _, o := range want {
			if !slices.Contains(opts, o) {
				t.Errorf("%s is mounted %v, without %s", target, opts, o)
			}
		}
	}
	unmount(disk)
	node.Close()

	// Reboot: a fresh TPM, the same disk.
	node, err = tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	disk = newDisk()
	recovering, err := disk.hasState()
	if err != nil || !recovering {
		t.Fatalf("hasState after init = %v, %v", recovering, err)
	}
	k8s := &recordingKubernetes{}
	var started []byte
	s = &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: log, disk: disk, recovering: true,
		life: lifecycleFuncs{recovered: func(_ *kms.MasterSecret, id []byte, kept KeptPolicy) error {
			started = id
			if len(kept.Measurements) != len(node.Policy) || kept.Attestation != nil {
				t.Errorf("the key service got a policy of %d PCRs and attestation policy %q, want the %d PCRs from init", len(kept.Measurements), kept.Attestation, len(node.Policy))
			}
			return nil
		}}}
	if _, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Init of a node with a cluster on its disk = %v, want FailedPrecondition", err)
	}
	other, _ := kms.GenerateMasterSecret()
	if _, err := s.Recover(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: other.Key, Salt: other.Salt}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Recover with another master secret = %v, want FailedPrecondition", err)
	}
	pcr15 := func() []byte {
		pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
		if err != nil {
			t.Fatal(err)
		}
		return pcrs.GetPcrs()[15]
	}
	if !bytes.Equal(pcr15(), make([]byte, 32)) {
		t.Fatal("a refused recovery measured a cluster ID")
	}
	resp, err := s.Recover(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	defer unmount(disk)
	if !bytes.Equal(resp.GetClusterId(), clusterID) || !bytes.Equal(started, clusterID) || k8s.restarts != 1 {
		t.Fatalf("Recover: cluster ID %x (want %x), services started with %x, %d kubelet restarts", resp.GetClusterId(), clusterID, started, k8s.restarts)
	}
	if exp := measurements.ExpectedClusterIDPCR(clusterID); !bytes.Equal(pcr15(), exp[:]) {
		t.Fatal("PCR 15 does not hold the cluster ID after recovery")
	}
	if got, err := os.ReadFile(filepath.Join(disk.targets["var"], "etcd-data")); err != nil || string(got) != "the cluster's state" {
		t.Fatalf("state after recovery: %q, %v", got, err)
	}
	// The registry mirrors, their credentials and the DNS servers of init, kept on the state disk (Recover
	// carries none).
	if len(k8s.mirrors) != 1 || len(k8s.mirrors[0]) != 2 || k8s.mirrors[0][0].Registry != "localhost:5001" {
		t.Fatalf("the recovered node's runtime was configured with mirrors %+v, want those of init", k8s.mirrors)
	}
	if len(k8s.creds) != 1 || len(k8s.creds[0]) != 1 || k8s.creds[0][0].Registry != "docker.io" || k8s.creds[0][0].Password != testPassword {
		t.Fatalf("the recovered node's runtime was configured with credentials %v, want those of init", k8s.creds)
	}
	if len(k8s.dns) != 1 || !slices.Equal(k8s.dns[0], []string{"10.0.0.53"}) {
		t.Fatalf("the recovered node was configured with DNS servers %v, want those of init", k8s.dns)
	}
	if _, err := s.Recover(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second Recover = %v, want FailedPrecondition", err)
	}
}

// mountOptions returns the per-mount options of the mount at target (the last one, if several are stacked),
// from /proc/self/mountinfo.
func mountOptions(t *testing.T, target string) []string {
	t.Helper()
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var opts []string
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == target {
			opts = strings.Split(f[5], ",")
		}
	}
	if opts == nil {
		t.Fatalf("%s is not mounted", target)
	}
	return opts
}

// Recovery hands the key service the policy kept on the state disk; one that would accept any node image, or
// the genuine image booted with any boot parameters, is refused, and a missing one (a node other than the first
// control-plane node) is no policy.
func TestRecoverRefusesAnAcceptAnyImagePolicy(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	path := filepath.Join(t.TempDir(), "measurements.json")
	if p, err := readClusterPolicy(path); err != nil || p != nil {
		t.Fatalf("no policy file: %v, %v", p, err)
	}
	good, _ := json.Marshal(node.Policy)
	os.WriteFile(path, good, 0o600)
	if p, err := readClusterPolicy(path); err != nil || len(p) != len(node.Policy) {
		t.Fatalf("the policy init kept: %v, %v", p, err)
	}
	for name, bad := range tpmtest.AcceptAnyImage(node.Policy) {
		raw, _ := json.Marshal(bad)
		os.WriteFile(path, raw, 0o600)
		if p, err := readClusterPolicy(path); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
			t.Errorf("%s: readClusterPolicy = %v, %v; want ErrAcceptsAnyImage", name, p, err)
		}
	}
}
