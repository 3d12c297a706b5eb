package bootstrapper

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/diskmapper"
)

// stateMount is where the node mounts its state disk; the state directory on it becomes /var.
const stateMount = "/run/constellation/state"

// stateDisk is the node's state disk before and after it is unlocked.
type stateDisk struct {
	disk *diskmapper.StateDisk
	uuid string
	log  *slog.Logger
	// mountpoint is where the disk is mounted, targets where its state directories appear (stateDirs on a
	// node; elsewhere in tests).
	mountpoint string
	targets    map[string]string
}

// prepareStateDisk finds the state disk, formatting a new disk first (its first boot).
func prepareStateDisk(ctx context.Context, device string, log *slog.Logger) (*stateDisk, error) {
	d, err := diskmapper.Prepare(ctx, device, log)
	if err != nil {
		return nil, err
	}
	return &stateDisk{disk: d, uuid: d.UUID, log: log, mountpoint: stateMount, targets: stateDirs}, nil
}

// stateDirs are the node's directories that live on the encrypted state disk: everything containerd, the
// kubelet and etcd store, and the cluster's certificates and keys.
var stateDirs = map[string]string{"var": "/var", "kubernetes": "/etc/kubernetes"}

// stateDirFlags are the mount flags of the state directories: never device nodes or set-user-ID programs
// (diskmapper.StateMountFlags); /etc/kubernetes holds configuration, certificates and static pod manifests
// only, so nothing on it runs either. /var cannot be noexec: containerd's snapshots are there.
var stateDirFlags = map[string]uintptr{"var": diskmapper.StateMountFlags, "kubernetes": diskmapper.StateMountFlags | unix.MS_NOEXEC}

// unlock opens the state disk with its key and mounts its encrypted state directories at /var and
// /etc/kubernetes, before anything (containerd, the kubelet, kubeadm, etcd) writes there.
func (s *stateDisk) unlock(key []byte) error {
	d, err := s.disk.Unlock(context.Background(), key, s.mountpoint)
	if err != nil {
		return fmt.Errorf("unlocking the state disk: %w", err)
	}
	for name, target := range s.targets {
		dir := filepath.Join(d.StateDir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(dir, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounting the state disk's %s at %s: %w", name, target, err)
		}
		// A bind mount takes its flags from the mount it binds; set them explicitly all the same.
		if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|stateDirFlags[name], ""); err != nil {
			return fmt.Errorf("setting the mount flags of %s: %w", target, err)
		}
	}
	s.log.Info("state disk unlocked; /var and /etc/kubernetes are on it", "disk", s.uuid, "encryption", s.disk.Backend)
	return nil
}

// hasState reports whether the state disk holds the state of a node that was initialised or joined before.
func (s *stateDisk) hasState() (bool, error) {
	return s.disk.HasState(s.mountpoint)
}

// policyFile keeps the cluster's measurement policy (a variant with a vTPM) on a control-plane node's encrypted
// state disk, so that after a recovery its key service checks callers against the same policy.
func (s *stateDisk) policyFile() string {
	return filepath.Join(s.targets["var"], "lib", "constellation", "measurements.json")
}

// attestationFile keeps, next to policyFile and instead of it, the cluster's attestation policy in package
// validators' wire form on a control-plane node of a variant without a vTPM (qemu-sev-snp): the policy its key
// service checks callers against after a recovery. A disk holds one of the two, never both.
func (s *stateDisk) attestationFile() string {
	return filepath.Join(s.targets["var"], "lib", "constellation", "attestation.json")
}
