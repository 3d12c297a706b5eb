package mini

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// nodeInitEnv names the environment variable that makes a binary of this project act as a node's init stage
// (the "hypervisor" side of a node boot). Its value is the path of the node's boot spec.
const nodeInitEnv = "CONSTELLATION_MINI_NODE_INIT"

// bootSpec is what the init stage needs to boot a node. It is written by the provider.
type bootSpec struct {
	Name      string   `json:"name"`
	Image     string   `json:"image"`     // squashfs node image on the host
	StateDir  string   `json:"stateDir"`  // host directory for the node's writable layer
	TPMSocket string   `json:"tpmSocket"` // host path of the node's TPM socket; only the socket enters the node
	Cmdline   []string `json:"cmdline"`   // the node's first process
	Metadata  string   `json:"metadata"`  // metadata service URL, passed to the node
	Hostname  string   `json:"hostname"`
	StateDisk string   `json:"stateDisk,omitempty"` // host path of the node's state disk image (a sparse file)
	// LoadedImages is the host directory of loaded image archives, shown read-only at NodeLoadedImages.
	LoadedImages string `json:"loadedImages,omitempty"`
}

// NodeTPMSocket is where a node finds its TPM.
const NodeTPMSocket = "/run/constellation/tpm.sock"

// NodeStateDisk is where a node finds its state disk, as a cloud VM finds an attached disk.
const NodeStateDisk = "/run/constellation/state-disk"

// MaybeRunNodeInit runs the node init stage and never returns if this process was started as one; otherwise
// it returns at once. Call it first thing in main (and in TestMain of tests that boot nodes).
func MaybeRunNodeInit() {
	specPath := os.Getenv(nodeInitEnv)
	if specPath == "" {
		return
	}
	if err := nodeInit(specPath); err != nil {
		fmt.Fprintf(os.Stderr, "node init: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0) // not reached: nodeInit execs the node's first process
}

// nodeInit runs in the node's fresh mount, network, UTS and IPC namespaces. It waits until the provider has
// wired the network (fd 3 closes), assembles the root filesystem from the read-only image and a writable
// layer, switches to it and executes the node's first process.
func nodeInit(specPath string) error {
	raw, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var s bootSpec
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("boot spec: %w", err)
	}
	// Wait for the provider: it closes its end of the pipe when the network is ready.
	ready := os.NewFile(3, "ready")
	buf := make([]byte, 1)
	ready.Read(buf)
	ready.Close()

	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("setting hostname: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	lower := filepath.Join(s.StateDir, "lower")
	upper := filepath.Join(s.StateDir, "upper")
	work := filepath.Join(s.StateDir, "work")
	root := filepath.Join(s.StateDir, "root")
	for _, d := range []string{lower, upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The image, read-only, through a loop device that is released with the mount (autoclear).
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", "loop,ro", s.Image, lower).CombinedOutput(); err != nil {
		return fmt.Errorf("mounting node image: %v: %s", err, out)
	}
	if err := unix.Mount("overlay", root, "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)); err != nil {
		return fmt.Errorf("mounting root overlay: %w", err)
	}
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/sys/fs/cgroup", "/sys/fs/cgroup", "", unix.MS_BIND | unix.MS_REC, ""},
		{"/dev", "/dev", "", unix.MS_BIND | unix.MS_REC, ""},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		// Not on the overlay root (containerd's overlay snapshots cannot live on an overlay filesystem) and
		// in memory: until the node has unlocked its encrypted state disk and mounted it here, nothing it
		// writes to /var reaches a disk of the host.
		{"tmpfs", "/var", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=755"},
	}
	for _, m := range mounts {
		dst := root + m.dst
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, dst, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s: %w", m.dst, err)
		}
	}
	// Only the TPM's socket enters the node, never the TPM's state (which holds its seeds).
	if err := os.MkdirAll(filepath.Dir(root+NodeTPMSocket), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(root+NodeTPMSocket, nil, 0o600); err != nil {
		return err
	}
	if err := unix.Mount(s.TPMSocket, root+NodeTPMSocket, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("attaching the TPM: %w", err)
	}
	if s.StateDisk != "" {
		if err := os.WriteFile(root+NodeStateDisk, nil, 0o600); err != nil {
			return err
		}
		if err := unix.Mount(s.StateDisk, root+NodeStateDisk, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("attaching the state disk: %w", err)
		}
	}
	if s.LoadedImages != "" {
		if err := bindReadOnly(s.LoadedImages, root+NodeLoadedImages); err != nil {
			return fmt.Errorf("showing the loaded images: %w", err)
		}
	}
	old := filepath.Join(root, ".oldroot")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("switching to the node root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host root: %w", err)
	}
	os.Remove("/.oldroot")
	// Nodes route pod traffic: forwarding on, in the node's own network namespace only.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling forwarding: %w", err)
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"CONSTELLATION_METADATA=" + s.Metadata,
		"CONSTELLATION_TPM=" + NodeTPMSocket,
	}
	if s.StateDisk != "" {
		env = append(env, "CONSTELLATION_STATE_DISK="+NodeStateDisk)
	}
	return syscall.Exec(s.Cmdline[0], s.Cmdline, env)
}
