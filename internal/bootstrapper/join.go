package bootstrapper

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	"github.com/constellation-dev/constellation/internal/registrymirror"
	"github.com/constellation-dev/constellation/internal/retry"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// mutualCredentials are aTLS credentials that attest this node with issuer and accept peers whose evidence
// chains to the provider's AK CA and matches policy.
func mutualCredentials(ctx context.Context, md provider.Node, issuer *vtpm.Issuer, policy measurements.M, log *slog.Logger) (*atls.Credentials, error) {
	roots, err := md.AKRoots(ctx)
	if err != nil {
		return nil, err
	}
	v, err := vtpm.NewValidatorFor(md.Variant(), roots, policy, log)
	if err != nil {
		return nil, err
	}
	return atls.NewCredentials(issuer, []attestation.Validator{v})
}

// deployServices installs the cluster's services of this project, from manifests that are part of this
// measured binary, not supplied from outside: the key service on this node, which gets the master secret from
// this process; the join service on every control-plane node, with its configuration (the cluster's attestation
// policy: variant, measurements and hardware policy; for a vTPM whose attestation key the provider certifies
// (mini-vtpm, qemu-vtpm) the provider's AK roots; and the cluster
// ID; and the registry mirrors every node gets); and the verification service on every node.
func deployServices(ctx context.Context, md provider.Node, k8s Kubernetes, self provider.Instance, ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, mirrors []registrymirror.Mirror) error {
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
	data, err := joinservice.ConfigData(&p, clusterID, macKey, mirrors)
	if err != nil {
		return err
	}
	keys, err := keyservice.Manifests(self.Name, md.Name(), md.Endpoint())
	if err != nil {
		return err
	}
	if err := k8s.Apply(ctx, keys); err != nil {
		return fmt.Errorf("deploying the key service: %w", err)
	}
	join, err := joinservice.Manifests(data, md.Name(), md.Endpoint(), net.JoinHostPort(self.IP, strconv.Itoa(keyservice.Port)))
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

// join asks the first control-plane node's join service to admit this node, then joins Kubernetes.
func join(ctx context.Context, md provider.Node, issuer *vtpm.Issuer, self provider.Instance, policy measurements.M, k8s Kubernetes, disk *stateDisk, mesh *meshagent.Agent, log *slog.Logger) error {
	controlPlane := self.Role == provider.RoleControlPlane
	var diskUUID string
	if disk != nil {
		diskUUID = disk.uuid
	}
	creds, err := mutualCredentials(ctx, md, issuer, policy, log)
	if err != nil {
		return err
	}
	// A node that joined before keeps its WireGuard key on its state disk, and the cluster knows it; a new
	// node makes its key now, and the join service admits its public half for this node.
	rejoin := false
	if disk != nil {
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
	var resp *joinpb.JoinResponse
	if err := retry.Do(ctx, log, "asking the join service to admit this node", func() error {
		list, err := md.Instances(ctx)
		if err != nil {
			return err
		}
		for _, inst := range list {
			if inst.Name != FirstControlPlane {
				continue
			}
			conn, err := grpc.NewClient(net.JoinHostPort(inst.IP, strconv.Itoa(joinpb.Port)), grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			defer conn.Close()
			callCtx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			resp, err = joinpb.NewJoinClient(conn).Join(callCtx, &joinpb.JoinRequest{ControlPlane: controlPlane, DiskUuid: diskUUID, WireguardPublicKey: meshKey, KubeletCsr: csr})
			return err
		}
		return errors.New("no control-plane node in the metadata")
	}); err != nil {
		return err
	}
	kubelet, err := kubeletCredentials(resp, kubeletKey)
	if err != nil {
		return fmt.Errorf("the join service's answer: %w", err)
	}
	// The join service checked them under the join configuration's MAC; this node renders only a valid list.
	mirrors, err := registrymirror.FromWire(resp.GetRegistryMirrors())
	if err != nil {
		return fmt.Errorf("the join service's answer: registry mirrors: %w", err)
	}
	ev := measurements.ClusterIDEvent(resp.GetClusterId())
	if err := issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		return fmt.Errorf("measuring the cluster ID: %w", err)
	}
	log.Info("admitted by the join service; cluster ID measured", "endpoint", resp.GetApiEndpoint())
	if disk != nil {
		if len(resp.GetDiskKey()) != joinpb.DiskKeyLength {
			return fmt.Errorf("the join service sent a state disk key of %d bytes, want %d", len(resp.GetDiskKey()), joinpb.DiskKeyLength)
		}
		if err := disk.unlock(resp.GetDiskKey()); err != nil {
			return err
		}
		if err := keepMirrors(disk, mirrors); err != nil {
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
	if err := k8s.ConfigureRegistryMirrors(mirrors); err != nil {
		return fmt.Errorf("configuring the registry mirrors: %w", err)
	}
	if err := k8s.PrepareRuntime(ctx); err != nil {
		return fmt.Errorf("preparing the container runtime: %w", err)
	}
	if controlPlane {
		if err := writePKI(kubeadm.PKIDir, resp.GetControlPlaneFiles()); err != nil {
			return fmt.Errorf("installing the control plane's PKI: %w", err)
		}
	}
	if err := k8s.Join(ctx, resp.GetApiEndpoint(), resp.GetToken(), resp.GetCaCertHash(), controlPlane, kubelet); err != nil {
		return err
	}
	log.Info("joined the cluster")
	return <-published
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
// and the API server. Each authenticates and encrypts by itself; nothing else of the node or its pods is
// reachable from there.
var operatorPorts = []uint16{initpb.Port, verifyservice.Port, verifyservice.GRPCPort, verifyservice.ClusterPort, verifyservice.ClusterGRPCPort, apiServerPort}

// apiServerPort is the API server's port (kubeadm's bindPort).
const apiServerPort = 6443
