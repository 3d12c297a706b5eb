package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// registryHostPort is the loopback port where the mini provider's registry mirror takes pushes.
func registryHostPort(c *config.Config) int {
	if c.Provider.Mini != nil && c.Provider.Mini.RegistryPort != 0 {
		return c.Provider.Mini.RegistryPort
	}
	return mini.DefaultRegistryHostPort
}

// registryPortFlag is the loopback port 'config generate mini' configures: its --registry-port, where the command
// has it, or the default.
func registryPortFlag(cmd *cobra.Command) int {
	if port, err := cmd.Flags().GetInt("registry-port"); err == nil && port != 0 {
		return port
	}
	return mini.DefaultRegistryHostPort
}

// printRegistryMirrors writes the registry mirrors of the workspace's configuration, as the nodes got them at
// init: which registry is pulled from where (and which with credentials, never the credentials themselves), how
// images reach the provider's mirror from this machine, and the nodes' DNS servers if there are any.
func printRegistryMirrors(out io.Writer, ws string) {
	c, err := config.Load(filepath.Join(ws, config.FileName))
	if err != nil {
		return // status has said what is wrong with the configuration
	}
	fmt.Fprintln(out)
	if dns := c.DNSServers(); len(dns) > 0 {
		fmt.Fprintf(out, "node DNS servers: %s (the nodes' resolver and CoreDNS's upstream)\n", strings.Join(dns, ", "))
	}
	if len(c.RegistryMirrors) == 0 {
		fmt.Fprintln(out, "registry mirrors: none (the nodes run only the images of the node image)")
		return
	}
	lines := mirrorLines(c.Mirrors(), registryHostPort(c))
	if cs := c.MirrorCredentials(); len(cs) > 0 {
		var names []string
		for _, cred := range cs {
			names = append(names, cred.Registry)
		}
		lines += "\nregistry mirrors with credentials: " + strings.Join(names, ", ")
	}
	fmt.Fprintln(out, lines)
	fmt.Fprintln(out, "  containerd on the nodes verifies every layer and manifest by its digest; a tag means what the mirror says: pull by digest (image@sha256:...) where that matters")
}

// mirrorLines describes each mirror, one line each: the registry, its endpoints, and for the provider's mirror
// the name to push under on this machine.
func mirrorLines(ms []registrymirror.Mirror, hostPort int) string {
	local := "localhost:" + strconv.Itoa(hostPort)
	var lines []string
	for _, m := range ms {
		line := fmt.Sprintf("registry mirror: %s -> %s", m.Registry, strings.Join(m.Endpoints, ", "))
		if slices.Contains(m.Endpoints, mini.RegistryEndpoint()) {
			if m.Registry == local {
				line += fmt.Sprintf(" (pushed from the host as %s/<repository>)", local)
			} else {
				line += fmt.Sprintf(" (pushed from the host as %s/%s/<repository>)", local, m.Registry)
			}
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}
