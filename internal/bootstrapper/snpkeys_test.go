package bootstrapper

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/provider"
)

// The key service and the join service of a qemu-sev-snp cluster, started as the control-plane node runs
// them: the key service (keyservice.Run) gets the secret the first node's bootstrapper hands over
// (keyServiceSecret) through its secret socket, and attests through the node's attestation agent; the join
// service gets its configuration's key from the key service (joinservice.FetchConfigKey) as its main does,
// and the state disk keys of the nodes it admits from there too. The hardware is snptest's.

// snpRoles names the control-plane nodes, as the provider does.
type snpRoles map[string]bool

func (r snpRoles) IsControlPlane(_ context.Context, name string) (bool, error) { return r[name], nil }

var snpControlPlanes = snpRoles{"control-plane-0": true, "control-plane-1": true}

// snpRolesProvider is the provider as a joining control-plane node asks it which nodes are control-plane nodes.
type snpRolesProvider struct {
	provider.Node
}

func (snpRolesProvider) IsControlPlane(ctx context.Context, name string) (bool, error) {
	return snpControlPlanes.IsControlPlane(ctx, name)
}

// snpCluster is a qemu-sev-snp cluster of an image: its master secret, cluster ID and attestation policy.
type snpCluster struct {
	img       snpImage
	ms        *kms.MasterSecret
	d         *kms.Deriver
	clusterID []byte
	att       *validators.Policy
}

func newSNPCluster(t *testing.T, img snpImage) snpCluster {
	t.Helper()
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.ClusterID()
	if err != nil {
		t.Fatal(err)
	}
	return snpCluster{img: img, ms: ms, d: d, clusterID: id, att: img.clusterPolicy(t)}
}

// member boots the node name of img and makes it a member of the cluster, as init or a join does.
func (c snpCluster) member(t *testing.T, img snpImage, name string) (*snp.Issuer, peerTrust) {
	t.Helper()
	issuer, peers := img.node(t, name)
	if _, err := recordClusterID(issuer, c.clusterID); err != nil {
		t.Fatal(err)
	}
	return issuer, peers
}

var discard = slog.New(slog.DiscardHandler)

// serveAgent serves the attestation agent of issuer on a socket, as the bootstrapper does for the node's
// services, and returns the agent's client, as the services on the node attest with.
func serveAgent(t *testing.T, issuer attestation.Issuer) attestation.Issuer {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "attest.sock")
	stop, err := serveLocal(socket, agent.Handler(issuer, discard), make(chan error, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return agent.NewClient(socket, issuer.Variant())
}

// serveSecret serves holder on a secret socket, as the bootstrapper of a control-plane node does.
func serveSecret(t *testing.T, holder *keyservice.SecretHolder) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "keys.sock")
	stop, err := serveLocal(socket, holder, make(chan error, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return socket
}

// startSNPKeyService runs the key service of the control-plane node of issuer with secret, and returns the
// addresses of its mutual aTLS port and its policy port.
func startSNPKeyService(t *testing.T, img snpImage, issuer attestation.Issuer, secret *keyservice.Secret) (addr, policyAddr string) {
	t.Helper()
	holder := keyservice.NewSecretHolder(discard)
	if err := holder.Set(secret); err != nil {
		t.Fatal(err)
	}
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
	opts := keyservice.Options{
		Listener: ln, SecretSocket: serveSecret(t, holder), Issuer: serveAgent(t, issuer),
		Allowed: snpControlPlanes.IsControlPlane, DiskBindings: keyservice.NewDiskBindings(),
		PolicyFile: filepath.Join(t.TempDir(), "measurement-policy.json"), PolicyListen: func() (net.Listener, error) { return pl, nil },
		Log: discard, Validators: validators.Options{SNPRoots: img.vopts.Roots},
	}
	go func() { done <- keyservice.Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the key service stopped: %v", err)
		}
	})
	return ln.Addr().String(), pl.Addr().String()
}

func fixedEndpoints(addrs ...string) func(context.Context) ([]string, error) {
	return func(context.Context) ([]string, error) { return addrs, nil }
}

// startSNPJoinServiceOnKeys starts the join service of the control-plane node whose attestation agent is
// agentIssuer, as its main does: the key of its configuration's MAC and the measurement policy from the key
// service at ksAddr and policyAddr, the disk keys from there too. The configuration is the one the first node
// wrote at init. It returns the join service's address, or the error of its start.
func startSNPJoinServiceOnKeys(t *testing.T, c snpCluster, agentIssuer attestation.Issuer, ksAddr, policyAddr string, mesh joinservice.Mesh) (string, error) {
	t.Helper()
	ctx := context.Background()
	trust := joinservice.KeyServiceTrust{Issuer: agentIssuer, Roles: snpControlPlanes, SNP: c.img.vopts}
	macKey, err := joinservice.FetchConfigKey(ctx, fixedEndpoints(ksAddr), trust)
	if err != nil {
		return "", err
	}
	src, closeSrc, err := joinservice.KeyServicePolicy(ctx, fixedEndpoints(policyAddr), trust)
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { closeSrc() })
	written, err := c.d.JoinConfigKey()
	if err != nil {
		t.Fatal(err)
	}
	data, err := joinservice.ConfigData(c.att, c.clusterID, written, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts := validators.Options{SNPRoots: c.img.vopts.Roots}
	config, err := joinservice.NewConfigWith(dir, discard, macKey, opts)
	if err != nil {
		return "", err
	}
	config.FollowPolicy(src)
	disks := &joinservice.KeyServiceDiskKeys{Endpoints: fixedEndpoints(ksAddr), Issuer: agentIssuer, Config: config, Roles: snpControlPlanes}
	srv, err := joinservice.NewGRPCServer(joinservice.New(joinservice.Options{
		Config: config, Tokens: snpTokens{}, Roles: snpControlPlanes, Disks: disks, Mesh: mesh, PKIDir: writeClusterCA(t),
		Endpoint: "10.0.0.1:6443", Log: discard,
	}), agentIssuer)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), nil
}

const snpWorkerDisk = "3f1b2c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"

// joinWithDisk joins the node of issuer and peers, named name, at the join service at addr with its state
// disk, as the bootstrapper's joiner does.
func joinWithDisk(t *testing.T, addr string, issuer attestation.Issuer, peers peerTrust, name string) (*joinpb.JoinResponse, error) {
	t.Helper()
	ctx := context.Background()
	creds, err := mutualCredentials(ctx, nil, issuer, peers, nil, discard)
	if err != nil {
		return nil, err
	}
	_, csr, err := kubeletRequest(name)
	if err != nil {
		t.Fatal(err)
	}
	return joinAt(ctx, addr, creds, &joinpb.JoinRequest{WireguardPublicKey: bytes.Repeat([]byte{0x77}, 32), KubeletCsr: csr, DiskUuid: snpWorkerDisk})
}

// A qemu-sev-snp cluster: the first node's key service serves, the join service starts on it, a worker joins
// and gets its state disk key, and a second control-plane node gets the master secret, with which its own key
// service serves too.
func TestSNPKeyServiceAndJoinService(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	c := newSNPCluster(t, img)
	ctx := context.Background()

	cp0, _ := c.member(t, img, "control-plane-0")
	secret, err := keyServiceSecret(c.ms, c.clusterID, c.att, "control-plane-0", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(secret.Attestation) == 0 || len(secret.Measurements) != 0 {
		t.Fatalf("the key service's secret of a qemu-sev-snp cluster: attestation %d bytes, %d measurements; want the attestation policy only", len(secret.Attestation), len(secret.Measurements))
	}
	ksAddr, policyAddr := startSNPKeyService(t, img, cp0, secret)
	agent0 := serveAgent(t, cp0)
	mesh := &snpMesh{}
	jsAddr, err := startSNPJoinServiceOnKeys(t, c, agent0, ksAddr, policyAddr, mesh)
	if err != nil {
		t.Fatalf("the join service of the first control-plane node does not start: %v", err)
	}

	t.Run("a worker joins and gets its state disk key", func(t *testing.T) {
		worker, peers := img.node(t, "worker-0")
		resp, err := joinWithDisk(t, jsAddr, worker, peers, "worker-0")
		if err != nil {
			t.Fatal(err)
		}
		want, err := c.d.DiskKey(snpWorkerDisk)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp.GetDiskKey(), want) {
			t.Error("the worker's disk key is not the one derived from the master secret")
		}
		if !bytes.Equal(resp.GetClusterId(), c.clusterID) {
			t.Error("the join response names another cluster")
		}
	})

	t.Run("a second control-plane node gets the master secret", func(t *testing.T) {
		cp1, peers := c.member(t, img, "control-plane-1")
		holder := keyservice.NewSecretHolder(discard)
		// Its state disk, unlocked: where it keeps the cluster's policy for a recovery.
		disk := &stateDisk{uuid: "5e5e5e5e-0000-4000-8000-000000000001", targets: map[string]string{"var": t.TempDir()}}
		if err := shareSecretFrom(ctx, snpRolesProvider{}, fixedEndpoints(ksAddr), cp1, peers, provider.Instance{Name: "control-plane-1"}, disk, holder, nil, discard); err != nil {
			t.Fatal(err)
		}
		if kept, err := readKeptPolicy(disk, attestation.QEMUSEVSNP); err != nil || kept.Measurements != nil || !bytes.Equal(kept.Attestation, secret.Attestation) {
			t.Fatalf("the policy kept on the second control-plane node's disk: %+v, %v; want the cluster's attestation policy", kept, err)
		}
		got, err := keyservice.FetchSecret(ctx, serveSecret(t, holder))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.MasterSecret.Key, c.ms.Key) || !bytes.Equal(got.MasterSecret.Salt, c.ms.Salt) || !bytes.Equal(got.ClusterID, c.clusterID) {
			t.Fatal("the second control-plane node got another master secret or cluster")
		}
		if !bytes.Equal(got.Attestation, secret.Attestation) || got.Node != "control-plane-1" {
			t.Fatalf("the second control-plane node's key service secret: node %q, attestation policy the same: %v", got.Node, bytes.Equal(got.Attestation, secret.Attestation))
		}
		// Its own key service serves with it, and its own join service starts on it.
		ks1, policy1 := startSNPKeyService(t, img, cp1, got)
		if _, err := startSNPJoinServiceOnKeys(t, c, serveAgent(t, cp1), ks1, policy1, &snpMesh{}); err != nil {
			t.Fatalf("the join service of the second control-plane node does not start on its own key service: %v", err)
		}
	})

	t.Run("measurement policy updates are refused", func(t *testing.T) {
		pc, err := keyservice.NewPolicyClient(policyAddr, []attestation.Validator{anySNPPeer(t, img)})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		// An authentic update (authored with the master secret) of vTPM measurement sets: they would mean
		// nothing to a qemu-sev-snp node, and the key service would no longer check the launch measurement.
		key, err := c.d.MeasurementPolicyKey()
		if err != nil {
			t.Fatal(err)
		}
		set := measurements.M{4: {Expected: measurements.Digest{1}}, 8: {Expected: measurements.Digest{2}}}
		u, err := policyupdate.Author(key, c.clusterID, 1, policyupdate.ImageSet{Image: "sha256:" + strings.Repeat("ab", 32), Measurements: set})
		if err != nil {
			t.Fatal(err)
		}
		raw, err := u.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.UpdateMeasurementPolicy(ctx, raw); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("the key service of a qemu-sev-snp cluster answered a measurement policy update with %v, want a refusal", err)
		}
		if inForce, _, err := pc.GetMeasurementPolicy(ctx); err != nil || inForce != nil {
			t.Errorf("the measurement policy in force afterwards: %v, %v; want none", inForce, err)
		}
	})
}

// anySNPPeer trusts any qemu-sev-snp node of img, of any cluster or none, as an attacker's client does.
func anySNPPeer(t *testing.T, img snpImage) attestation.Validator {
	t.Helper()
	verifier, err := snp.NewVerifier(img.vopts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := snp.NewPeerValidator(verifier, img.launch(t, "any").Policy())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The key service of a qemu-sev-snp cluster hands keys and the master secret only to control-plane members
// of its cluster, of the cluster's launch measurement.
func TestSNPKeyServiceAttacks(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	c := newSNPCluster(t, img)
	ctx := context.Background()
	cp0, _ := c.member(t, img, "control-plane-0")
	secret, err := keyServiceSecret(c.ms, c.clusterID, c.att, "control-plane-0", "")
	if err != nil {
		t.Fatal(err)
	}
	ksAddr, _ := startSNPKeyService(t, img, cp0, secret)

	// The attacker's client trusts the genuine key service: only the key service's check stands between the
	// attacker and the keys. Each attacker is named a control-plane node, so that the caller restriction by
	// name does not refuse it first.
	other := newSNPCluster(t, img)
	rogueImg := newSNPImage(t, pki, 0x66)
	fresh, _ := img.node(t, "control-plane-1")
	otherMember, _ := other.member(t, img, "control-plane-1")
	rogue, _ := c.member(t, rogueImg, "control-plane-1")
	worker, _ := c.member(t, img, "worker-0")
	for name, attacker := range map[string]attestation.Issuer{
		"a fresh node that did not join":         fresh,
		"a member of another cluster":            otherMember,
		"a member of another launch measurement": rogue,
		"a worker of the cluster":                worker,
	} {
		t.Run(name, func(t *testing.T) {
			client, err := keyservice.NewClient(ksAddr, attacker, []attestation.Validator{anySNPPeer(t, img)})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			if key, err := client.GetDataKey(ctx, kms.JoinConfigKeyID, 32); err == nil {
				t.Errorf("got the join configuration's key (%d bytes)", len(key))
			}
			if key, err := client.GetDiskKey(ctx, snpWorkerDisk, "worker-0", 64); err == nil {
				t.Errorf("got a state disk key (%d bytes)", len(key))
			}
			if s, err := client.GetMasterSecret(ctx); err == nil {
				t.Errorf("got the master secret of cluster %x", s.ClusterID[:4])
			}
		})
	}
	t.Run("a member of the cluster (control)", func(t *testing.T) {
		member, _ := c.member(t, img, "control-plane-1")
		client, err := keyservice.NewClient(ksAddr, member, []attestation.Validator{anySNPPeer(t, img)})
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		if _, err := client.GetDataKey(ctx, kms.JoinConfigKeyID, 32); err != nil {
			t.Errorf("a control-plane member of the cluster is refused: %v", err)
		}
	})
}

// startRogueKeyService serves a key service of the master secret ms on the node of issuer that hands its keys
// to any qemu-sev-snp caller of img, and its policy port: one the host points the join service at, of another
// cluster (whose master secret the attacker knows) or of a rogue image. It returns the addresses of both.
func startRogueKeyService(t *testing.T, img snpImage, issuer attestation.Issuer, ms *kms.MasterSecret) (addr, policyAddr string) {
	t.Helper()
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.ClusterID()
	if err != nil {
		t.Fatal(err)
	}
	agentIssuer := serveAgent(t, issuer)
	srv, err := keyservice.NewGRPCServer(keyservice.New(d, discard), agentIssuer, []attestation.Validator{anySNPPeer(t, img)})
	if err != nil {
		t.Fatal(err)
	}
	policy, err := keyservice.NewFixedPolicy(d, id, anySNPPeer(t, img), discard)
	if err != nil {
		t.Fatal(err)
	}
	psrv, err := keyservice.NewPolicyServer(policy, agentIssuer)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*grpc.Server{srv, psrv} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		if addr == "" {
			addr = ln.Addr().String()
		} else {
			policyAddr = ln.Addr().String()
		}
	}
	return addr, policyAddr
}

// The join service of a qemu-sev-snp node trusts only key services of its own launch measurement that are
// members of its own node's cluster: the host that points it at a key service of another cluster or image,
// which would hand it a key the attacker knows (and so a join configuration of the attacker's making),
// fails.
func TestSNPJoinServiceKeyServiceTrust(t *testing.T) {
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	img := newSNPImage(t, pki, 0x11)
	c := newSNPCluster(t, img)
	ctx := context.Background()
	cp0, _ := c.member(t, img, "control-plane-0")
	agent0 := serveAgent(t, cp0)
	trust := joinservice.KeyServiceTrust{Issuer: agent0, Roles: snpControlPlanes, SNP: img.vopts}

	other := newSNPCluster(t, img)
	otherNode, _ := other.member(t, img, "control-plane-1")
	rogueImg := newSNPImage(t, pki, 0x66)
	// The rogue image's node binds this cluster's ID (which is no secret), and has the master secret of the
	// attacker's choice.
	rogueNode, _ := c.member(t, rogueImg, "control-plane-1")
	attackerSecret, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	otherAddr, otherPolicyAddr := startRogueKeyService(t, img, otherNode, other.ms)
	rogueAddr, roguePolicyAddr := startRogueKeyService(t, img, rogueNode, attackerSecret)
	for name, addrs := range map[string][2]string{
		"a key service of another cluster":            {otherAddr, otherPolicyAddr},
		"a key service of another launch measurement": {rogueAddr, roguePolicyAddr},
	} {
		t.Run(name, func(t *testing.T) {
			if key, err := joinservice.FetchConfigKey(ctx, fixedEndpoints(addrs[0]), trust); err == nil {
				t.Errorf("the join service took the key of its configuration (%x...) from it", key[:4])
			}
			src, closeSrc, err := joinservice.KeyServicePolicy(ctx, fixedEndpoints(addrs[1]), trust)
			if err != nil {
				t.Fatal(err)
			}
			defer closeSrc()
			if _, err := src(ctx); err == nil {
				t.Error("the join service took the measurement policy from it")
			}
		})
	}
	t.Run("a key service of its own image and cluster (control)", func(t *testing.T) {
		genuine, _ := c.member(t, img, "control-plane-1")
		want, err := c.d.JoinConfigKey()
		if err != nil {
			t.Fatal(err)
		}
		addr, policyAddr := startRogueKeyService(t, img, genuine, c.ms)
		key, err := joinservice.FetchConfigKey(ctx, fixedEndpoints(addr), trust)
		if err != nil || !bytes.Equal(key, want) {
			t.Errorf("the join service does not get its configuration's key from a genuine key service: %v", err)
		}
		src, closeSrc, err := joinservice.KeyServicePolicy(ctx, fixedEndpoints(policyAddr), trust)
		if err != nil {
			t.Fatal(err)
		}
		defer closeSrc()
		if u, err := src(ctx); err != nil || u != nil {
			t.Errorf("the measurement policy of a genuine key service: %v, %v; want none", u, err)
		}
	})
	t.Run("a join service on a node that belongs to no cluster", func(t *testing.T) {
		// It knows no cluster to require of a key service; the host points it at one that answers anyone.
		fresh, _ := img.node(t, "control-plane-0")
		_, err := joinservice.FetchConfigKey(ctx, fixedEndpoints(otherAddr), joinservice.KeyServiceTrust{Issuer: serveAgent(t, fresh), Roles: snpControlPlanes, SNP: img.vopts})
		if err == nil || !strings.Contains(err.Error(), "belongs to no cluster") {
			t.Errorf("a join service on a fresh node trusts key services: %v", err)
		}
	})
}
