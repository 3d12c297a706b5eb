package bootstrapper

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/atomicfile"
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
