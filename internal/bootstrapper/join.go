package bootstrapper

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/meshagent"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/retry"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// mutualCredentials are aTLS credentials that attest this node with issuer and accept peers that peers trust as
// join services: of this node's own image, or of one of the sets of hint (nil: none), which the node must have
// measured (measurePeerHint).
func mutualCredentials(ctx context.Context, md provider.Node, issuer attestation.Issuer, peers peerTrust, hint *policyupdate.PeerHint, log *slog.Logger) (*atls.Credentials, error) {
	v, err := peers.joinService(ctx, md, hint, log)
	if err != nil {
		return nil, err
	}
	return atls.NewCredentials(issuer, []attestation.Validator{v})
}

// readPeerHint reads the peer policy hint of the provider: nil if there is none. The host writes it: a hint
// that is not a valid peer policy counts as none (the node trusts peers of its own image only) and is logged;
// an error means that the metadata service could not be read.
func readPeerHint(ctx context.Context, md provider.Node, log *slog.Logger) (*policyupdate.PeerHint, error) {
	raw, err := md.PeerPolicy(ctx)
	if err != nil || raw == nil {
		return nil, err
	}
	if !md.Variant().VTPM {
		// Nothing to measure it into, so the join service could not check which peers the node trusted.
		log.Warn("the provider hints a peer policy, but this node has no vTPM to measure it into; it trusts peers of its own image only", "variant", md.Variant().Name)
		return nil, nil
	}
	h, err := policyupdate.ParsePeerHint(raw)
	if err == nil {
		for i, set := range h.Sets {
			if err = set.ValidateScheme(vtpm.ImageScheme(md.Variant())); err != nil {
				err = fmt.Errorf("set %d does not fit this node's measured boot: %w", i+1, err)
				break
			}
		}
	}
	if err != nil {
		log.Error("the provider's peer policy is not valid; this node trusts peers of its own image only", "error", err)
		return nil, nil
	}
	return h, nil
}

// deployServices installs the cluster's services of this project, from manifests that are part of this
// measured binary, not supplied from outside: the key service on every control-plane node, which gets the
// master secret from its node's bootstrapper; the join service on every control-plane node, with its
// configuration (the cluster's attestation policy: variant, measurements and hardware policy; for a vTPM whose
// attestation key the provider certifies (mini-vtpm, qemu-vtpm) the provider's AK roots; and the cluster
// ID; and the registry mirrors and DNS servers every node gets), with the mirrors' credentials in a Secret of
// their own; the verification service on every node; and the upgrade controller on the control-plane nodes,
// with its NodeUpgrade CRD (applied before the controller's Deployment, in the same list; no NodeUpgrade is
// created here, so nothing waits for the CRD to be established: the controller's watch starts once the API
// server serves it). The controller acts only once the CLI created a NodeUpgrade, and reaches the provider only
// with the credential the CLI keeps in the cluster after init.
func deployServices(ctx context.Context, md provider.Node, k8s Kubernetes, ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, egress Egress) error {
	p := *att
	if v, err := attestation.VariantByName(p.Variant); err == nil && vtpm.ProviderCertified(v) {
		roots, err := md.AKRoots(ctx)
		if err != nil {
			return err
		}
		p.AKRoots = roots
	}
	// The join configuration is authenticated with a key from the master secret: an administrator of the
	// cluster can edit the ConfigMap, but the join service refuses what it did not get from here or the CLI.
	d, err := kms.NewDeriver(ms)
	if err != nil {
		return err
	}
	macKey, err := d.JoinConfigKey()
	if err != nil {
		return err
	}
	data, err := joinservice.ConfigDataWithDNS(&p, clusterID, macKey, egress.Mirrors, egress.DNS)
	if err != nil {
		return err
	}
	// The mirrors' credentials are a secret: in a Secret of their own that only the join service mounts, never
	// in the join configuration (a ConfigMap).
	creds, err := joinservice.CredentialsManifest(macKey, egress.Mirrors, egress.Credentials)
	if err != nil {
		return err
	}
	keys, err := keyservice.Manifests(md.Name(), md.Endpoint())
	if err != nil {
		return err
	}
	if err := k8s.Apply(ctx, keys); err != nil {
		return fmt.Errorf("deploying the key service: %w", err)
	}
	if err := k8s.Apply(ctx, creds); err != nil {
		return fmt.Errorf("storing the registry credentials for the join service: %w", err)
	}
	join, err := joinservice.Manifests(data, md.Name(), md.Endpoint())
	if err != nil {
		return err
	}
	if err := k8s.Apply(ctx, join); err != nil {
		return fmt.Errorf("deploying the join service: %w", err)
	}
	verify, err := verifyservice.Manifests()
	if err != nil {
		return err
	}
	if err := k8s.Apply(ctx, verify); err != nil {
		return fmt.Errorf("deploying the verification service: %w", err)
	}
	quarantine, err := reattestation.Manifests()
	if err != nil {
		return err
	}
	if err := k8s.Apply(ctx, quarantine); err != nil {
		return fmt.Errorf("deploying the quarantine's admission policy: %w", err)
	}
	controller, err := deploy.Manifests()
	if err != nil {
		return err
	}
	if err := k8s.Apply(ctx, controller); err != nil {
		return fmt.Errorf("deploying the upgrade controller: %w", err)
	}
	return nil
}

// ownPolicy is the policy of this node's own boot measurements: a joining node trusts a join service that
// booted the same image with the same parameters as itself.
func ownPolicy(tpm interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}, variant attestation.Variant) (measurements.M, error) {
	pcrs, err := client.ReadPCRs(tpm, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		return nil, err
	}
	return measurements.FromPCRs(func(idx uint32) []byte { return pcrs.GetPcrs()[idx] }, vtpm.BootPCRs(variant)...)
}

// joiner is a node that joins the cluster through the join service of a control-plane node.
type joiner struct {
	md     provider.Node
	issuer attestation.Issuer
	self   provider.Instance
	// peers trusts a join service (and a key service) that booted exactly as this node did, or with one of the
	// sets of hint, the provider's peer policy (nil: none), which it measures into PCR 14 before it trusts any
	// peer (vTPM nodes only).
	peers peerTrust
	hint  *policyupdate.PeerHint
	k8s   Kubernetes
	disk  *stateDisk
	mesh  *meshagent.Agent
	// secrets is the control-plane node's holder of the master secret, which it gets from a key service of
	// the control plane once it joined; nil on a worker.
	secrets *keyservice.SecretHolder
	// claim, if set, is asked once a join service has admitted the node, before the node acts on the answer:
	// false means that the node was recovered meanwhile ('constellation recover'), and the join is dropped.
	// done, if set, tells the join to stop trying for the same reason.
	claim func() bool
	done  func() bool
	// retry is how the node tries kubeadm join again (zero: the defaults, see joinRetry).
	retry joinRetry
	log   *slog.Logger
}

// join asks the join service of a control-plane node to admit this node (any that answers: no control-plane
// node is special), then joins Kubernetes; a control-plane node then gets the master secret from a key
// service of the control plane, so that its own key service serves too.
func (j joiner) join(ctx context.Context) error {
	md, issuer, self, k8s, disk, mesh, log := j.md, j.issuer, j.self, j.k8s, j.disk, j.mesh, j.log
	controlPlane := self.Role == provider.RoleControlPlane
	var diskUUID string
	if disk != nil {
		diskUUID = disk.uuid
	}
	// Measured before any peer is trusted by it: the join service sees which peers this node trusted, and
	// admits it only if it trusted nothing but the measurement sets in force.
	if err := measurePeerHint(issuer, j.hint); err != nil {
		return err
	}
	if j.hint != nil {
		log.Info("peer policy measured: this node also trusts peers of its measurement sets", "peerPolicy", j.hint.String())
	}
	creds, err := mutualCredentials(ctx, md, issuer, j.peers, j.hint, log)
	if err != nil {
		return err
	}
	// A node that joined before keeps its WireGuard key on its state disk, and the cluster knows it; a new
	// node makes its key now, and the join service admits its public half for this node. The state disk is
	// still locked here: a node that waits for recovery has state on it, and only a recovering node has a
	// claim.
	rejoin := j.claim != nil
	if disk != nil && !rejoin {
		if rejoin, err = disk.hasState(); err != nil {
			return fmt.Errorf("reading the state disk: %w", err)
		}
	}
	var meshKey []byte
	if !rejoin {
		pub, err := mesh.NewKey()
		if err != nil {
			return err
		}
		meshKey = pub[:]
	}
	// The kubelet's key stays here; the join service certifies it for this node's attested name.
	kubeletKey, csr, err := kubeletRequest(self.Name)
	if err != nil {
		return err
	}
	req := &joinpb.JoinRequest{ControlPlane: controlPlane, DiskUuid: diskUUID, WireguardPublicKey: meshKey, KubeletCsr: csr}
	var resp *joinpb.JoinResponse
	// When the join service was asked for the answer it gave: its bootstrap token is valid for
	// joinpb.TokenTTL from then on.
	var asked time.Time
	stopped := false
	if err := retry.Do(ctx, log, "asking the join service to admit this node", func() error {
		if j.done != nil && j.done() {
			stopped = true
			return nil
		}
		list, err := md.Instances(ctx)
		if err != nil {
			return err
		}
		var errs []error
		for _, inst := range list {
			if inst.Role != provider.RoleControlPlane || inst.Name == self.Name {
				continue
			}
			asked = j.retry.clock()
			if resp, err = joinAt(ctx, net.JoinHostPort(inst.IP, strconv.Itoa(joinpb.Port)), creds, req); err == nil {
				log.Info("admitted by the join service", "node", inst.Name)
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", inst.Name, err))
		}
		if len(errs) == 0 {
			return errors.New("no other control-plane node in the metadata")
		}
		return errors.Join(errs...)
	}); err != nil {
		return err
	}
	if stopped || (j.claim != nil && !j.claim()) {
		log.Info("the node was recovered meanwhile; it does not rejoin")
		return nil
	}
	kubelet, err := kubeletCredentials(resp, kubeletKey)
	if err != nil {
		return fmt.Errorf("the join service's answer: %w", err)
	}
	// The join service checked them under the MACs of its configuration and Secret; this node renders only what
	// is valid.
	egress, err := egressFromWire(resp.GetRegistryMirrors(), resp.GetRegistryCredentials(), resp.GetDnsServers())
	if err != nil {
		return fmt.Errorf("the join service's answer: %w", err)
	}
	where, err := recordClusterID(issuer, resp.GetClusterId())
	if err != nil {
		return err
	}
	log.Info("admitted by the join service; cluster ID measured", "endpoint", resp.GetApiEndpoint(), "into", where)
	if disk != nil {
		if len(resp.GetDiskKey()) != joinpb.DiskKeyLength {
			return fmt.Errorf("the join service sent a state disk key of %d bytes, want %d", len(resp.GetDiskKey()), joinpb.DiskKeyLength)
		}
		if err := disk.unlock(resp.GetDiskKey()); err != nil {
			return err
		}
		if err := keepEgress(disk, egress); err != nil {
			return err
		}
	}
	// The tunnel is up, with the cluster's nodes as peers, before Kubernetes on this node talks to anyone.
	peers, err := peersFromJoin(resp.GetMeshPeers())
	if err != nil {
		return err
	}
	if rejoin {
		if err := mesh.LoadKey(); err != nil {
			return err
		}
	}
	if err := mesh.SetRoot(resp.GetMeshPskRoot()); err != nil {
		return fmt.Errorf("the join service's answer: %w", err)
	}
	if err := mesh.Start(); err != nil {
		return err
	}
	if err := mesh.Record(ctx, peers); err != nil {
		return err
	}
	go mesh.Follow(ctx, kubeadm.KubeletKubeconfig)
	// The key is published as soon as the kubelet has registered, while kubeadm may still be at work (a
	// control-plane join goes on with etcd and the control plane's components).
	published := make(chan error, 1)
	go func() { published <- mesh.Publish(ctx, kubeadm.KubeletKubeconfig) }()
	if err := egress.configure(k8s); err != nil {
		return err
	}
	if err := k8s.PrepareRuntime(ctx); err != nil {
		return fmt.Errorf("preparing the container runtime: %w", err)
	}
	if controlPlane && !rejoin {
		if err := writePKI(kubeadm.PKIDir, resp.GetControlPlaneFiles()); err != nil {
			return fmt.Errorf("installing the control plane's PKI: %w", err)
		}
	}
	// The pod network is enabled while kubeadm works: a control-plane node of the next Kubernetes version waits
	// in Join until it is Ready, before it runs kubeadm upgrade apply.
	network := make(chan error, 1)
	go func() { network <- enablePodNetwork(ctx, mesh, k8s, published) }()
	// The node is a member of the cluster now (its cluster ID is measured): the join service admits it no more
	// in this boot. A join that fails is tried again with this answer while its bootstrap token is valid.
	until := asked.Add(joinpb.TokenTTL - tokenMargin)
	if err := j.retry.run(ctx, k8s, until, log, func(attempt int) error {
		if controlPlane && (attempt > 1 || rejoin && !exists(filepath.Join(kubeadm.PKIDir, "ca.crt"))) {
			// kubeadm reset removed the PKI with the rest (after a failed attempt, or one of an earlier boot
			// that gave up).
			if err := writePKI(kubeadm.PKIDir, resp.GetControlPlaneFiles()); err != nil {
				return fmt.Errorf("installing the control plane's PKI: %w", err)
			}
		}
		return k8s.Join(ctx, resp.GetApiEndpoint(), resp.GetToken(), resp.GetCaCertHash(), controlPlane, kubelet)
	}); err != nil {
		return err
	}
	log.Info("joined the cluster")
	if controlPlane && j.secrets != nil {
		if err := shareSecretFromPeers(ctx, md, issuer, j.peers, self, disk, j.secrets, j.hint, log); err != nil {
			return err
		}
	}
	return <-network
}

// kubeletPort is the kubelets' port on every node, which WaitPeers connects to through the tunnel.
const kubeletPort = 10250

// peersLimit is how long a joining node waits for a peer to answer through the tunnel before it takes pods
// without it.
const peersLimit = 30 * time.Second

// enablePodNetwork makes a node that joined Ready for pods once its network is complete: its key is published
// (published), so that every other node makes it a peer; every peer answers it through the tunnel, so that
// traffic from its pods finds its way back; and kube-proxy has programmed the Services on it.
func enablePodNetwork(ctx context.Context, mesh *meshagent.Agent, k8s Kubernetes, published <-chan error) error {
	if err := <-published; err != nil {
		return err
	}
	if err := mesh.WaitPeers(ctx, kubeletPort, peersLimit); err != nil {
		return fmt.Errorf("waiting for the peers to answer through the tunnel: %w", err)
	}
	return k8s.EnablePodNetwork(ctx)
}

// tokenMargin is how long before its bootstrap token expires a node starts no more kubeadm join: kubeadm uses
// the token during its first steps.
const tokenMargin = time.Minute

// joinRetry is how a node tries kubeadm join again after it failed. Once the join service admitted the node, the
// node measured the cluster's ID and so belongs to the cluster: the join service, which admits fresh nodes only,
// admits it no more until it reboots. So a failed kubeadm join is tried again with the same answer (its
// bootstrap token may be used more than once while it is valid), never with a new one: each admission the node
// gets is attested anew, and no attempt skips that. Between attempts the node undoes what kubeadm left
// (Kubernetes.ResetJoin) and waits, twice as long after each failure, so that a host that makes every join
// fail gets a handful of attempts, not a busy loop.
type joinRetry struct {
	// first and max are the wait after the first failure and the longest wait (zero: 2 s and 1 min).
	first, max time.Duration
	// now and sleep replace the clock and the wait in tests (nil: time.Now, a timer that ctx cancels).
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func (r joinRetry) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

func (r joinRetry) wait(ctx context.Context, d time.Duration) error {
	if r.sleep != nil {
		return r.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// run runs attempt (numbered from 1) until it succeeds. A failure that kubeadm counts as final
// (kubeadm.Permanent; kubeadm reported it on the node's Node object) ends it; after any other, the node resets
// Kubernetes and tries again, unless the next attempt would start after until (the bootstrap token's end, less
// tokenMargin): then it reports the last failure on the node's Node object, where the upgrade controller reads
// it, undoes the join and gives up. Each failure is logged with its reason.
func (r joinRetry) run(ctx context.Context, k8s Kubernetes, until time.Time, log *slog.Logger, attempt func(n int) error) error {
	first, most := r.first, r.max
	if first <= 0 {
		first = 2 * time.Second
	}
	if most <= 0 {
		most = time.Minute
	}
	wait := first
	for n := 1; ; n++ {
		err := attempt(n)
		if err == nil {
			return nil
		}
		if kubeadm.Permanent(err) {
			log.Error("joining Kubernetes failed for good; this node stays out of the cluster", "attempt", n, "error", err)
			return err
		}
		if ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		if r.clock().Add(wait).After(until) {
			err = fmt.Errorf("joining Kubernetes failed %d times, no more attempts: the join service's bootstrap token expires, "+
				"and the join service admits this node, a member of the cluster by its measured cluster ID, again only after a reboot; the last failure: %w", n, err)
			return r.giveUp(ctx, k8s, log, n, err, true)
		}
		log.Warn("joining Kubernetes failed; undoing what kubeadm left and trying again", "attempt", n, "retryIn", wait.String(), "error", err)
		if rerr := k8s.ResetJoin(ctx); rerr != nil {
			return r.giveUp(ctx, k8s, log, n, fmt.Errorf("joining Kubernetes failed (%w), and the node cannot be reset to try again: %w", err, rerr), false)
		}
		if err := r.wait(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, most)
	}
}

// giveUp reports err, the failure of the last of n attempts, on the node's Node object, then undoes what the
// failed join left (reset says whether it can), so that the node joins afresh when it boots again and does not
// take what is left for the state of an earlier join; it returns err.
func (r joinRetry) giveUp(ctx context.Context, k8s Kubernetes, log *slog.Logger, n int, err error, reset bool) error {
	if rerr := k8s.ReportJoinFailure(ctx, err); rerr != nil {
		err = fmt.Errorf("%w (reporting it on the node's Node object failed too: %v)", err, rerr)
	}
	if reset {
		if rerr := k8s.ResetJoin(ctx); rerr != nil {
			err = fmt.Errorf("%w (undoing the failed join failed too: %v)", err, rerr)
		}
	}
	log.Error("joining Kubernetes failed; this node stays out of the cluster until it reboots", "attempts", n, "error", err)
	return err
}

// exists says whether there is a file at path.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// joinAt makes one join request to the join service at addr.
func joinAt(ctx context.Context, addr string, creds *atls.Credentials, req *joinpb.JoinRequest) (*joinpb.JoinResponse, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return joinpb.NewJoinClient(conn).Join(ctx, req)
}

// shareSecretFromPeers gets the cluster's master secret, its cluster ID and its measurement policy from the
// key service of another control-plane node, keeps the policy on the state disk (for a recovery) and hands
// the secret to this node's key service. The node must be a member of the cluster by now (its cluster ID
// measured): the key service hands the secret only to an attested control-plane member. This node in turn
// trusts only a key service on a control-plane node that belongs to the same cluster and booted exactly as it
// did, or with one of the sets of hint, the peer policy it measured before it joined.
func shareSecretFromPeers(ctx context.Context, md provider.Node, issuer attestation.Issuer, peers peerTrust, self provider.Instance, disk *stateDisk, secrets *keyservice.SecretHolder, hint *policyupdate.PeerHint, log *slog.Logger) error {
	all := keyservice.ControlPlaneAddrs(md, "")
	own4 := net.JoinHostPort(self.IP, strconv.Itoa(keyservice.Port))
	// This node's own key service waits for what is fetched here.
	others := func(ctx context.Context) ([]string, error) {
		addrs, err := all(ctx)
		return slices.DeleteFunc(addrs, func(a string) bool { return a == own4 }), err
	}
	return shareSecretFrom(ctx, md, others, issuer, peers, self, disk, secrets, hint, log)
}

// shareSecretFrom is [shareSecretFromPeers] with the key services of endpoints.
func shareSecretFrom(ctx context.Context, md provider.Node, endpoints func(ctx context.Context) ([]string, error), issuer attestation.Issuer, peers peerTrust, self provider.Instance, disk *stateDisk, secrets *keyservice.SecretHolder, hint *policyupdate.PeerHint, log *slog.Logger) error {
	v, err := peers.keyService(ctx, md, issuer, hint, log)
	if err != nil {
		return err
	}
	pool := &keyservice.Pool{Endpoints: endpoints, Issuer: issuer, Validator: keyservice.ControlPlaneOnly(v, md.IsControlPlane)}
	defer pool.Close()
	var secret *keyservice.Secret
	if err := retry.Do(ctx, log, "getting the master secret from a key service of the control plane", func() error {
		return pool.Do(ctx, func(ctx context.Context, c *keyservice.Client) error {
			var err error
			secret, err = c.GetMasterSecret(ctx)
			return err
		})
	}); err != nil {
		return err
	}
	secret.Node = self.Name
	if disk != nil {
		secret.DiskUUID = disk.uuid
		// The policy the key service enforces, for a recovery: measurements on a vTPM variant, the attestation
		// policy on qemu-sev-snp (Secret.Validate: exactly one of them).
		if len(secret.Measurements) > 0 {
			if err := keepPolicy(disk, secret.Measurements); err != nil {
				return err
			}
		}
		if len(secret.Attestation) > 0 {
			if err := keepAttestation(disk, secret.Attestation); err != nil {
				return err
			}
		}
	}
	if err := secrets.Set(secret); err != nil {
		return err
	}
	log.Info("master secret received from a key service of the control plane; this node's key service serves too")
	return nil
}

// keepPolicy keeps the cluster's measurement policy on the node's encrypted state disk: after a recovery the
// node's key service checks its callers against it.
func keepPolicy(disk *stateDisk, policy measurements.M) error {
	raw, err := json.Marshal(policy)
	if err != nil {
		return err
	}
	return keepFile(disk.policyFile(), raw, "the measurement policy")
}

// keepAttestation keeps the attestation policy of a cluster without a vTPM (its wire form, as the key service
// gets it) on the node's encrypted state disk: after a recovery the node's key service checks its callers
// against it (readKeptPolicy).
func keepAttestation(disk *stateDisk, raw []byte) error {
	return keepFile(disk.attestationFile(), raw, "the attestation policy")
}

// keepFile writes raw to path on the state disk, readable by root only, atomically.
func keepFile(path string, raw []byte, what string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("keeping %s: %w", what, err)
	}
	if err := atomicfile.Write(path, raw, 0o600); err != nil {
		return fmt.Errorf("keeping %s: %w", what, err)
	}
	return nil
}

// kubeletRequest makes the kubelet's key and a request for the client certificate of node name.
func kubeletRequest(name string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
	}, key)
	return key, csr, err
}

// kubeletCredentials checks the kubelet certificate and CA of a join answer: the CA is the one the answer's
// hash pins, and the certificate is the CA's client certificate for the kubelet's own key.
func kubeletCredentials(resp *joinpb.JoinResponse, key *ecdsa.PrivateKey) (kubeadm.KubeletCredentials, error) {
	ca, err := x509.ParseCertificate(resp.GetCaCertificate())
	if err != nil {
		return kubeadm.KubeletCredentials{}, fmt.Errorf("cluster CA certificate: %w", err)
	}
	if joinservice.CAHash(ca) != resp.GetCaCertHash() {
		return kubeadm.KubeletCredentials{}, errors.New("the cluster CA certificate does not match the CA hash")
	}
	cert, err := x509.ParseCertificate(resp.GetKubeletCertificate())
	if err != nil {
		return kubeadm.KubeletCredentials{}, fmt.Errorf("kubelet certificate: %w", err)
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return kubeadm.KubeletCredentials{}, fmt.Errorf("the kubelet certificate is not signed by the cluster CA: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return kubeadm.KubeletCredentials{}, errors.New("the kubelet certificate is not for this node's kubelet key")
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return kubeadm.KubeletCredentials{}, err
	}
	return kubeadm.KubeletCredentials{
		CACert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}),
		Cert:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		Key:    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// writePKI installs the control plane's shared PKI files a control-plane join received: exactly the expected
// files, keys readable by root only.
func writePKI(dir string, files []*joinpb.PKIFile) error {
	want := map[string]bool{}
	for _, name := range joinpb.ControlPlaneFiles {
		want[name] = true
	}
	if len(files) != len(want) {
		return fmt.Errorf("the join service sent %d PKI files, want %d", len(files), len(want))
	}
	for _, f := range files {
		if !want[f.GetName()] {
			return fmt.Errorf("the join service sent an unexpected PKI file %q", f.GetName())
		}
		delete(want, f.GetName())
	}
	// Checked all before writing any.
	for _, f := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(f.GetName(), ".key") {
			mode = 0o600
		}
		path := filepath.Join(dir, f.GetName())
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := atomicfile.Write(path, f.GetContent(), mode); err != nil {
			return err
		}
	}
	return nil
}

// peersFromJoin are the mesh's nodes as the join service listed them.
func peersFromJoin(list []*joinpb.MeshPeer) ([]meshpeers.Peer, error) {
	var out []meshpeers.Peer
	for _, p := range list {
		if len(p.GetPublicKey()) != len(wgmesh.Key{}) {
			return nil, fmt.Errorf("the join service sent a WireGuard key of %d bytes for node %q", len(p.GetPublicKey()), p.GetNode())
		}
		out = append(out, meshpeers.Peer{Node: p.GetNode(), PublicKey: wgmesh.Key(p.GetPublicKey())})
	}
	return out, nil
}

// setMeshRootFromMaster derives the mesh's root key for preshared keys from the master secret (the first
// control-plane node at init, a control-plane node at a recovery) and gives it to the mesh agent.
func setMeshRootFromMaster(mesh *meshagent.Agent, ms *kms.MasterSecret) error {
	d, err := kms.NewDeriver(ms)
	if err != nil {
		return err
	}
	root, err := joinservice.MeshRootFromMaster(d)
	if err != nil {
		return err
	}
	return mesh.SetRoot(root[:])
}

// operatorPorts are the node's services the operator's CLI reaches from the provider's address (on mini the
// CLI runs on the provider's host): init and recovery, the node's and the cluster's verification service,
// the key service's policy port (measurement policy updates, which count by their MAC and epoch), and the API
// server. Each authenticates and encrypts by itself; nothing else of the node or its pods is reachable from
// there.
var operatorPorts = []uint16{initpb.Port, verifyservice.Port, verifyservice.GRPCPort, verifyservice.ClusterPort, verifyservice.ClusterGRPCPort, keyservice.PolicyPort, apiServerPort}

// apiServerPort is the API server's port (kubeadm's bindPort).
const apiServerPort = 6443
