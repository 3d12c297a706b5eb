// Package bootstrapper is the first process of every node. It identifies the node through the provider's
// metadata service, proves to the provider that its TPM holds both the certified endorsement key and its
// attestation key (credential activation), and then serves fresh evidence on the verification service. A
// qemu-sev-snp node has no TPM: its evidence is an SEV-SNP report of the guest's firmware (configfs-tsm, or
// /dev/sev-guest), named by the HOST_DATA its host launched it with and bound, once it belongs to a cluster, to
// the cluster ID, where vTPM nodes use PCR 15 (see attest.go for what replaces each use of the TPM).
// Cluster initialisation and joining build on this: the first control-plane node (and a control-plane node
// that waits for recovery) serves Init and Recover over aTLS, only to a caller who knows the cluster's init
// secret, whose SHA-256 the node reads from its instance metadata at boot. Every other node joins through a
// join service it trusts by its own image's measurements or, during an upgrade, by a set of the peer policy its
// metadata hints, which it measures into PCR 14 before it trusts anyone by it (joinservice.MeasurePeerHint).
package bootstrapper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/apiproxy"
	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/meshagent"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/retry"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// Config is what the bootstrapper needs from its environment.
type Config struct {
	// Provider is the platform the node runs on.
	Provider provider.Node
	// TPM is the path of the node's TPM: a unix socket (the mini provider's swtpm) or a character device (a
	// machine's TPM, /dev/tpmrm0). A qemu-sev-snp node has none.
	TPM string
	// SNPReporter is where a qemu-sev-snp node obtains its reports; nil: the guest's configfs-tsm interface or
	// sev-guest device, whichever its kernel offers (snp.GuestReporter).
	SNPReporter snp.Reporter
	// Kubernetes returns the node's Kubernetes driver.
	Kubernetes func(self provider.Instance) Kubernetes
	// AgentSocket is where the node's own services ask for evidence (agent.SocketPath on a node).
	AgentSocket string
	// StateDisk is the node's state disk image; a node without one keeps its state in memory.
	StateDisk string
	// PodNetwork is the cluster's pod network (every node's pod range is inside it).
	PodNetwork netip.Prefix
}

// FirstControlPlane is the node that serves Init.
const FirstControlPlane = "control-plane-0"

// Run boots the node's services and blocks until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	md := cfg.Provider
	var self provider.Instance
	if err := retry.Do(ctx, log, "asking the metadata service who this node is", func() error {
		var err error
		self, err = md.Self(ctx)
		return err
	}); err != nil {
		return err
	}
	log.Info("node identified", "name", self.Name, "role", self.Role, "ip", self.IP)

	// Only the operator who created the nodes may initialise or recover a control-plane node: the provider
	// hands the node the hash of their init secret. Without it the node refuses both (and says why). Read now,
	// so that the init service is up as soon as the node can be attested.
	var initSecretHash []byte
	if self.Role == provider.RoleControlPlane {
		if err := retry.Do(ctx, log, "reading the init-secret hash from the metadata service", func() error {
			var err error
			initSecretHash, err = md.InitSecretHash(ctx)
			return err
		}); err != nil {
			return err
		}
		if initSecretHash == nil {
			log.Error("the instance metadata holds no init-secret hash: this node refuses Init and Recover")
		}
	}
	// Every service of the node attests with issuer: the init, join and key services' aTLS, the verification
	// service, the attestation agent of the node's pods and the continuous attestation's answers.
	issuer, peers, closeIssuer, err := openAttestation(ctx, cfg, md, self, log)
	if err != nil {
		return err
	}
	defer closeIssuer()

	var disk *stateDisk
	if cfg.StateDisk != "" {
		if disk, err = prepareStateDisk(ctx, cfg.StateDisk, log.With("step", "state-disk")); err != nil {
			return err
		}
	}

	mesh := meshagent.New(meshagent.Options{
		Provider: md, Self: self, PodNetwork: cfg.PodNetwork, OperatorTCPPorts: operatorPorts, PlaintextTCPPorts: []uint16{joinpb.Port},
		Log: log.With("service", "wireguard"),
	})

	verify, err := verifyservice.Listen(self.IP, verifyservice.Port, verifyservice.GRPCPort, issuer, mesh.PublicKey, log.With("service", "verify"))
	if err != nil {
		return err
	}
	errc := make(chan error, 8)
	go func() { errc <- verify.Serve() }()
	defer verify.Close()
	// The node's own endpoint of the API is up before kubeadm runs: kubeadm, the kubelet and kube-proxy reach
	// the control plane through it.
	stopEndpoint, err := serveAPIEndpoint(ctx, md, self, errc, log.With("service", "api-endpoint"))
	if err != nil {
		return err
	}
	defer stopEndpoint()
	httpAddr, grpcAddr := verify.Addrs()
	log.Info("verification service listening", "http", httpAddr, "grpc", grpcAddr)
	if cfg.AgentSocket != "" {
		stop, err := serveLocal(cfg.AgentSocket, agent.Handler(issuer, log.With("service", "agent")), errc)
		if err != nil {
			return err
		}
		defer stop()
		log.Info("attestation agent listening for the node's services", "socket", cfg.AgentSocket)
	}

	secrets := keyservice.NewSecretHolder(log.With("service", "keys"))
	if self.Role == provider.RoleControlPlane {
		// The join service on this node hands the nodes it admits to this node's WireGuard agent.
		stopAdmit, err := serveLocal(meshpeers.LocalSocket, meshpeers.AdmitHandler(func(node string, key wgmesh.Key) error {
			return mesh.Admit(ctx, node, key)
		}, log.With("service", "wireguard")), errc)
		if err != nil {
			return err
		}
		defer stopAdmit()
		// The key service on this node gets the master secret from here once the node has it.
		stopSecrets, err := serveLocal(keyservice.SecretSocket, secrets, errc)
		if err != nil {
			return err
		}
		defer stopSecrets()
	}
	// A control-plane node whose state disk holds the cluster's state rejoins through the join service of
	// another control-plane node, as a worker does, while the others run; if all of them restarted (etcd has no
	// quorum, no join service answers), it waits for 'constellation recover'. Whichever comes first counts.
	recovering := false
	if disk != nil && self.Role == provider.RoleControlPlane {
		if recovering, err = disk.hasState(); err != nil {
			return fmt.Errorf("reading the state disk: %w", err)
		}
	}
	// During an upgrade the provider hints the measurement sets of the peers a joining node trusts besides those
	// of its own image; the node measures the hint before it trusts a peer by it (joiner.join).
	var hint *policyupdate.PeerHint
	if self.Name != FirstControlPlane {
		if err := retry.Do(ctx, log, "reading the peer policy from the metadata service", func() error {
			var err error
			hint, err = readPeerHint(ctx, md, log)
			return err
		}); err != nil {
			return err
		}
	}
	joining := joiner{md: md, issuer: issuer, self: self, peers: peers, hint: hint, k8s: cfg.Kubernetes(self), disk: disk, mesh: mesh, log: log.With("step", "join")}
	if self.Role == provider.RoleControlPlane {
		joining.secrets = secrets
	}
	if self.Name == FirstControlPlane || recovering {
		// The key service binds this node's own state disk to it (the node derives that disk's key itself).
		var ownDisk string
		if disk != nil {
			ownDisk = disk.uuid
		}
		creds, err := atls.NewCredentials(issuer, nil)
		if err != nil {
			return err
		}
		grpcSrv := grpc.NewServer(grpc.Creds(creds))
		k8s := cfg.Kubernetes(self)
		if recovering {
			log.Warn("the state disk holds an initialised cluster: rejoining through another control-plane node, or waiting for 'constellation recover'")
		}
		init := &initServer{
			issuer: issuer, k8s: k8s, log: log.With("service", "init"), disk: disk, recovering: recovering,
			initSecretHash: initSecretHash,
			life:           &firstNode{ctx: ctx, md: md, self: self, k8s: k8s, mesh: mesh, secrets: secrets, ownDisk: ownDisk, issuer: issuer, peers: peers, disk: disk, log: log.With("step", "recover")},
		}
		initpb.RegisterInitServer(grpcSrv, init)
		ln, err := net.Listen("tcp", net.JoinHostPort(self.IP, strconv.Itoa(initpb.Port)))
		if err != nil {
			return fmt.Errorf("init service: %w", err)
		}
		go func() { errc <- grpcSrv.Serve(ln) }()
		defer grpcSrv.Stop()
		log.Info("init service listening over aTLS", "address", ln.Addr().String())
		if recovering {
			joining.claim, joining.done = init.claim, init.isDone
			go func() {
				if err := joining.join(ctx); err != nil {
					log.Error("rejoining the cluster failed", "error", err)
				}
			}()
		}
	} else {
		go func() {
			if err := joining.join(ctx); err != nil {
				log.Error("joining the cluster failed", "error", err)
			}
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return fmt.Errorf("a node service stopped: %w", err)
	}
}

// serveAPIEndpoint serves the node's own endpoint of the Kubernetes API (apiproxy.Address) until the returned
// function is called: in front of the node's own API server on a control-plane node, and of the other
// control-plane nodes' that the provider lists, which it reaches only through the WireGuard interface.
func serveAPIEndpoint(ctx context.Context, md provider.Node, self provider.Instance, errc chan<- error, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", apiproxy.Address.String())
	if err != nil {
		return nil, fmt.Errorf("the node's endpoint of the Kubernetes API: %w", err)
	}
	p := &apiproxy.Proxy{
		Remote: func(ctx context.Context) ([]netip.AddrPort, error) {
			return controlPlaneAPIServers(ctx, md, self.Name, log)
		},
		DialRemote: apiproxy.MeshDialer(meshagent.Interface),
		Log:        log,
	}
	if self.Role == provider.RoleControlPlane {
		p.Local = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), apiproxy.APIServerPort)
	}
	ctx, cancel := context.WithCancel(ctx)
	go p.Watch(ctx, 2*time.Second)
	go func() {
		if err := p.Serve(ln); err != nil {
			errc <- fmt.Errorf("the node's endpoint of the Kubernetes API: %w", err)
		}
	}()
	log.Info("the node's endpoint of the Kubernetes API listening", "address", ln.Addr().String(), "ownAPIServer", p.Local.IsValid())
	return func() { cancel(); ln.Close() }, nil
}

// controlPlaneAPIServers are the API servers of the control-plane nodes the provider lists, but for this
// node's own.
func controlPlaneAPIServers(ctx context.Context, md provider.Node, self string, log *slog.Logger) ([]netip.AddrPort, error) {
	list, err := md.Instances(ctx)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, inst := range list {
		if inst.Role != provider.RoleControlPlane || inst.Name == self {
			continue
		}
		ip, err := netip.ParseAddr(inst.IP)
		if err != nil || !ip.Is4() {
			log.Warn("the provider gives a control-plane node no usable address; not a backend of the API endpoint", "node", inst.Name, "ip", inst.IP)
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, apiproxy.APIServerPort))
	}
	return out, nil
}

// openAttestation sets up how this node attests itself, by the variant its provider's nodes issue
// (attest.go): for a vTPM variant it opens the TPM at cfg.TPM, has the provider certify an attestation key for
// the node (credential activation) and fetches the boot's event log; for qemu-sev-snp it opens the guest's
// SEV-SNP interface (cfg.SNPReporter, or what the kernel offers). It returns the issuer, the trust in peers of
// the node's own image, and what closes the issuer.
func openAttestation(ctx context.Context, cfg Config, md provider.Node, self provider.Instance, log *slog.Logger) (attestation.Issuer, peerTrust, func(), error) {
	variant := md.Variant()
	switch {
	case variant.Name == attestation.QEMUSEVSNP.Name:
		reporter := cfg.SNPReporter
		if reporter == nil {
			r, desc, err := snp.GuestReporter("", "")
			if err != nil {
				return nil, nil, nil, fmt.Errorf("this node attests as %s: %w", variant, err)
			}
			log.Info("SEV-SNP reports from the guest's firmware", "interface", desc)
			reporter = r
		}
		issuer, peers, err := snpAttestation(ctx, reporter, self.Name, snp.VerifierOptions{})
		if err != nil {
			return nil, nil, nil, err
		}
		log.Info("this node attests with SEV-SNP reports; no TPM")
		return issuer, peers, func() {}, nil
	case vtpm.ProviderCertified(variant):
	default:
		return nil, nil, nil, fmt.Errorf("a node cannot attest as %s: this bootstrapper issues %s, %s and %s evidence", variant, attestation.MiniVTPM, attestation.QEMUVTPM, attestation.QEMUSEVSNP)
	}
	tpm, err := openTPM(cfg.TPM)
	if err != nil {
		return nil, nil, nil, err
	}
	var akCert []byte
	if err := retry.Do(ctx, log, "enrolling the attestation key", func() error {
		var err error
		akCert, err = akca.Enroll(ctx, tpm, self.Name, vtpm.ECC, md)
		return err
	}); err != nil {
		tpm.Close()
		return nil, nil, nil, err
	}
	log.Info("attestation key certified by the provider")
	// The boot's event log does not change while the node runs: fetch it once, not for every evidence.
	var bootLog []byte
	if err := retry.Do(ctx, log, "fetching the boot event log", func() error {
		var err error
		bootLog, err = md.EventLog(ctx)
		return err
	}); err != nil {
		tpm.Close()
		return nil, nil, nil, err
	}
	issuer, err := vtpm.NewIssuerFor(variant, tpm, vtpm.ECC, akCert, func() ([]byte, error) { return bootLog, nil })
	if err != nil {
		tpm.Close()
		return nil, nil, nil, err
	}
	// A node that joins trusts a join service that booted exactly as it did (or, during an upgrade, with a set
	// of the peer policy it measures first, see joiner.join).
	own, err := ownPolicy(tpm, variant)
	if err != nil {
		issuer.Close()
		tpm.Close()
		return nil, nil, nil, fmt.Errorf("reading this node's boot measurements: %w", err)
	}
	return issuer, vtpmPeers{own: own}, func() { issuer.Close(); tpm.Close() }, nil
}

// openTPM opens the node's TPM at path: a character device (a machine's TPM) or a unix socket (swtpm).
func openTPM(path string) (io.ReadWriteCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("the TPM at %s: %w", path, err)
	}
	if fi.Mode()&os.ModeCharDevice != 0 {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("opening the TPM device %s: %w", path, err)
		}
		return f, nil
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to the TPM at %s: %w", path, err)
	}
	return conn, nil
}

// serveLocal serves handler on a node-local Unix socket (agent.Listen: owner-only, replacing a stale socket),
// for the node's own services, until stop is called. A server that stops by itself sends its error to errc.
func serveLocal(path string, handler http.Handler, errc chan<- error) (stop func(), err error) {
	ln, err := agent.Listen(path)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- fmt.Errorf("serving %s: %w", path, srv.Serve(ln)) }()
	return func() { srv.Close() }, nil
}

// firstNode is the life of a control-plane node that serves Init or Recover (the init service's Lifecycle):
// its encrypted network, the key service's secret, and the cluster services it deploys at init.
type firstNode struct {
	ctx     context.Context
	md      provider.Node
	self    provider.Instance
	k8s     Kubernetes
	mesh    *meshagent.Agent
	secrets *keyservice.SecretHolder
	// ownDisk is the UUID of the node's own state disk, which the key service binds to it ("" without one).
	ownDisk string
	// issuer, disk and log serve a control-plane node without a policy on its disk, which gets the master
	// secret's companions from another key service after a recovery.
	issuer attestation.Issuer
	peers  peerTrust
	disk   *stateDisk
	log    *slog.Logger
}

// StartNetwork brings the tunnel up before Kubernetes starts: with a new key at init, with the kept one after
// a recovery (the other nodes know it).
func (n *firstNode) StartNetwork(recovery bool) error {
	if recovery {
		if err := n.mesh.LoadKey(); err != nil {
			return err
		}
	} else if _, err := n.mesh.NewKey(); err != nil {
		return err
	}
	if err := n.mesh.Start(); err != nil {
		return err
	}
	// After a recovery, the peers this node had: the other control-plane nodes, without which etcd, and so
	// the record of the mesh in the API, cannot come back.
	return n.mesh.Apply(n.ctx)
}

// Recovered follows the cluster's mesh again and hands the node's key service (whose pod the kubelet has
// restarted, and which waits for it) the master secret, with the policy kept on the state disk (recoveredSecret).
// A control-plane node that joined before key services ran on every control-plane node kept no policy: its key
// service gets secret and policy from another key service, as after a join.
func (n *firstNode) Recovered(ms *kms.MasterSecret, clusterID []byte, kept KeptPolicy) error {
	if err := setMeshRootFromMaster(n.mesh, ms); err != nil {
		return err
	}
	go n.mesh.Follow(n.ctx, kubeadm.KubeletKubeconfig)
	go n.mesh.Publish(n.ctx, kubeadm.KubeletKubeconfig) // the same key as before; the record may have lost it
	secret := recoveredSecret(ms, clusterID, kept, n.self.Name, n.ownDisk)
	if secret == nil {
		if n.self.Name == FirstControlPlane {
			return errors.New("the state disk of the first control-plane node holds no measurement policy and no attestation policy for the key service")
		}
		go func() {
			// A recovered node measured no peer policy it could rely on: it trusts key services of its own image.
			if err := shareSecretFromPeers(n.ctx, n.md, n.issuer, n.peers, n.self, n.disk, n.secrets, nil, n.log); err != nil {
				n.log.Error("getting the master secret for this node's key service failed", "error", err)
			}
		}()
		return nil
	}
	return n.secrets.Set(secret)
}

// recoveredSecret is what the key service of the node name (with the state disk disk) gets after a recovery:
// the master secret, the cluster ID and the policy kept on the disk, measurements or attestation policy; nil
// if the disk kept neither. SecretHolder.Set validates it as the key service will (exactly one policy, an
// attestation policy only of a variant that binds the cluster).
func recoveredSecret(ms *kms.MasterSecret, clusterID []byte, kept KeptPolicy, name, disk string) *keyservice.Secret {
	if kept.Measurements == nil && kept.Attestation == nil {
		return nil
	}
	return &keyservice.Secret{MasterSecret: ms, ClusterID: clusterID, Measurements: kept.Measurements, Attestation: kept.Attestation, Node: name, DiskUUID: disk}
}

// keyServiceSecret is what the key service of the node name (with the state disk disk) gets at init: the
// master secret, the cluster ID and what its callers must prove, the measurements of att on a variant with a
// vTPM, att itself (its wire form) on qemu-sev-snp, where the callers' reports bind the cluster.
func keyServiceSecret(ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, name, disk string) (*keyservice.Secret, error) {
	wire, err := attestationWire(att)
	if err != nil {
		return nil, err
	}
	return &keyservice.Secret{MasterSecret: ms, ClusterID: clusterID, Measurements: att.Measurements, Attestation: wire, Node: name, DiskUUID: disk}, nil
}

// attestationWire is the wire form of att that a key service enforces, and a control-plane node keeps on its
// state disk, on a variant without a vTPM that binds the cluster (qemu-sev-snp); nil on a variant with a
// vTPM, whose key service enforces the measurements.
func attestationWire(att *validators.Policy) ([]byte, error) {
	variant, err := attestation.VariantByName(att.Variant)
	if err != nil {
		return nil, err
	}
	if variant.VTPM || !validators.BindsCluster(variant) {
		return nil, nil
	}
	wire, err := validators.MarshalPolicy(att)
	if err != nil {
		return nil, fmt.Errorf("the attestation policy for the key service: %w", err)
	}
	return wire, nil
}

// Initialised publishes this node as the mesh's first member, lets nodes read their peers, hands the key
// service the master secret, and deploys the cluster services; before any node can join, since the join
// service admits nodes as this node's peers.
func (n *firstNode) Initialised(ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, egress Egress) error {
	if err := setMeshRootFromMaster(n.mesh, ms); err != nil {
		return err
	}
	if err := n.mesh.Publish(n.ctx, kubeadm.KubeletKubeconfig); err != nil {
		return err
	}
	readers, err := meshpeers.Manifests()
	if err != nil {
		return err
	}
	if err := n.k8s.Apply(n.ctx, readers); err != nil {
		return fmt.Errorf("letting nodes read their WireGuard peers: %w", err)
	}
	go n.mesh.Follow(n.ctx, kubeadm.KubeletKubeconfig)
	secret, err := keyServiceSecret(ms, clusterID, att, n.self.Name, n.ownDisk)
	if err != nil {
		return err
	}
	if err := n.secrets.Set(secret); err != nil {
		return err
	}
	return deployServices(n.ctx, n.md, n.k8s, ms, clusterID, att, egress)
}
