package kubeadm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/nodedns"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// RegistryHostsDir is containerd's registry configuration directory (config_path of the CRI image service): one
// <registry>/hosts.toml per mirrored registry.
const RegistryHostsDir = "/etc/containerd/certs.d"

// ResolvConf is the node's resolver configuration, which the kubelet hands the pods of dnsPolicy Default (CoreDNS
// among them). The node image's is empty: no resolver.
const ResolvConf = "/etc/resolv.conf"

// ConfigureRegistryMirrors writes containerd's hosts.toml for each mirrored registry and removes those of
// registries no longer mirrored, and keeps the mirrors' credentials for containerd's configuration, which
// PrepareRuntime writes readable by root only (containerd reads its credentials at start). containerd reads the
// hosts directory at every pull. The list and the credentials come from the cluster configuration (the init
// request, the join service, or the state disk for a recovered node), never from the provider. Only registry
// names are logged, never a credential.
func (d *Driver) ConfigureRegistryMirrors(ms []registrymirror.Mirror, cs []registrymirror.Credentials) error {
	auth, err := registrymirror.ContainerdAuthTOML(ms, cs)
	if err != nil {
		return fmt.Errorf("registry credentials: %w", err)
	}
	if err := registrymirror.WriteHostsDir(d.registryHostsDir(), ms); err != nil {
		return err
	}
	d.registryAuth = auth
	names := make([]string, 0, len(ms))
	for _, m := range ms {
		names = append(names, m.Registry+" -> "+strings.Join(m.Endpoints, ","))
	}
	withCreds := make([]string, 0, len(cs))
	for _, c := range cs {
		withCreds = append(withCreds, c.Registry)
	}
	d.logf("registry mirrors configured: %s; with credentials: %s", strings.Join(names, "; "), strings.Join(withCreds, ", "))
	return nil
}

// ConfigureDNS makes servers the node's DNS servers (its resolv.conf) and, on the first control-plane node, the
// upstream of CoreDNS (Init). Without servers nothing changes: the node and CoreDNS have no resolver at all. The
// list comes from the cluster configuration, never from the provider.
func (d *Driver) ConfigureDNS(servers []string) error {
	if err := nodedns.Validate(servers); err != nil {
		return err
	}
	d.dns = append([]string(nil), servers...)
	if len(servers) == 0 {
		return nil
	}
	raw, err := nodedns.ResolvConf(servers)
	if err != nil {
		return err
	}
	path := d.resolvConf()
	// Renamed over whatever is there: a link is replaced, never followed.
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(path, raw, 0o644); err != nil {
		return fmt.Errorf("writing the node's DNS servers: %w", err)
	}
	d.logf("DNS servers configured: %s", strings.Join(servers, ", "))
	return nil
}

// registryHostsDir is RegistryHostsDir, or a test's directory.
func (d *Driver) registryHostsDir() string {
	if d.hostsDir != "" {
		return d.hostsDir
	}
	return RegistryHostsDir
}

// resolvConf is ResolvConf, or a test's file.
func (d *Driver) resolvConf() string {
	if d.resolvConfPath != "" {
		return d.resolvConfPath
	}
	return ResolvConf
}
