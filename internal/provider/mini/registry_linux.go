package mini

import (
	"net"
	"strconv"

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
