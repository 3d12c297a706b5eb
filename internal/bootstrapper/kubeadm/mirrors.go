package kubeadm

import (
	"strings"

	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// RegistryHostsDir is containerd's registry configuration directory (config_path of the CRI image service): one
// <registry>/hosts.toml per mirrored registry.
const RegistryHostsDir = "/etc/containerd/certs.d"

// ConfigureRegistryMirrors writes containerd's hosts.toml for each mirrored registry and removes those of
// registries no longer mirrored. containerd reads the directory at every pull, so this may run before or after
// containerd starts. The list comes from the cluster configuration (the init request, the join service, or the
// state disk for a recovered node), never from the provider.
func (d *Driver) ConfigureRegistryMirrors(ms []registrymirror.Mirror) error {
	if err := registrymirror.WriteHostsDir(d.registryHostsDir(), ms); err != nil {
		return err
	}
	names := make([]string, 0, len(ms))
	for _, m := range ms {
		names = append(names, m.Registry+" -> "+strings.Join(m.Endpoints, ","))
	}
	d.logf("registry mirrors configured: %s", strings.Join(names, "; "))
	return nil
}

// registryHostsDir is RegistryHostsDir, or a test's directory.
func (d *Driver) registryHostsDir() string {
	if d.hostsDir != "" {
		return d.hostsDir
	}
	return RegistryHostsDir
}
