package mini

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/constellation-dev/constellation/internal/provider/mini/mirror"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// The provider's registry mirror: the nodes pull from it on the node network; on this machine, users push to it
// on loopback.
const (
	// RegistryPort is the mirror's port on the node network (at Gateway).
	RegistryPort = 5000
	// DefaultRegistryHostPort is its port on 127.0.0.1 unless the configuration sets provider.mini.registryPort.
	DefaultRegistryHostPort = 5001
)

// RegistryEndpoint is the mirror as the nodes reach it: http://10.217.0.1:5000.
func RegistryEndpoint() string {
	return "http://" + net.JoinHostPort(Gateway.Addr().String(), strconv.Itoa(RegistryPort))
}

// MirroredRegistries are the public registries whose images the nodes of a new configuration pull from the
// provider's mirror (after a user pushed them there as localhost:<port>/<registry>/<repository>). registry.k8s.io
// is not among them: the nodes' Kubernetes images come from the node image, and are never to be replaced by what
// the host serves under the same tag.
var MirroredRegistries = []string{"docker.io", "ghcr.io", "quay.io"}

// DefaultMirrors is the registry mirror list of a new configuration: localhost:<hostPort> (images pushed to the
// mirror from this machine, pulled by pods under the same name) and MirroredRegistries, all from the provider's
// mirror.
func DefaultMirrors(hostPort int) []registrymirror.Mirror {
	ms := []registrymirror.Mirror{{Registry: "localhost:" + strconv.Itoa(hostPort), Endpoints: []string{RegistryEndpoint()}}}
	for _, r := range MirroredRegistries {
		ms = append(ms, registrymirror.Mirror{Registry: r, Endpoints: []string{RegistryEndpoint()}})
	}
	return ms
}

// registryDir is the mirror's storage in the provider directory: it lives and goes with the cluster (mini down
// removes it), and survives a restart of the provider, as for a recovery.
func registryDir(dir string) string { return filepath.Join(dir, "registry") }

// startRegistry opens the mirror's storage and serves pushes on 127.0.0.1:hostPort (0: the default). The node
// network's address comes later, with the network (serveRegistryToNodes).
func (p *Provider) startRegistry(hostPort int) (func(), error) {
	if hostPort == 0 {
		hostPort = DefaultRegistryHostPort
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return func() {}, fmt.Errorf("the registry mirror cannot listen on %s (%w): free that port, or choose another with provider.mini.registryPort in constellation-conf.yaml "+
			"and name it in registryMirrors as localhost:<port> (a new configuration: 'constellation config generate mini --force --registry-port <port>')", addr, err)
	}
	srv, err := mirror.New(registryDir(p.Dir), p.Log.With("service", "registry"))
	if err != nil {
		ln.Close()
		return func() {}, err
	}
	p.registry = srv
	hs := &http.Server{Handler: srv.PushHandler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	p.progress(fmt.Sprintf("registry mirror: push to localhost:%d from this machine", hostPort))
	return func() { hs.Close() }, nil
}

// serveRegistryToNodes serves the mirror, for pulls only, on the node network at Gateway:RegistryPort.
func (p *Provider) serveRegistryToNodes() (func(), error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(Gateway.Addr().String(), strconv.Itoa(RegistryPort)))
	if err != nil {
		return func() {}, fmt.Errorf("starting the registry mirror on the node network: %w", err)
	}
	hs := &http.Server{Handler: p.registry.PullHandler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	p.progress("registry mirror: the nodes pull from " + RegistryEndpoint())
	return func() { hs.Close() }, nil
}
