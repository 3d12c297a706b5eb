package kubeadm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

var opts = Options{
	NodeName: "control-plane-0", NodeIP: netip.MustParseAddr("10.217.0.10"), KubernetesVersion: "v1.37.2",
	PauseImage: "registry.k8s.io/pause:3.10.2", CgroupRoot: "/constellation/control-plane-0",
	PodCIDR: netip.MustParsePrefix("10.218.0.0/24"), PodSubnet: netip.MustParsePrefix("10.218.0.0/16"),
	ServiceSubnet: netip.MustParsePrefix("10.97.0.0/16"),
}

func docs(t *testing.T, raw []byte) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, d := range strings.Split(string(raw), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("document does not parse: %v\n%s", err, d)
		}
		out[m["kind"].(string)] = m
	}
	return out
}

// clusterEndpoint returns the control-plane endpoint and the API server certificate's extra SANs of an
// init configuration.
func clusterEndpoint(t *testing.T, raw []byte) (string, []any) {
	t.Helper()
	c := docs(t, raw)["ClusterConfiguration"]
	sans, _ := c["apiServer"].(map[string]any)["certSANs"].([]any)
	return c["controlPlaneEndpoint"].(string), sans
}

func TestInitConfigFile(t *testing.T) {
	raw, err := InitConfigFile(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Without an endpoint of its own, the first control-plane node's API server is the cluster's.
	if ep, sans := clusterEndpoint(t, raw); ep != "10.217.0.10:6443" || len(sans) != 1 || sans[0] != "10.217.0.10" {
		t.Errorf("control-plane endpoint %q, SANs %v; want the node's", ep, sans)
	}
	// With the node's own endpoint, that is the cluster's, and in the API server's certificate.
	lb := opts
	lb.ControlPlaneEndpoint = netip.MustParseAddrPort("127.0.0.1:7445")
	rawLB, err := InitConfigFile(lb)
	if err != nil {
		t.Fatal(err)
	}
	if ep, sans := clusterEndpoint(t, rawLB); ep != "127.0.0.1:7445" || len(sans) != 1 || sans[0] != "127.0.0.1" {
		t.Errorf("control-plane endpoint %q, SANs %v; want the node's own endpoint", ep, sans)
	}
	d := docs(t, raw)
	// Without the image's tags, kubeadm's defaults; with them, the image's etcd and CoreDNS at every
	// Kubernetes version.
	if _, ok := d["ClusterConfiguration"]["etcd"]; ok {
		t.Errorf("etcd configured without a tag: %v", d["ClusterConfiguration"]["etcd"])
	}
	tagged := opts
	tagged.EtcdImageTag, tagged.CoreDNSImageTag = "3.7.0-0", "v1.14.6"
	rawTagged, err := InitConfigFile(tagged)
	if err != nil {
		t.Fatal(err)
	}
	cc := docs(t, rawTagged)["ClusterConfiguration"]
	if etcd, _ := cc["etcd"].(map[string]any); etcd == nil || etcd["local"].(map[string]any)["imageTag"] != "3.7.0-0" {
		t.Errorf("etcd: %v", cc["etcd"])
	}
	if dns, _ := cc["dns"].(map[string]any); dns == nil || dns["imageTag"] != "v1.14.6" {
		t.Errorf("dns: %v", cc["dns"])
	}
	kubelet := d["KubeletConfiguration"]
	if kubelet["failCgroupV1"] != false || kubelet["cgroupDriver"] != "cgroupfs" || kubelet["cgroupRoot"] != "/constellation/control-plane-0" {
		t.Errorf("kubelet configuration: %v", kubelet)
	}
	reg := d["InitConfiguration"]["nodeRegistration"].(map[string]any)
	if reg["imagePullPolicy"] != "Never" || reg["criSocket"] != "unix://"+ContainerdSocket {
		t.Errorf("node registration: %v", reg)
	}
	if !strings.Contains(string(raw), "kubelet-preferred-address-types, value: InternalIP") {
		t.Error("the API server may ask the host's resolver for node names")
	}
	if _, err := InitConfigFile(Options{}); err == nil {
		t.Error("empty options accepted")
	}

	// The real kubeadm accepts it, when it has been built.
	kubeadm, _ := filepath.Abs("../../../_out/kubernetes/bin/kubeadm")
	if _, err := os.Stat(kubeadm); err != nil {
		t.Skip("kubeadm not built (make kubernetes); skipping validation with kubeadm")
	}
	for _, cfg := range [][]byte{raw, rawLB} {
		path := filepath.Join(t.TempDir(), "kubeadm.yaml")
		if err := os.WriteFile(path, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(kubeadm, "config", "validate", "--config", path).CombinedOutput(); err != nil {
			t.Fatalf("kubeadm config validate: %v\n%s", err, out)
		}
	}
}

func TestRuntimeConfig(t *testing.T) {
	cfg, err := ContainerdConfigFile(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"restrict_oom_score_adj = true", `sandbox = "registry.k8s.io/pause:3.10.2"`, "SystemdCgroup = false", `bin_dirs = ["/usr/lib/cni"]`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("containerd configuration lacks %q:\n%s", want, cfg)
		}
	}
	var cni map[string]any
	if err := yaml.Unmarshal(CNIConfigFile(opts), &cni); err != nil || !strings.Contains(string(CNIConfigFile(opts)), `"subnet":"10.218.0.0/24"`) {
		t.Errorf("CNI configuration: %v\n%s", err, CNIConfigFile(opts))
	}
	for _, banned := range []string{"forward", "loop"} {
		if strings.Contains(Corefile, banned) {
			t.Errorf("Corefile contains %q: CoreDNS would query an upstream resolver", banned)
		}
	}
}

func TestKubeadmFlags(t *testing.T) {
	got := kubeadmFlags("# comment\nKUBELET_KUBEADM_ARGS=\"--node-ip=10.217.0.10 --pod-infra-container-image=x\"\n")
	if len(got) != 2 || got[0] != "--node-ip=10.217.0.10" {
		t.Fatalf("kubeadmFlags = %q", got)
	}
	if kubeadmFlags("") != nil {
		t.Fatal("flags from an empty file")
	}
}

// testCA is a self-signed CA certificate.
func testCA(t *testing.T) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func TestJoinConfigFile(t *testing.T) {
	worker := opts
	worker.NodeName, worker.CgroupRoot = "worker-0", "/constellation/worker-0"
	// The discovery file names the API server joined through, with the cluster CA.
	discovery := filepath.Join(t.TempDir(), "discovery.conf")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: testCA(t).Raw})
	os.WriteFile(discovery, DiscoveryKubeconfig("10.217.0.11:6443", caPEM), 0o644)
	if kc := docs(t, DiscoveryKubeconfig("10.217.0.11:6443", caPEM))["Config"]; kc["clusters"].([]any)[0].(map[string]any)["cluster"].(map[string]any)["server"] != "https://10.217.0.11:6443" {
		t.Fatalf("discovery kubeconfig: %v", kc)
	}
	raw, err := JoinConfigFile(worker, discovery, "abcdef.0123456789abcdef", false)
	if err != nil {
		t.Fatal(err)
	}
	d := docs(t, raw)["JoinConfiguration"]
	if disc := d["discovery"].(map[string]any); disc["file"].(map[string]any)["kubeConfigPath"] != discovery || disc["tlsBootstrapToken"] != "abcdef.0123456789abcdef" {
		t.Fatalf("join discovery: %v", disc)
	}
	if d["nodeRegistration"].(map[string]any)["imagePullPolicy"] != "Never" || d["patches"].(map[string]any)["directory"] != PatchesDir || d["controlPlane"] != nil {
		t.Fatalf("join configuration: %v", d)
	}
	cp := opts
	cp.NodeName, cp.NodeIP = "control-plane-1", netip.MustParseAddr("10.217.0.11")
	rawCP, err := JoinConfigFile(cp, discovery, "abcdef.0123456789abcdef", true)
	if err != nil {
		t.Fatal(err)
	}
	ep := docs(t, rawCP)["JoinConfiguration"]["controlPlane"].(map[string]any)["localAPIEndpoint"].(map[string]any)
	if ep["advertiseAddress"] != "10.217.0.11" || ep["bindPort"] != float64(6443) {
		t.Fatalf("control-plane join configuration: %v", ep)
	}
	// The kubelet talks to the cluster's endpoint (the node's own) where there is one, else to the API server joined through.
	if got := worker.kubeletServer("10.217.0.11:6443"); got != "10.217.0.11:6443" {
		t.Errorf("kubelet's server without the cluster's endpoint: %s", got)
	}
	worker.ControlPlaneEndpoint = netip.MustParseAddrPort("127.0.0.1:7445")
	if got := worker.kubeletServer("10.217.0.11:6443"); got != "127.0.0.1:7445" {
		t.Errorf("kubelet's server with the node's own endpoint: %s", got)
	}
	if !strings.Contains(string(KubeletPatch(worker)), `cgroupRoot: "/constellation/worker-0"`) {
		t.Fatalf("kubelet patch: %s", KubeletPatch(worker))
	}
	if _, err := JoinConfigFile(worker, "", "t", false); err == nil {
		t.Fatal("a join configuration without discovery file")
	}
	kubeadm, _ := filepath.Abs("../../../_out/kubernetes/bin/kubeadm")
	if _, err := os.Stat(kubeadm); err != nil {
		t.Skip("kubeadm not built")
	}
	for _, cfg := range [][]byte{raw, rawCP} {
		path := filepath.Join(t.TempDir(), "join.yaml")
		os.WriteFile(path, cfg, 0o600)
		if out, err := exec.Command(kubeadm, "config", "validate", "--config", path).CombinedOutput(); err != nil {
			t.Fatalf("kubeadm config validate: %v\n%s", err, out)
		}
	}
}

// The kubelet's kubeconfig written from the join service's credentials is one a Kubernetes client loads, and
// the key is readable by root only.
func TestWriteKubeletCredentials(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "system:node:w"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	creds := KubeletCredentials{CACert: certPEM, Cert: certPEM, Key: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}
	pki, conf := filepath.Join(dir, "pki"), filepath.Join(dir, "kubelet.conf")
	if err := writeKubeletCredentials(pki, conf, "https://10.217.0.10:6443", creds, time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	c, err := kubeapi.FromKubeconfig(conf)
	if err != nil || c.Server() != "https://10.217.0.10:6443" {
		t.Fatalf("the kubelet's kubeconfig: %v", err)
	}
	target, err := os.Readlink(filepath.Join(pki, "kubelet-client-current.pem"))
	if err != nil || filepath.Base(target) != "kubelet-client-2026-11-26-04-00-00.pem" {
		t.Fatalf("current certificate link: %q %v", target, err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	if err := writeKubeletCredentials(pki, conf, "https://x", KubeletCredentials{}, time.Now()); err == nil {
		t.Fatal("empty credentials written")
	}
}

// kubeadm's configuration (with the bootstrap token) is readable by root only while kubeadm runs, and gone
// afterwards, whether kubeadm succeeded or not; a file an earlier boot left readable by everyone is replaced.
func TestRunWithConfigKeepsTheTokenPrivate(t *testing.T) {
	cfg, err := JoinConfigFile(opts, "/etc/kubernetes/discovery.conf", "abcdef.0123456789abcdef", false)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubernetes", "kubeadm.yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// A configuration left by an earlier version: mode 0644, an old token.
	if err := os.WriteFile(path, []byte("token: old.0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// stat and cat see the file as kubeadm does while it runs.
	out, err := runWithConfig(t.Context(), path, cfg, "sh", "-c", `stat -c '%a' "$1" && cat "$1"`, "sh", path)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	mode, content, _ := strings.Cut(string(out), "\n")
	if mode != "600" {
		t.Fatalf("the configuration has mode %s while kubeadm runs, want 600", mode)
	}
	if content != string(cfg) || !strings.Contains(content, "abcdef.0123456789abcdef") {
		t.Fatalf("kubeadm read:\n%s", content)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the configuration with the bootstrap token is still there after the join: %v", err)
	}
	// A failed join removes it too.
	if _, err := runWithConfig(t.Context(), path, cfg, "false"); err == nil {
		t.Fatal("a failing command reported success")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the configuration is still there after a failed join: %v", err)
	}
}

// A kubelet's kubeconfig that names the node's own API server (as kubeadm writes it on a control-plane node)
// is pointed at the cluster's endpoint, its credentials kept; without an endpoint, or a file, nothing changes.
func TestPointKubeconfigAt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubelet.conf")
	if err := pointKubeconfigAt(path, netip.MustParseAddrPort("127.0.0.1:7445")); err != nil {
		t.Fatalf("without a kubeconfig: %v", err)
	}
	orig := `apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster: {server: "https://10.217.0.10:6443", certificate-authority-data: "Q0E="}
contexts:
- name: system:node:cp@kubernetes
  context: {cluster: kubernetes, user: "system:node:cp"}
current-context: system:node:cp@kubernetes
users:
- name: "system:node:cp"
  user: {client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem, client-key: /var/lib/kubelet/pki/kubelet-client-current.pem}
`
	if err := os.WriteFile(path, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pointKubeconfigAt(path, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(path); string(raw) != orig {
		t.Fatalf("changed without an endpoint:\n%s", raw)
	}
	if err := pointKubeconfigAt(path, netip.MustParseAddrPort("127.0.0.1:7445")); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), "server: https://127.0.0.1:7445") || !strings.Contains(string(raw), "client-key: /var/lib/kubelet/pki/kubelet-client-current.pem") || !strings.Contains(string(raw), "certificate-authority-data: Q0E=") {
		t.Fatalf("kubeconfig pointed at the endpoint:\n%s", raw)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", info.Mode(), err)
	}
}
