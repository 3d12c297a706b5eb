// Package kubeadm drives a node's container runtime and kubeadm: it writes the containerd, CNI and kubeadm
// configuration a node needs on this product's nodes (image pulls only from the cluster's registry mirrors, with
// their credentials if the cluster configuration has any; no upstream DNS unless the cluster configuration names
// DNS servers; cgroup v1 with the cgroupfs driver), starts containerd, imports the pre-loaded images, starts the
// kubelet once kubeadm has configured it, and runs kubeadm init or join. kubeadm's configuration file (a join configuration holds the
// bootstrap token) is readable by root only and exists only while kubeadm runs. A node always runs the
// Kubernetes of its image: the first control-plane node of the next minor version upgrades the cluster with
// kubeadm upgrade apply after it joined, and reports every final failure of kubeadm on its Node object
// (upgrade.go). A join that fails for a reason another attempt may cure (a connection reset on the way to the API
// server) is left to the caller, which undoes it (ResetJoin: the kubelet stopped, kubeadm reset) and runs Join
// again, and reports the failure once it gives up (joinreset.go). kubeadm's output, in errors, logs and reports,
// never carries the bootstrap token.
//
// On mini clusters only (the mini provider is the only one that creates the directory), a node also imports
// the image archives its user loaded from the host (`constellation mini load`, LoadedImagesDir). They are the
// host's choice, as an image pulled through the host's network would be, and meant for the development loop;
// they never replace an image of the measured node image (the control plane, pause, this product's services):
// an archive naming one is refused, and the node checks afterwards that the node image's images are unchanged.
package kubeadm

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/nodedns"
)

// Options describe a node for kubeadm.
type Options struct {
	NodeName          string
	NodeIP            netip.Addr
	KubernetesVersion string
	// PauseImage is the sandbox image, e.g. registry.k8s.io/pause:3.10.2.
	PauseImage string
	// EtcdImageTag and CoreDNSImageTag are the tags of the node image's etcd and CoreDNS images, e.g. 3.7.0-0
	// and v1.14.6. The cluster's kubeadm configuration names them, so that a kubeadm of another Kubernetes
	// version (a node of an older or newer image, kubeadm upgrade) deploys these, which every node image has,
	// rather than its own default. Empty: kubeadm's default.
	EtcdImageTag, CoreDNSImageTag string
	// CgroupRoot is the node's cgroup (relative to each hierarchy), e.g. /constellation/control-plane-0.
	CgroupRoot string
	// PodCIDR is this node's pod address range; PodSubnet and ServiceSubnet are the cluster's.
	PodCIDR, PodSubnet, ServiceSubnet netip.Prefix
	// PodMTU is the MTU of the pods' interfaces: the tunnel's between nodes, so that nothing fragments.
	// Zero: the CNI plugin's default.
	PodMTU int
	// ControlPlaneEndpoint is the cluster's API endpoint: the node's own endpoint of the API (package
	// apiproxy, on loopback, the same address on every node), which reaches every control-plane node's API
	// server. It is kubeadm's controlPlaneEndpoint, in the API servers' certificates (certSANs), and the server
	// of a joining node's kubelet. Invalid: the first control-plane node's API server (NodeIP:6443 at init) is
	// the endpoint, and a joining kubelet talks to the API server it joined through.
	ControlPlaneEndpoint netip.AddrPort
}

// APIServerPort is the API servers' port on the control-plane nodes (kubeadm's bindPort).
const APIServerPort = 6443

// kubeletServer is the API server (host:port) of a joining node's kubelet: the cluster's endpoint, or without
// one, joinEndpoint, the API server the join service named.
func (o Options) kubeletServer(joinEndpoint string) string {
	if o.ControlPlaneEndpoint.IsValid() {
		return o.ControlPlaneEndpoint.String()
	}
	return joinEndpoint
}

// endpoint is the cluster's API endpoint as the first control-plane node sets it up.
func (o Options) endpoint() netip.AddrPort {
	if o.ControlPlaneEndpoint.IsValid() {
		return o.ControlPlaneEndpoint
	}
	return netip.AddrPortFrom(o.NodeIP, APIServerPort)
}

// Paths on a node.
const (
	ContainerdConfig = "/etc/containerd/config.toml"
	ContainerdSocket = "/run/containerd/containerd.sock"
	CNIConfDir       = "/etc/cni/net.d"
	CNIBinDir        = "/usr/lib/cni"
	KubeadmConfig    = "/etc/kubernetes/kubeadm.yaml"
	AdminKubeconfig  = "/etc/kubernetes/admin.conf"
	PodLogsDir       = "/var/log/pods"
	// PKIDir holds the cluster's certificates and keys.
	PKIDir = "/etc/kubernetes/pki"
	// KubeletKubeconfig holds the kubelet's credentials once the node has joined.
	KubeletKubeconfig = "/etc/kubernetes/kubelet.conf"
)

var containerdTmpl = template.Must(template.New("containerd").Parse(`version = 3
[plugins."io.containerd.cri.v1.runtime"]
  # Required here: the node lacks CAP_SYS_RESOURCE, and without this every pod fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{{.CNIBinDir}}"]
    conf_dir = "{{.CNIConfDir}}"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    SystemdCgroup = false
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{{.PauseImage}}"
[plugins."io.containerd.cri.v1.images".registry]
  # One <registry>/hosts.toml per mirrored registry (ConfigureRegistryMirrors); no other registry is reachable.
  config_path = "{{.RegistryHostsDir}}"
`))

// ContainerdConfigFile returns containerd's configuration.
func ContainerdConfigFile(o Options) ([]byte, error) {
	var b bytes.Buffer
	err := containerdTmpl.Execute(&b, map[string]string{"CNIBinDir": CNIBinDir, "CNIConfDir": CNIConfDir, "PauseImage": o.PauseImage, "RegistryHostsDir": RegistryHostsDir})
	return b.Bytes(), err
}

// containerdConfig is containerd's configuration with the registry mirrors' credentials, if any (see
// ConfigureRegistryMirrors): the CRI image service's registry.configs.<address>.auth tables, which containerd
// (v2) uses with config_path to answer a mirror's authentication challenge.
func (d *Driver) containerdConfig() ([]byte, error) {
	cfg, err := ContainerdConfigFile(d.Options)
	if err != nil {
		return nil, err
	}
	if len(d.registryAuth) > 0 {
		cfg = append(append(cfg, "\n# The registry mirrors' credentials (from the cluster configuration).\n"...), d.registryAuth...)
	}
	return cfg, nil
}

// CNIConfigFile returns the CNI network of this node: a bridge with the node's pod range.
func CNIConfigFile(o Options) []byte {
	mtu := ""
	if o.PodMTU > 0 {
		mtu = fmt.Sprintf(`"mtu":%d,`, o.PodMTU)
	}
	return []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"pods","plugins":[`+
		`{"type":"bridge","bridge":"cni0",%s"isGateway":true,"isDefaultGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"dataDir":"/var/lib/cni"}},`+
		`{"type":"portmap","capabilities":{"portMappings":true}}]}`, mtu, o.PodCIDR))
}

// kubeadmTimeouts are kubeadm's waits for the control plane, the kubelet and the API server: generous,
// because a node may be an emulated machine (QEMU without hardware virtualisation) where the control plane
// takes many minutes to come up. They bound waits only; a healthy node is done as soon as it is ready.
const kubeadmTimeouts = `timeouts:
  controlPlaneComponentHealthCheck: 40m0s
  kubeletHealthCheck: 40m0s
  kubernetesAPICall: 10m0s
  etcdAPICall: 10m0s
  tlsBootstrap: 40m0s
  discovery: 40m0s
`

var initTmpl = template.Must(template.New("init").Parse(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: "{{.NodeIP}}", bindPort: 6443}
nodeRegistration:
  name: "{{.NodeName}}"
  criSocket: "unix://{{.Socket}}"
  imagePullPolicy: Never
  kubeletExtraArgs: [{name: node-ip, value: "{{.NodeIP}}"}]
` + kubeadmTimeouts + `---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: "{{.KubernetesVersion}}"
controlPlaneEndpoint: "{{.Endpoint}}"
networking: {serviceSubnet: "{{.ServiceSubnet}}", podSubnet: "{{.PodSubnet}}"}
{{- if .EtcdImageTag}}
etcd: {local: {imageTag: "{{.EtcdImageTag}}"}}
{{- end}}
{{- if .CoreDNSImageTag}}
dns: {imageTag: "{{.CoreDNSImageTag}}"}
{{- end}}
apiServer:
  certSANs: ["{{.Endpoint.Addr}}"]
  # Never ask the host's resolver for node names.
  extraArgs: [{name: kubelet-preferred-address-types, value: InternalIP}]
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: "{{.CgroupRoot}}"
failCgroupV1: false
failSwapOn: false
podLogsDir: "{{.PodLogsDir}}"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
conntrack: {maxPerCore: 0}
`))

// InitConfigFile returns kubeadm's configuration for the first control-plane node.
func InitConfigFile(o Options) ([]byte, error) {
	if !o.NodeIP.IsValid() || o.NodeName == "" || o.KubernetesVersion == "" || o.CgroupRoot == "" {
		return nil, fmt.Errorf("kubeadm options incomplete: node name, node IP, Kubernetes version and cgroup root are required")
	}
	var b bytes.Buffer
	err := initTmpl.Execute(&b, map[string]any{
		"NodeIP": o.NodeIP, "NodeName": o.NodeName, "Socket": ContainerdSocket, "KubernetesVersion": o.KubernetesVersion,
		"Endpoint": o.endpoint(), "ServiceSubnet": o.ServiceSubnet, "PodSubnet": o.PodSubnet, "CgroupRoot": o.CgroupRoot, "PodLogsDir": PodLogsDir,
		"EtcdImageTag": o.EtcdImageTag, "CoreDNSImageTag": o.CoreDNSImageTag,
	})
	return b.Bytes(), err
}

var joinTmpl = template.Must(template.New("join").Parse(`apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  file: {kubeConfigPath: "{{.DiscoveryFile}}"}
  tlsBootstrapToken: "{{.Token}}"
nodeRegistration:
  name: "{{.NodeName}}"
  criSocket: "unix://{{.Socket}}"
  imagePullPolicy: Never
  kubeletExtraArgs: [{name: node-ip, value: "{{.NodeIP}}"}]
patches:
  directory: "{{.Patches}}"
` + kubeadmTimeouts + `
{{- if .ControlPlane}}
controlPlane:
  localAPIEndpoint: {advertiseAddress: "{{.NodeIP}}", bindPort: 6443}
{{- end}}
`))

// PatchesDir holds this node's kubelet configuration patches (its cgroup root differs per node).
const PatchesDir = "/etc/kubernetes/patches"

// DiscoveryFile is the kubeconfig from which kubeadm join learns the API server it joins through and the
// cluster CA: written by the node from the join service's attested answer (the CA checked against its hash).
const DiscoveryFile = "/etc/kubernetes/discovery.conf"

// JoinConfigFile returns kubeadm's configuration to join a cluster through the API server and cluster CA of
// the kubeconfig discoveryFile (see [DiscoveryKubeconfig]), as a control-plane node if controlPlane (with the
// shared certificates already in PKIDir). kubeadm then talks to that API server only: a join through any
// control-plane node works while another (the one named in the cluster's configuration) is down.
func JoinConfigFile(o Options, discoveryFile, token string, controlPlane bool) ([]byte, error) {
	if !o.NodeIP.IsValid() || o.NodeName == "" || discoveryFile == "" || token == "" {
		return nil, fmt.Errorf("kubeadm join options incomplete: node, discovery file and token are required")
	}
	var b bytes.Buffer
	err := joinTmpl.Execute(&b, map[string]any{
		"DiscoveryFile": discoveryFile, "Token": token, "NodeName": o.NodeName, "Socket": ContainerdSocket,
		"NodeIP": o.NodeIP, "Patches": PatchesDir, "ControlPlane": controlPlane,
	})
	return b.Bytes(), err
}

// DiscoveryKubeconfig is the kubeconfig of kubeadm's discovery: the API server at endpoint (host:port) with
// the cluster CA caCert (PEM), and no credentials (kubeadm uses the bootstrap token).
func DiscoveryKubeconfig(endpoint string, caCert []byte) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    certificate-authority-data: %s
    server: https://%s
contexts:
- name: discovery
  context: {cluster: kubernetes, user: discovery}
current-context: discovery
users:
- name: discovery
  user: {}
`, base64.StdEncoding.EncodeToString(caCert), endpoint))
}

// KubeletPatch is the strategic-merge patch of the kubelet configuration for this node.
func KubeletPatch(o Options) []byte {
	return []byte(fmt.Sprintf("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupRoot: %q\n", o.CgroupRoot))
}

// KubeletCredentials are a kubelet's client identity, issued by the join service: the cluster CA certificate,
// the kubelet's certificate and its key (PEM).
type KubeletCredentials struct {
	CACert, Cert, Key []byte
}

// KubeletPKIDir is where the kubelet keeps its certificates.
const KubeletPKIDir = "/var/lib/kubelet/pki"

// writeKubeletCredentials installs the kubelet's client certificate and kubeconfig as the kubelet itself
// would after a TLS bootstrap: kubelet-client-<time>.pem (certificate and key, owner-only), the link
// kubelet-client-current.pem to it (which the kubelet moves when it renews its certificate), and
// kubelet.conf naming that link. The kubelet then starts with its identity and never asks for one with the
// bootstrap token.
func writeKubeletCredentials(pkiDir, kubeconfig, server string, c KubeletCredentials, now time.Time) error {
	if len(c.CACert) == 0 || len(c.Cert) == 0 || len(c.Key) == 0 {
		return fmt.Errorf("kubelet credentials incomplete")
	}
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return err
	}
	file := filepath.Join(pkiDir, "kubelet-client-"+now.UTC().Format("2006-01-02-15-04-05")+".pem")
	if err := os.WriteFile(file, append(append([]byte{}, c.Cert...), c.Key...), 0o600); err != nil {
		return err
	}
	current := filepath.Join(pkiDir, "kubelet-client-current.pem")
	os.Remove(current)
	if err := os.Symlink(file, current); err != nil {
		return err
	}
	conf := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: default-cluster
  cluster:
    certificate-authority-data: %s
    server: %s
contexts:
- name: default-context
  context: {cluster: default-cluster, namespace: default, user: default-auth}
current-context: default-context
users:
- name: default-auth
  user:
    client-certificate: %s
    client-key: %s
`, base64.StdEncoding.EncodeToString(c.CACert), server, current, current)
	if err := os.MkdirAll(filepath.Dir(kubeconfig), 0o755); err != nil {
		return err
	}
	return os.WriteFile(kubeconfig, []byte(conf), 0o600)
}

// Join runs kubeadm join with the kubelet started as soon as kubeadm has configured it, with the kubelet's
// identity in creds. kubeadm discovers the cluster through endpoint (the API server the join service named)
// with the cluster CA pinned; the kubelet then talks to the cluster's API endpoint (Options.ControlPlaneEndpoint,
// the node's own endpoint, which must be serving), or to endpoint without one. A failure is [Permanent] or may pass
// with another attempt after ResetJoin (see joinKubeadm).
func (d *Driver) Join(ctx context.Context, endpoint, token, caHash string, controlPlane bool, creds KubeletCredentials) error {
	if _, err := os.Stat(KubeletKubeconfig); err == nil {
		// The node joined before this boot: its state disk holds its kubelet's credentials and configuration.
		d.logf("this node joined the cluster before; starting the kubelet with its state")
		// Earlier versions left the join configuration (with its bootstrap token) on the state disk.
		if err := removeConfig(KubeadmConfig); err != nil {
			return err
		}
		d.launchKubelet(context.WithoutCancel(ctx))
		return nil
	}
	if err := writeKubeletCredentials(KubeletPKIDir, KubeletKubeconfig, "https://"+d.Options.kubeletServer(endpoint), creds, time.Now()); err != nil {
		return permanent(fmt.Errorf("installing the kubelet's credentials: %w", err))
	}
	if !strings.HasPrefix(caHash, "sha256:") {
		return permanent(fmt.Errorf("the cluster CA's hash %.80q is not a sha256 hash", caHash))
	}
	// The CA comes from the join service's attested answer, checked against caHash by the caller.
	if err := writeFile(DiscoveryFile, DiscoveryKubeconfig(endpoint, creds.CACert)); err != nil {
		return err
	}
	defer os.Remove(DiscoveryFile)
	cfg, err := JoinConfigFile(d.Options, DiscoveryFile, token, controlPlane)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(d.patchesDir(), "kubeletconfiguration+strategic.yaml"), KubeletPatch(d.Options)); err != nil {
		return err
	}
	if controlPlane {
		// The control plane of this node's image, whatever version the cluster's configuration names (see
		// PlanJoin): kubeadm join deploys that version's, which the image may not have.
		if err := writePatches(d.patchesDir(), d.Options.KubernetesVersion); err != nil {
			return err
		}
	}
	// The kubelet's kubeconfig is there already: the join service issued its identity. The kubelet is stopped
	// again if the join fails (ResetJoin).
	d.startJoinKubelet(ctx)
	args := []string{"join", "--config", KubeadmConfig,
		"--ignore-preflight-errors=SystemVerification,Service-Kubelet,FileExisting-crictl,FileExisting-socat,FileExisting-ethtool,FileExisting-ebtables,FileAvailable--etc-kubernetes-kubelet.conf"}
	if controlPlane {
		// kubeadm checks every etcd member's health before the kubelet starts. Only the control-plane node
		// whose join service admitted this node has it as a WireGuard peer before its kubelet registers and
		// publishes its key; another control-plane node that became an etcd member meanwhile would be out
		// of reach, and the check would fail the join. Adding the member needs a quorum all the same, and
		// this node's etcd reaches every member once its key is published.
		args = append(args, "--skip-phases=check-etcd")
	}
	return d.joinKubeadm(ctx, cfg, args, controlPlane, token)
}

// runWithConfig runs a command (kubeadm) that reads its configuration from path: the configuration is written
// there readable by root only (a join configuration holds the bootstrap token), and removed again when the
// command ends, whether it succeeded or not, so that no token outlives its use on the node. A file left at
// path by an earlier boot is replaced, never reused.
func runWithConfig(ctx context.Context, path string, cfg []byte, name string, args ...string) ([]byte, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	// Remove first: WriteFile keeps the mode of an existing file.
	if err := removeConfig(path); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if rerr := removeConfig(path); rerr != nil {
		return out, errors.Join(err, rerr)
	}
	return out, err
}

// removeConfig removes kubeadm's configuration file, if there is one.
func removeConfig(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s (it may hold a bootstrap token): %w", path, err)
	}
	return nil
}

// Corefile is CoreDNS's configuration on clusters without DNS servers: cluster names only. There is no upstream
// resolver (no "forward") and hence no forwarding loop to detect (no "loop").
const Corefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    cache 30
    reload
    loadbalance
}
`

// CorefileFor is CoreDNS's configuration for the cluster's DNS servers (see package nodedns): Corefile without
// servers; with them, Corefile that forwards every other name to them, and detects a forwarding loop.
func CorefileFor(servers []string) (string, error) {
	fwd, err := nodedns.ForwardDirective(servers)
	if err != nil {
		return "", err
	}
	if fwd == "" {
		return Corefile, nil
	}
	const before = "    cache 30\n"
	if !strings.Contains(Corefile, before) {
		return "", errors.New("the Corefile has no cache directive to put the upstream before")
	}
	return strings.Replace(Corefile, before, "    "+fwd+"\n    loop\n"+before, 1), nil
}

// Driver runs the node's container runtime and kubeadm.
type Driver struct {
	Options Options
	// ImagesDir holds the container image archives to import.
	ImagesDir string
	// LoadedImagesDir, if set and present, holds further image archives from the host (LoadedImagesDir of
	// the mini provider), imported after ImagesDir's, which they cannot replace.
	LoadedImagesDir string
	// Log receives the output of containerd, the kubelet and kubeadm.
	Log func(format string, args ...any)
	// hostsDir replaces RegistryHostsDir in tests.
	hostsDir string
	// resolvConfPath replaces ResolvConf in tests.
	resolvConfPath string
	// registryAuth is the mirrors' credentials for containerd's configuration (a secret; see
	// ConfigureRegistryMirrors); dns are the cluster's DNS servers (ConfigureDNS).
	registryAuth []byte
	dns          []string
	// kubeadmBin, kubeletConf, patches, kubeadmConf and nodeReadyTimeout replace kubeadm (the command),
	// KubeletKubeconfig, PatchesDir, KubeadmConfig and the wait for this node to be Ready before a kubeadm
	// upgrade in tests.
	kubeadmBin, kubeletConf, patches, kubeadmConf string
	nodeReadyTimeout                              time.Duration
	// cniConfDir and kubeProxyMetrics replace CNIConfDir and kube-proxy's metrics endpoint in tests.
	cniConfDir, kubeProxyMetrics string
	// addonsRequested, if set, receives the request for the addons' upgrade (upgradeAddons) in tests, which
	// test that loop on its own.
	addonsRequested chan struct{}
	// kubeletBin, kubeletRunDir and logDir replace the kubelet (the command), /var/lib/kubelet and /var/log in
	// tests.
	kubeletBin, kubeletRunDir, logDir string

	// mu guards joinKubelet, the kubelet the last Join started (see ResetJoin).
	mu          sync.Mutex
	joinKubelet *runningKubelet
}

func (d *Driver) patchesDir() string {
	if d.patches != "" {
		return d.patches
	}
	return PatchesDir
}

func (d *Driver) logf(format string, args ...any) {
	if d.Log != nil {
		d.Log(format, args...)
	}
}

// PrepareRuntime writes the configuration files, starts containerd and imports the images. The pod network
// stays off until EnablePodNetwork.
func (d *Driver) PrepareRuntime(ctx context.Context) error {
	cfg, err := d.containerdConfig()
	if err != nil {
		return err
	}
	// containerd's configuration may hold the mirrors' credentials: root only, and written anew (WriteFile keeps
	// the mode of an existing file).
	if err := writeSecretFile(ContainerdConfig, cfg); err != nil {
		return err
	}
	if err := d.disablePodNetwork(); err != nil {
		return err
	}
	for _, dir := range []string{PodLogsDir, "/var/lib/kubelet", "/etc/kubernetes"} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := ensureCgroupRoot(d.Options.CgroupRoot); err != nil {
		return err
	}
	if _, err := d.startBackground(context.Background(), "containerd", "/var/log/containerd.log", "containerd", "--config", ContainerdConfig); err != nil {
		return err
	}
	if err := waitFor(ctx, time.Minute, func() bool { _, err := os.Stat(ContainerdSocket); return err == nil }); err != nil {
		return fmt.Errorf("containerd did not start (see /var/log/containerd.log): %w", err)
	}
	archives, err := filepath.Glob(filepath.Join(d.ImagesDir, "*.tar"))
	if err != nil || len(archives) == 0 {
		return fmt.Errorf("no container images in %s", d.ImagesDir)
	}
	for _, a := range archives {
		if out, err := exec.CommandContext(ctx, "ctr", "-a", ContainerdSocket, "-n", "k8s.io", "images", "import", a).CombinedOutput(); err != nil {
			return fmt.Errorf("importing %s: %w: %s", filepath.Base(a), err, out)
		}
	}
	if err := d.importLoaded(ctx); err != nil {
		return fmt.Errorf("importing the loaded images: %w", err)
	}
	d.logf("container runtime ready, %d images imported", len(archives))
	return nil
}

// ensureCgroupRoot creates the kubelet's cgroup root where the node has the cgroup v2 hierarchy (a virtual
// machine, which mounts it itself); on cgroup v1 the provider created it in every hierarchy.
func ensureCgroupRoot(root string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &fs); err != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil
	}
	if err := os.MkdirAll(filepath.Join("/sys/fs/cgroup", root), 0o755); err != nil {
		return fmt.Errorf("creating the kubelet's cgroup root %s: %w", root, err)
	}
	return nil
}

// Init runs kubeadm init with the kubelet started as soon as kubeadm has written its configuration, then
// replaces CoreDNS's configuration. It returns the admin kubeconfig.
func (d *Driver) Init(ctx context.Context) ([]byte, error) {
	cfg, err := InitConfigFile(d.Options)
	if err != nil {
		return nil, err
	}
	go d.launchKubelet(context.WithoutCancel(ctx))
	if out, err := runWithConfig(ctx, KubeadmConfig, cfg, "kubeadm", "init", "--config", KubeadmConfig, "--skip-token-print",
		"--ignore-preflight-errors=SystemVerification,Service-Kubelet,FileExisting-crictl,FileExisting-socat,FileExisting-ethtool,FileExisting-ebtables"); err != nil {
		return nil, fmt.Errorf("kubeadm init: %w\n%s", err, tail(out, 30))
	}
	if err := d.configureCoreDNS(ctx); err != nil {
		return nil, err
	}
	// Kubelets get their identity from the join service, for their attested name only. A bootstrap token
	// must not be enough to obtain a node's certificate for any name: no automatic approval of its requests.
	if err := d.kubectl(ctx, "delete", "clusterrolebinding", "kubeadm:node-autoapprove-bootstrap"); err != nil {
		return nil, fmt.Errorf("removing the automatic approval of bootstrap certificate requests: %w", err)
	}
	return os.ReadFile(AdminKubeconfig)
}

// launchKubelet stands in for the kubelet's service unit: it waits for kubeadm's files and starts the kubelet,
// which runs until ctx ends. It returns what is closed when the kubelet exited, nil if it did not start.
func (d *Driver) launchKubelet(ctx context.Context) <-chan struct{} {
	if err := waitFor(ctx, 10*time.Minute, func() bool {
		_, e1 := os.Stat(filepath.Join(d.kubeletDir(), "config.yaml"))
		_, e2 := os.Stat(filepath.Join(d.kubeletDir(), "kubeadm-flags.env"))
		return e1 == nil && e2 == nil
	}); err != nil {
		return nil
	}
	// kubeadm points a control-plane node's kubelet at the node's own API server only; it talks to the
	// cluster's endpoint instead, so that it keeps its API while that API server is down.
	if err := pointKubeconfigAt(KubeletKubeconfig, d.Options.ControlPlaneEndpoint); err != nil {
		d.logf("pointing the kubelet at the cluster's endpoint: %v", err)
	}
	env, _ := os.ReadFile(filepath.Join(d.kubeletDir(), "kubeadm-flags.env"))
	args := []string{"--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf", "--kubeconfig=" + KubeletKubeconfig, "--config=/var/lib/kubelet/config.yaml"}
	args = append(args, kubeadmFlags(string(env))...)
	exited, err := d.startBackground(ctx, "kubelet", "/var/log/kubelet.log", d.kubeletCommand(), args...)
	if err != nil {
		d.logf("starting the kubelet: %v", err)
	}
	return exited
}

// pointKubeconfigAt sets the server of every cluster of the kubeconfig at path to https://endpoint, if
// endpoint is valid and the file exists.
func pointKubeconfigAt(path string, endpoint netip.AddrPort) error {
	if !endpoint.IsValid() {
		return nil
	}
	kc, err := clientcmd.LoadFromFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	changed := false
	for _, c := range kc.Clusters {
		if server := "https://" + endpoint.String(); c.Server != server {
			c.Server, changed = server, true
		}
	}
	if !changed {
		return nil
	}
	raw, err := clientcmd.Write(*kc)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, raw, 0o600)
}

// kubeadmFlags parses KUBELET_KUBEADM_ARGS="--a=b --c=d" from kubeadm-flags.env.
func kubeadmFlags(env string) []string {
	for _, line := range strings.Split(env, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "KUBELET_KUBEADM_ARGS="); ok {
			return strings.Fields(strings.Trim(v, `"`))
		}
	}
	return nil
}

// kubectl runs kubectl with the administrator's credentials in kube-system.
func (d *Driver) kubectl(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", AdminKubeconfig, "-n", "kube-system"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (d *Driver) configureCoreDNS(ctx context.Context) error {
	corefile, err := CorefileFor(d.dns)
	if err != nil {
		return fmt.Errorf("configuring CoreDNS: %w", err)
	}
	patch := fmt.Sprintf(`{"data":{"Corefile":%q}}`, corefile)
	if err := d.kubectl(ctx, "patch", "configmap", "coredns", "--type", "merge", "-p", patch); err != nil {
		return fmt.Errorf("configuring CoreDNS: %w", err)
	}
	return d.kubectl(ctx, "rollout", "restart", "deployment", "coredns")
}

// Restart starts the kubelet of a node whose configuration and credentials are on its state disk; the
// kubelet then starts the node's static pods (the control plane) again.
func (d *Driver) Restart(ctx context.Context) error {
	if _, err := os.Stat(KubeletKubeconfig); err != nil {
		return fmt.Errorf("this node has no kubelet configuration to restart from: %w", err)
	}
	if err := removeConfig(KubeadmConfig); err != nil {
		return err
	}
	d.launchKubelet(context.WithoutCancel(ctx))
	return nil
}

// Apply creates or updates Kubernetes objects with the administrator's kubeconfig. kubectl's output names
// the objects only; Secrets' data is never printed.
func (d *Driver) Apply(ctx context.Context, manifests []byte) error {
	cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", AdminKubeconfig, "apply", "-f", "-")
	cmd.Stdin = bytes.NewReader(manifests)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl apply: %w: %s", err, tail(out, 20))
	}
	d.logf("applied: %s", strings.Join(strings.Fields(string(out)), " "))
	return nil
}

// startBackground starts bin, which logs to logPath and is killed when ctx ends. It returns what is closed when
// it exited.
func (d *Driver) startBackground(ctx context.Context, name, logPath string, bin string, args ...string) (<-chan struct{}, error) {
	if d.logDir != "" {
		logPath = filepath.Join(d.logDir, filepath.Base(logPath))
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		err := cmd.Wait()
		logFile.Close()
		d.logf("%s exited: %v", name, err)
	}()
	return exited, nil
}

// writeSecretFile writes a file readable by root only, replacing whatever was at path.
func writeSecretFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
