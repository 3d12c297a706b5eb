package bootstrapper

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/nodedns"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// mirrorsFile keeps the cluster's registry mirrors, as the node got them at init or join, on its encrypted state
// disk: a control-plane node that is recovered configures its container runtime with them again (Recover
// carries none). They never come from the provider's metadata, which the host writes.
func (s *stateDisk) mirrorsFile() string {
	return filepath.Join(s.targets["var"], "lib", "constellation", "registry-mirrors.json")
}

// keepMirrors writes the registry mirrors to the unlocked state disk; a node without one keeps nothing.
func keepMirrors(disk *stateDisk, ms []registrymirror.Mirror) error {
	if disk == nil {
		return nil
	}
	raw, err := registrymirror.Marshal(ms)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(disk.mirrorsFile()), 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(disk.mirrorsFile(), raw, 0o600); err != nil {
		return fmt.Errorf("keeping the registry mirrors on the state disk: %w", err)
	}
	return nil
}

// keptMirrors reads the registry mirrors from the unlocked state disk: none if the node kept none. A file that is
// not a valid list is an error: the runtime is never configured from it.
func keptMirrors(disk *stateDisk) ([]registrymirror.Mirror, error) {
	raw, err := os.ReadFile(disk.mirrorsFile())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the registry mirrors from the state disk: %w", err)
	}
	ms, err := registrymirror.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("the registry mirrors on the state disk %s: %w", disk.mirrorsFile(), err)
	}
	return ms, nil
}

// Egress is what the cluster configuration says about the nodes' way out of the cluster: the registry mirrors,
// their credentials (a secret) and the DNS servers. It reaches the first node in the attested init request and
// every other node in the join service's attested answer, never from the provider; a node keeps it on its
// encrypted state disk for a recovery.
type Egress struct {
	Mirrors     []registrymirror.Mirror
	Credentials []registrymirror.Credentials
	DNS         []string
}

// egressFromWire validates the egress of an init request or a join answer: nothing of it is acted on unless all
// of it is valid. Errors never hold a credential.
func egressFromWire[M registrymirror.Wire, C registrymirror.CredentialsWire](mirrors []M, creds []C, dns []string) (Egress, error) {
	ms, err := registrymirror.FromWire(mirrors)
	if err != nil {
		return Egress{}, fmt.Errorf("registry mirrors: %w", err)
	}
	cs, err := registrymirror.CredentialsFromWire(ms, creds)
	if err != nil {
		return Egress{}, fmt.Errorf("registry credentials: %w", err)
	}
	if err := nodedns.Validate(dns); err != nil {
		return Egress{}, fmt.Errorf("DNS servers: %w", err)
	}
	return Egress{Mirrors: ms, Credentials: cs, DNS: append([]string(nil), dns...)}, nil
}

// configure makes the node's container runtime and resolver follow eg (before the runtime starts).
func (eg Egress) configure(k8s Kubernetes) error {
	if err := k8s.ConfigureRegistryMirrors(eg.Mirrors, eg.Credentials); err != nil {
		return fmt.Errorf("configuring the registry mirrors: %w", err)
	}
	if err := k8s.ConfigureDNS(eg.DNS); err != nil {
		return fmt.Errorf("configuring the DNS servers: %w", err)
	}
	return nil
}

// credentialsFile and dnsFile keep the rest of the egress next to the mirrors on the state disk; the credentials
// readable by root only.
func (s *stateDisk) credentialsFile() string {
	return filepath.Join(s.targets["var"], "lib", "constellation", "registry-credentials.json")
}

func (s *stateDisk) dnsFile() string {
	return filepath.Join(s.targets["var"], "lib", "constellation", "dns-servers.json")
}

// keepEgress writes the egress to the unlocked state disk; a node without one keeps nothing.
func keepEgress(disk *stateDisk, eg Egress) error {
	if disk == nil {
		return nil
	}
	if err := keepMirrors(disk, eg.Mirrors); err != nil {
		return err
	}
	creds, err := registrymirror.MarshalCredentials(eg.Mirrors, eg.Credentials)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(disk.credentialsFile(), creds, 0o600); err != nil {
		return fmt.Errorf("keeping the registry credentials on the state disk: %w", err)
	}
	dns, err := nodedns.Marshal(eg.DNS)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(disk.dnsFile(), dns, 0o600); err != nil {
		return fmt.Errorf("keeping the DNS servers on the state disk: %w", err)
	}
	return nil
}

// keptEgress reads the egress from the unlocked state disk: what a file that is not there holds is none (a node
// of an earlier version kept mirrors only). A file that is not valid is an error: nothing is configured from it.
func keptEgress(disk *stateDisk) (Egress, error) {
	ms, err := keptMirrors(disk)
	if err != nil {
		return Egress{}, err
	}
	eg := Egress{Mirrors: ms}
	if raw, err := readKept(disk.credentialsFile()); err != nil {
		return Egress{}, err
	} else if eg.Credentials, err = registrymirror.ParseCredentials(raw, ms); err != nil {
		return Egress{}, fmt.Errorf("the registry credentials on the state disk %s: %w", disk.credentialsFile(), err)
	}
	if raw, err := readKept(disk.dnsFile()); err != nil {
		return Egress{}, err
	} else if eg.DNS, err = nodedns.Parse(raw); err != nil {
		return Egress{}, fmt.Errorf("the DNS servers on the state disk %s: %w", disk.dnsFile(), err)
	}
	return eg, nil
}

// readKept reads a file the node kept on its state disk: nil if there is none.
func readKept(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s from the state disk: %w", filepath.Base(path), err)
	}
	return raw, nil
}
