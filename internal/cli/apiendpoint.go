package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// apiServerPort is the API servers' port on the control-plane nodes, which the operator reaches from the
// provider's host.
const apiServerPort = 6443

// The nodes' admin kubeconfig names the cluster's endpoint as every node sees it: its own endpoint on
// loopback (package apiproxy), which means nothing on the operator's machine. The workspace's admin kubeconfig
// names a control-plane node's API server instead: the attested first node's at init, and whichever answers
// when the one it names no longer does (selectAPIServer), so that kubectl, status and verify keep working
// while any control-plane node is down. TLS with the cluster CA of the kubeconfig authenticates whichever it
// is; every API server's certificate names its node's address.

// kubeconfigServer returns the server URL and the CA (PEM) of the kubeconfig's current cluster.
func kubeconfigServer(raw []byte) (server string, ca []byte, err error) {
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return "", nil, err
	}
	ctx, ok := kc.Contexts[kc.CurrentContext]
	if !ok || kc.Clusters[ctx.Cluster] == nil {
		return "", nil, errors.New("the kubeconfig has no current context with a cluster")
	}
	c := kc.Clusters[ctx.Cluster]
	return c.Server, c.CertificateAuthorityData, nil
}

// withServer returns the kubeconfig raw with its current cluster's server set to https://endpoint.
func withServer(raw []byte, endpoint string) ([]byte, error) {
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return nil, err
	}
	ctx, ok := kc.Contexts[kc.CurrentContext]
	if !ok || kc.Clusters[ctx.Cluster] == nil {
		return nil, errors.New("the kubeconfig has no current context with a cluster")
	}
	kc.Clusters[ctx.Cluster].Server = "https://" + endpoint
	return clientcmd.Write(*kc)
}

// adminKubeconfigFor is the admin kubeconfig the first node returned, with the API server of the node at
// nodeIP instead of the node's own endpoint.
func adminKubeconfigFor(raw []byte, nodeIP string) ([]byte, string, error) {
	endpoint := net.JoinHostPort(nodeIP, strconv.Itoa(apiServerPort))
	out, err := withServer(raw, endpoint)
	if err != nil {
		return nil, "", fmt.Errorf("the admin kubeconfig the first node returned: %w", err)
	}
	return out, endpoint, nil
}

// apiServerReady asks the API server at endpoint (host:port) GET /readyz, with TLS to it checked against ca
// (the cluster CA, PEM) for the name host.
func apiServerReady(ctx context.Context, endpoint string, ca []byte) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return errors.New("the admin kubeconfig holds no cluster CA")
	}
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+endpoint+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /readyz: %s", resp.Status)
	}
	return nil
}

// selectAPIServer keeps the workspace's admin kubeconfig (and the state file's endpoint) on an API server that
// answers: the one it names if that is ready, else the first ready one of the control-plane nodes the provider
// lists (controlPlaneIPs), which it then writes into both. It returns the endpoint in force; with none
// answering it leaves both as they are and says so.
func selectAPIServer(ctx context.Context, ws string, controlPlaneIPs []string) (string, error) {
	path := filepath.Join(ws, AdminKubeconfigFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	server, ca, err := kubeconfigServer(raw)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%s names the API server %q, not an https URL", path, server)
	}
	current := u.Host
	probe := func(endpoint string) error {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return apiServerReady(pctx, endpoint, ca)
	}
	currentErr := probe(current)
	if currentErr == nil {
		return current, nil
	}
	var candidates []string
	for _, ip := range controlPlaneIPs {
		if e := net.JoinHostPort(ip, strconv.Itoa(apiServerPort)); e != current {
			candidates = append(candidates, e)
		}
	}
	errs := make([]error, len(candidates))
	var wg sync.WaitGroup
	for i, e := range candidates {
		wg.Go(func() { errs[i] = probe(e) })
	}
	wg.Wait()
	for i, e := range candidates {
		if errs[i] != nil {
			continue
		}
		updated, err := withServer(raw, e)
		if err != nil {
			return "", err
		}
		if err := atomicfile.Write(path, updated, 0o600); err != nil {
			return "", err
		}
		if state, ok, err := loadClusterState(ws); err == nil && ok {
			state.Endpoint = e
			if out, err := yaml.Marshal(state); err == nil {
				if err := atomicfile.Write(filepath.Join(ws, StateFile), out, 0o644); err != nil {
					return "", err
				}
			}
		}
		return e, nil
	}
	return current, fmt.Errorf("no API server of the control-plane nodes answers (%s: %v)", current, currentErr)
}

// reconnectAPI moves the workspace's admin kubeconfig to a control-plane API server that answers (see
// selectAPIServer; the provider names the control-plane nodes) and returns a client of it, and the policy ports
// of the control-plane nodes' key services.
func reconnectAPI(ctx context.Context, ws string, c *config.Config) (*kubeapi.Client, []string, error) {
	nodes, _, err := runningNodes(ws, c)
	if err != nil {
		return nil, nil, err
	}
	if _, err := selectAPIServer(ctx, ws, controlPlaneIPs(nodes)); err != nil {
		return nil, nil, err
	}
	api, err := kubeapi.FromKubeconfig(filepath.Join(ws, AdminKubeconfigFile))
	if err != nil {
		return nil, nil, err
	}
	addrs, err := keyServicesOfControlPlane(ctx, api, nodes)
	if err != nil {
		return nil, nil, err
	}
	return api, addrs, nil
}

// keyServicesOfControlPlane are the policy ports of the key services of every control-plane node, each once: of
// those the provider lists among nodes, and of the control-plane Node objects of the cluster's API (the
// node-role.kubernetes.io/control-plane label, which kubeadm sets), by their InternalIP. A control-plane node
// that the provider does not list (any more, or not yet) still runs a key service that must take a change of the
// measurement policy; so if the Node objects cannot be read, or a control-plane Node has no usable InternalIP, it
// fails, saying which: a key service is never left out silently.
func keyServicesOfControlPlane(ctx context.Context, api *kubeapi.Client, nodes []clusterNode) ([]string, error) {
	var list struct {
		Items []struct {
			Metadata struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Status struct {
				Addresses []struct{ Type, Address string } `json:"addresses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := api.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing the control-plane nodes in the Kubernetes API, whose key services take the measurement policy: %w", err)
	}
	var addrs []string
	seen := map[string]bool{}
	add := func(ip netip.Addr) {
		a := netip.AddrPortFrom(ip.Unmap(), keyservice.PolicyPort).String()
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	for _, ip := range controlPlaneIPs(nodes) {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("the provider lists a control-plane node at %q, not an IP address: its key service cannot be reached", ip)
		}
		add(a)
	}
	for _, n := range list.Items {
		if _, ok := n.Metadata.Labels["node-role.kubernetes.io/control-plane"]; !ok {
			continue
		}
		found := false
		for _, a := range n.Status.Addresses {
			if a.Type != "InternalIP" {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				return nil, fmt.Errorf("control-plane node %s has the InternalIP %q in the Kubernetes API, not an IP address: its key service cannot be reached", n.Metadata.Name, a.Address)
			}
			add(ip)
			found = true
		}
		if !found {
			return nil, fmt.Errorf("control-plane node %s has no InternalIP in the Kubernetes API: its key service cannot be reached; wait until its kubelet reported its addresses, or remove the node", n.Metadata.Name)
		}
	}
	return addrs, nil
}
