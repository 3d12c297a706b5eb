package bootstrapper

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/joinservice"
)

// StateDiskIDFile records the identity of a node's state on its state disk (until the disk mapper gives the
// state disk a filesystem UUID of its own, this file stands for it).
const StateDiskIDFile = "/var/lib/constellation/state-disk-uuid"

// StateDiskUUID returns the UUID recorded at path, creating a random one the first time.
func StateDiskUUID(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err == nil {
		uuid := strings.TrimSpace(string(raw))
		if err := joinservice.CheckDiskUUID(uuid); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		return uuid, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	return uuid, atomicfile.Write(path, []byte(uuid+"\n"), 0o600)
}
