package config

import (
	"fmt"
	"strings"

	"github.com/constellation-dev/constellation/internal/nodedns"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// egressProblems checks the registry mirrors, their credentials and the nodes' DNS servers. Credentials and DNS
// servers make sense only where the nodes have egress (qemu); the mini provider's nodes reach nothing but the
// provider's own mirror on this machine, by design, and have no resolver. No problem names a credential.
func (c *Config) egressProblems() []string {
	var p []string
	lines := func(prefix string, err error) {
		for _, line := range strings.Split(err.Error(), "\n") {
			p = append(p, prefix+line)
		}
	}
	if err := registrymirror.Validate(c.Mirrors()); err != nil {
		lines("registryMirrors: ", err)
	}
	mini := c.Provider.Mini != nil && c.Provider.QEMU == nil
	for i, m := range c.RegistryMirrors {
		if m.Credentials == nil {
			continue
		}
		if mini {
			p = append(p, fmt.Sprintf("registryMirrors[%d].credentials: the mini provider's nodes have no egress and reach only the provider's own mirror on this machine, which takes no credentials; remove them (credentials are for providers whose nodes have egress, such as qemu)", i))
		}
	}
	if !mini {
		if err := registrymirror.ValidateCredentials(c.Mirrors(), c.MirrorCredentials()); err != nil {
			lines("registryMirrors: ", err)
		}
	}
	if c.Nodes != nil {
		if mini && len(c.Nodes.DNS) > 0 {
			p = append(p, "nodes.dns: the mini provider's nodes have no egress and no resolver, by design (they never ask the host's); remove nodes.dns (DNS servers are for providers whose nodes have egress, such as qemu)")
		} else if err := nodedns.Validate(c.Nodes.DNS); err != nil {
			lines("nodes.dns: ", err)
		}
	}
	return p
}
