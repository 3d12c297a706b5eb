// Package kubeapitest runs a real Kubernetes API server for tests: etcd and kube-apiserver as `make
// node-image` builds them (from _out/components/bin and _out/kubernetes/bin of the repository), with the Node
// and RBAC authorizers the cluster uses, on loopback ports. Clients authenticate with certificates the test's
// own CA issues, for any user and groups (a node is "system:node:<name>" in "system:nodes").
package kubeapitest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/constellation-dev/constellation/internal/cadir"
	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// Server is a running API server.
type Server struct {
	// URL is the API server's address (https://127.0.0.1:PORT).
	URL string
	// CAPEM is the CA that signs the server's certificate and every client certificate.
	CAPEM []byte
	// APIServerPID is the process ID of kube-apiserver (for CPU figures).
	APIServerPID int

	dir        string
	namespaces []string // created by New
	caKey      *ecdsa.PrivateKey
	caCert     *x509.Certificate
}

// Binaries returns the paths of etcd and kube-apiserver, or an error that says how to build them.
func Binaries() (etcd, apiserver string, err error) {
	root, err := repoRoot()
	if err != nil {
		return "", "", err
	}
	etcd = filepath.Join(root, "_out", "components", "bin", "etcd")
	apiserver = filepath.Join(root, "_out", "kubernetes", "bin", "kube-apiserver")
	for _, p := range []string{etcd, apiserver} {
		if _, err := os.Stat(p); err != nil {
			return "", "", fmt.Errorf("%s is missing: build it with `make kubernetes components`", p)
		}
	}
	return etcd, apiserver, nil
}

// repoRoot is the directory of the repository's go.mod, found upwards from the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Start runs etcd and kube-apiserver until the test ends and returns when the API server is ready. It skips
// the test if the binaries are not built.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, _, err := Binaries(); err != nil {
		t.Skip(err)
	}
	s, stop, err := Run(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return s
}

// Run runs etcd and kube-apiserver, keeping their data and logs in dir, and returns when the API server is
// ready; stop ends both.
func Run(dir string) (s *Server, stop func(), err error) {
	etcdBin, apiserverBin, err := Binaries()
	if err != nil {
		return nil, nil, err
	}
	s = &Server{dir: dir}
	s.caKey, s.caCert, err = cadir.Generate("kubeapitest CA", time.Now().Add(24*time.Hour))
	if err != nil {
		return nil, nil, err
	}
	s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.caCert.Raw})
	files := map[string][]byte{"ca.pem": s.CAPEM}
	var certPEM, keyPEM []byte
	if certPEM, keyPEM, err = s.issue("127.0.0.1", nil, true); err != nil {
		return nil, nil, err
	}
	files["server.pem"], files["server-key.pem"] = certPEM, keyPEM
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, nil, err
	}
	files["sa-key.pem"] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER})
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, nil, err
		}
	}
	path := func(name string) string { return filepath.Join(dir, name) }

	ports, err := freePorts(3)
	if err != nil {
		return nil, nil, err
	}
	etcdClient := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	ctx, cancel := context.WithCancel(context.Background())
	etcd := exec.CommandContext(ctx, etcdBin, "--data-dir", path("etcd"),
		"--listen-client-urls", etcdClient, "--advertise-client-urls", etcdClient,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(ports[1]),
		"--initial-advertise-peer-urls", "http://127.0.0.1:"+strconv.Itoa(ports[1]),
		"--initial-cluster", "default=http://127.0.0.1:"+strconv.Itoa(ports[1]),
		"--unsafe-no-fsync", "--log-level", "warn")
	apiserver := exec.CommandContext(ctx, apiserverBin,
		"--etcd-servers", etcdClient,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
		"--secure-port", strconv.Itoa(ports[2]),
		"--tls-cert-file", path("server.pem"), "--tls-private-key-file", path("server-key.pem"),
		"--client-ca-file", path("ca.pem"),
		"--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", path("sa-key.pem"), "--service-account-signing-key-file", path("sa-key.pem"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--enable-priority-and-fairness=false",
		"--cert-dir", path("certs"))
	// Both die with this process, even when it is killed (a test's timeout, an interrupted benchmark).
	for _, c := range []*exec.Cmd{etcd, apiserver} {
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	var logs []*os.File
	for _, c := range []struct {
		cmd  *exec.Cmd
		name string
	}{{etcd, "etcd.log"}, {apiserver, "kube-apiserver.log"}} {
		f, err := os.Create(path(c.name))
		if err != nil {
			cancel()
			return nil, nil, err
		}
		logs = append(logs, f)
		c.cmd.Stdout, c.cmd.Stderr = f, f
	}
	// Each process is waited for exactly once, by its own goroutine.
	apiserverExited, etcdExited := make(chan error, 1), make(chan error, 1)
	started := []chan error{}
	stop = func() {
		cancel()
		for _, c := range started {
			err := <-c
			c <- err
		}
		for _, f := range logs {
			f.Close()
		}
	}
	for _, c := range []struct {
		cmd    *exec.Cmd
		exited chan error
	}{{etcd, etcdExited}, {apiserver, apiserverExited}} {
		if err := c.cmd.Start(); err != nil {
			stop()
			return nil, nil, fmt.Errorf("starting %s: %w", filepath.Base(c.cmd.Path), err)
		}
		started = append(started, c.exited)
		go func() { c.exited <- c.cmd.Wait() }()
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	s.APIServerPID = apiserver.Process.Pid

	admin, err := s.HTTPClient("kubeapitest-admin", "system:masters")
	if err != nil {
		stop()
		return nil, nil, err
	}
	for {
		resp, err := admin.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, stop, nil
			}
		}
		select {
		case err := <-apiserverExited:
			apiserverExited <- err
			stop()
			return nil, nil, fmt.Errorf("kube-apiserver exited: %v\n%s", err, tail(path("kube-apiserver.log")))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tail is the end of a log file, for failures.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 30 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// issue makes a certificate signed by the CA: a server certificate for the IP address, or a client
// certificate for the user and groups.
func (s *Server) issue(name string, groups []string, server bool) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: groups},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP(name)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, key.Public(), s.caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// RESTConfig is a client configuration for the user in the groups.
func (s *Server) RESTConfig(user string, groups ...string) (*rest.Config, error) {
	certPEM, keyPEM, err := s.issue(user, groups, false)
	if err != nil {
		return nil, err
	}
	return &rest.Config{Host: s.URL, TLSClientConfig: rest.TLSClientConfig{CAData: s.CAPEM, CertData: certPEM, KeyData: keyPEM}}, nil
}

// HTTPClient is an HTTP client for the user in the groups.
func (s *Server) HTTPClient(user string, groups ...string) (*http.Client, error) {
	cfg, err := s.RESTConfig(user, groups...)
	if err != nil {
		return nil, err
	}
	return rest.HTTPClientFor(cfg)
}

// Kubeconfig writes a kubeconfig for the user in the groups, with its certificate and key in files next to
// it (as the kubelet's kubeconfig refers to its rotated certificate), and returns its path.
func (s *Server) Kubeconfig(t testing.TB, user string, groups ...string) string {
	t.Helper()
	path, err := s.WriteKubeconfig(t.TempDir(), user, groups...)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteKubeconfig is [Server.Kubeconfig] into dir.
func (s *Server) WriteKubeconfig(dir, user string, groups ...string) (string, error) {
	certPEM, keyPEM, err := s.issue(user, groups, false)
	if err != nil {
		return "", err
	}
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	for p, data := range map[string][]byte{ca: s.CAPEM, cert: certPEM, key: keyPEM} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return "", err
		}
	}
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, s.URL, ca, user, cert, key, user)
	path := filepath.Join(dir, "kubeconfig")
	return path, os.WriteFile(path, []byte(kubeconfig), 0o600)
}

// freePorts asks the kernel for n unused loopback ports.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// New starts an API server that ends with the test, with the namespaces created.
func New(t testing.TB, namespaces ...string) *Server {
	t.Helper()
	s := Start(t)
	s.namespaces = namespaces
	admin := s.Client(t)
	for _, ns := range namespaces {
		obj := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}
		if err := admin.Do(t.Context(), http.MethodPost, "/api/v1/namespaces", "", obj, nil); err != nil {
			t.Fatalf("creating namespace %s: %v", ns, err)
		}
	}
	return s
}

// Client returns a client of the server as a cluster administrator (system:masters).
func (s *Server) Client(t testing.TB) *kubeapi.Client {
	t.Helper()
	c, err := kubeapi.FromKubeconfig(s.Kubeconfig(t, "kubeapitest-admin", "system:masters"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ConfigMap is the part of a ConfigMap tests look at.
type ConfigMap struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Immutable bool              `json:"immutable"`
	Data      map[string]string `json:"data"`
}

// ConfigMap reads a ConfigMap as the administrator.
func (s *Server) ConfigMap(t testing.TB, namespace, name string) (ConfigMap, bool) {
	t.Helper()
	var cm ConfigMap
	err := s.Client(t).Do(t.Context(), http.MethodGet, "/api/v1/namespaces/"+namespace+"/configmaps/"+name, "", nil, &cm)
	if kubeapi.IsStatus(err, http.StatusNotFound) {
		return ConfigMap{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return cm, true
}

// Put stores a ConfigMap as an administrator would, replacing one of the same name (immutable or not).
func (s *Server) Put(t testing.TB, namespace, name string, data map[string]string) {
	t.Helper()
	admin := s.Client(t)
	path := "/api/v1/namespaces/" + namespace + "/configmaps"
	if err := admin.Do(t.Context(), http.MethodDelete, path+"/"+name, "", nil, nil); err != nil && !kubeapi.IsStatus(err, http.StatusNotFound) {
		t.Fatal(err)
	}
	obj := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": name, "namespace": namespace}, "data": data}
	if err := admin.Do(t.Context(), http.MethodPost, path, "", obj, nil); err != nil {
		t.Fatal(err)
	}
}

// Creates counts the ConfigMaps in the namespaces New created (nothing but the test's clients creates any
// there: no controller runs).
func (s *Server) Creates(t testing.TB) int {
	t.Helper()
	n := 0
	for _, ns := range s.namespaces {
		var list struct{ Items []json.RawMessage }
		if err := s.Client(t).Do(t.Context(), http.MethodGet, "/api/v1/namespaces/"+ns+"/configmaps", "", nil, &list); err != nil {
			t.Fatal(err)
		}
		n += len(list.Items)
	}
	return n
}

// collections are the API paths of the kinds of objects this project's manifests hold; namespaced ones take
// the object's namespace.
var collections = map[string]struct {
	path       string
	namespaced bool
}{
	"Namespace":                        {"/api/v1/namespaces", false},
	"ServiceAccount":                   {"/api/v1/namespaces/%s/serviceaccounts", true},
	"ConfigMap":                        {"/api/v1/namespaces/%s/configmaps", true},
	"ClusterRole":                      {"/apis/rbac.authorization.k8s.io/v1/clusterroles", false},
	"ClusterRoleBinding":               {"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", false},
	"Role":                             {"/apis/rbac.authorization.k8s.io/v1/namespaces/%s/roles", true},
	"RoleBinding":                      {"/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings", true},
	"ValidatingAdmissionPolicy":        {"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", false},
	"ValidatingAdmissionPolicyBinding": {"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings", false},
}

// Create creates, with client, the objects of a JSON list as the project's Manifests functions write them (a
// kind this package does not know is an error).
func Create(ctx context.Context, client *kubeapi.Client, list []byte) error {
	var l struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(list, &l); err != nil {
		return err
	}
	for _, item := range l.Items {
		kind, _ := item["kind"].(string)
		c, ok := collections[kind]
		if !ok {
			return fmt.Errorf("creating a %q: not a kind this test server knows", kind)
		}
		path := c.path
		if c.namespaced {
			meta, _ := item["metadata"].(map[string]any)
			ns, _ := meta["namespace"].(string)
			path = fmt.Sprintf(c.path, ns)
		}
		if err := client.Do(ctx, http.MethodPost, path, "", item, nil); err != nil {
			return fmt.Errorf("creating %s: %w", kind, err)
		}
	}
	return nil
}
