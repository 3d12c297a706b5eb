package mini

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider/daemon"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/provider/mini/mirror"
	"github.com/constellation-dev/constellation/internal/swtpm"
)

// Fixed addresses of a mini cluster. One mini cluster runs per machine.
const (
	BridgeName   = "cst0"
	cgroupParent = "constellation"
	metadataPort = 8080
)

// Gateway is the provider's address on the node network.
var Gateway = netip.MustParsePrefix("10.217.0.1/24")

// Cluster address ranges: services, and one /24 of pods per node (defined with the metadata nodes read).
var (
	ServiceCIDR = metadata.ServiceCIDR
	PodSubnet   = metadata.PodSubnet
)

// PodCIDR is the pod range of the i-th node: 10.218.<i>.0/24.
func PodCIDR(i int) netip.Prefix {
	a := PodSubnet.Addr().As4()
	a[2] = byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

// hostSysctls are the host settings a kubelet changes; the provider restores them when the cluster goes.
var hostSysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward"}

// Spec is what to boot.
type Spec struct {
	ControlPlanes, Workers int
	// Image is the node image; ImageDigest its expected digest ("sha256:<hex>"), checked before any boot.
	Image, ImageDigest string
	// Cmdline is the nodes' first process, measured into PCR 8.
	Cmdline string
	// InitSecretHash is the SHA-256 of the cluster's init secret, which the CLI generated and keeps: the
	// metadata service hands it to every node, which then accepts Init and Recover only from a caller who
	// knows the secret. Without it, the nodes refuse to be initialised.
	InitSecretHash []byte
	// RegistryHostPort is the registry mirror's port on 127.0.0.1 (0: DefaultRegistryHostPort).
	RegistryHostPort int
	// ControllerCredentialHash is the SHA-256 of the controller credential, which the CLI generated and the
	// cluster keeps: the metadata service creates and deletes nodes for the cluster's upgrade controller only
	// when it presents the credential (fleet_linux.go). Without it, the provider changes no nodes on request.
	ControllerCredentialHash []byte
}

// NodeState records a running node.
type NodeState struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	IP       string `json:"ip"`
	PID      int    `json:"pid"`
	Cgroup   string `json:"cgroup"`
	HostLink string `json:"hostLink"`
	// Started is when the node's current boot began (its TPM powered on).
	Started time.Time `json:"started"`
}

// State is the provider's record of a cluster, in <dir>/state.json.
type State struct {
	daemon.Status
	Sysctls map[string]string `json:"sysctls"`
	Nodes   []NodeState       `json:"nodes"`
}

// Phases of a cluster.
const (
	PhaseBooting  = daemon.PhaseBooting
	PhaseRunning  = daemon.PhaseRunning
	PhaseFailed   = daemon.PhaseFailed
	PhaseStopping = daemon.PhaseStopping
)

// Provider runs a mini cluster from a directory: the CAs, the node TPMs and sandboxes, the metadata service.
type Provider struct {
	Dir string
	Log *slog.Logger

	mu     sync.Mutex // guards state and nodes once the cluster runs (reboots come from the control socket)
	state  State
	spec   Spec
	digest [32]byte
	net    Network
	md     *metadata.Server
	ekCA   *swtpm.CA
	nodes  []*node
	// registry is the registry mirror (registry_linux.go).
	registry *mirror.Server
	// images are the node images the provider boots nodes from on request, by digest ("sha256:<hex>"): the
	// cluster's and those the operator registered (fleet_linux.go).
	images map[string]string
	// nextSlot is where the search for a free node slot (address, pod range) starts, and named the next
	// number of a new node's name by role: a deleted node's slot and name are not reused at once.
	nextSlot int
	named    map[string]int
	// peerPolicy is the peer policy hint the metadata service hands joining nodes, kept in the fleet record
	// (fleetrecord_linux.go).
	peerPolicy []byte
}

// node is a booted node: its TPM and its sandbox.
type node struct {
	index      int
	name, role string
	addr       netip.Addr
	dir        string
	// image is the node image this node boots, digest its digest: the cluster's, unless it was added with
	// another one.
	image   string
	digest  [32]byte
	tpm     *VTPM
	sb      *Sandbox
	started time.Time
	// stopped is set while the node is powered off (Stop), until Reboot starts it again.
	stopped bool
}

// StatePath is the state file of a provider directory.
func StatePath(dir string) string { return daemon.StatePath(dir) }

// ReadState reads the state of the cluster in dir; ok is false when there is none.
func ReadState(dir string) (State, bool, error) { return daemon.ReadState[State](dir) }

// DaemonAlive reports whether the provider process of a state still runs.
func (s State) DaemonAlive() bool { return s.Alive("mini") }

func (p *Provider) save() error { return daemon.WriteState(p.Dir, p.state) }

func (p *Provider) progress(msg string) {
	p.Log.Info(msg)
	p.state.Progress = append(p.state.Progress, msg)
	p.save()
}

// Run boots the cluster, serves the metadata service, and tears everything down when ctx ends. It is the
// provider daemon's main loop.
func (p *Provider) Run(ctx context.Context, spec Spec) error {
	p.state = State{Status: daemon.Status{DaemonPID: os.Getpid(), Phase: PhaseBooting}, Sysctls: readSysctls()}
	if err := p.save(); err != nil {
		return err
	}
	teardown, err := p.boot(ctx, spec)
	if err != nil {
		p.state.Phase, p.state.Error = PhaseFailed, err.Error()
		p.save()
		teardown()
		return err
	}
	stopControl, err := p.serveControl(ctx)
	if err != nil {
		p.state.Phase, p.state.Error = PhaseFailed, err.Error()
		p.save()
		teardown()
		return err
	}
	p.mu.Lock()
	if len(spec.ControllerCredentialHash) > 0 {
		if err := p.md.SetFleet(p, spec.ControllerCredentialHash); err != nil {
			p.state.Phase, p.state.Error = PhaseFailed, err.Error()
			p.save()
			p.mu.Unlock()
			stopControl()
			teardown()
			return err
		}
	} else {
		p.Log.Warn("no controller credential hash was given: the provider creates and deletes no nodes on request")
	}
	p.state.Phase = PhaseRunning
	p.progress(fmt.Sprintf("cluster running: %d control plane(s), %d worker(s)", spec.ControlPlanes, spec.Workers))
	p.mu.Unlock()
	<-ctx.Done()
	stopControl()
	p.mu.Lock() // waits for a reboot in progress
	p.state.Phase = PhaseStopping
	p.save()
	p.mu.Unlock()
	teardown()
	return os.Remove(StatePath(p.Dir))
}

func (p *Provider) boot(ctx context.Context, spec Spec) (teardown func(), err error) {
	var undo []func()
	teardown = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		restoreSysctls(p.state.Sysctls)
	}
	p.progress("checking the node image")
	digest, err := measuredboot.DigestFile(spec.Image)
	if err != nil {
		return teardown, err
	}
	if got := fmt.Sprintf("sha256:%x", digest); got != spec.ImageDigest {
		return teardown, fmt.Errorf("node image %s has digest %s, the configuration expects %s; rebuild it or run 'constellation config generate mini --force'", spec.Image, got, spec.ImageDigest)
	}
	stopRegistry, err := p.startRegistry(spec.RegistryHostPort)
	undo = append(undo, stopRegistry)
	if err != nil {
		return teardown, err
	}
	ekCA, err := swtpm.NewCA(filepath.Join(p.Dir, "ek-ca"))
	if err != nil {
		return teardown, err
	}
	ca, err := akca.LoadOrCreate(filepath.Join(p.Dir, "ak-ca"), "Constellation mini provider AK CA", []*x509.Certificate{ekCA.Certificate()})
	if err != nil {
		return teardown, err
	}

	undo = append(undo, func() { removeCgroupTreeAll(cgroupParent) }) // runs last, after every node stopped
	n := Network{Bridge: BridgeName, Gateway: Gateway}
	p.progress("creating the node network " + Gateway.String())
	if err := n.Up(); err != nil {
		return teardown, err
	}
	undo = append(undo, func() { n.Down() })

	md := metadata.NewServer(ca, p.Log.With("service", "metadata"))
	if len(spec.InitSecretHash) > 0 {
		if err := md.SetInitSecretHash(spec.InitSecretHash); err != nil {
			return teardown, err
		}
	} else {
		p.Log.Warn("no init-secret hash was given: the nodes will refuse Init and Recover")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(Gateway.Addr().String(), strconv.Itoa(metadataPort)))
	if err != nil {
		return teardown, fmt.Errorf("starting the metadata service: %w", err)
	}
	srv := &http.Server{Handler: md.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	undo = append(undo, func() { srv.Close() })
	p.state.MetadataURL = "http://" + ln.Addr().String()
	stopNodeRegistry, err := p.serveRegistryToNodes()
	undo = append(undo, stopNodeRegistry)
	if err != nil {
		return teardown, err
	}

	p.spec, p.digest, p.net, p.md, p.ekCA = spec, digest, n, md, ekCA
	p.named, p.nextSlot = map[string]int{}, 0
	if err := p.loadImages(); err != nil {
		return teardown, err
	}
	// Every node, also those added later, stops before the network goes.
	undo = append(undo, func() {
		for i := len(p.nodes) - 1; i >= 0; i-- {
			if p.nodes[i].sb != nil {
				p.nodes[i].sb.Stop()
			}
			p.nodes[i].tpm.Shutdown()
		}
	})
	rec, err := readFleetRecord(p.Dir)
	if err != nil {
		return teardown, err
	}
	if rec != nil {
		// The nodes the cluster had when its provider stopped, not the configuration's first ones.
		p.progress(fmt.Sprintf("booting the %d nodes the cluster had (%s)", len(rec.Nodes), fleetRecordName))
		p.nextSlot = rec.NextSlot
		for role, next := range rec.Named {
			p.named[role] = next
		}
		if len(rec.PeerPolicy) > 0 {
			if err := md.SetPeerPolicy(rec.PeerPolicy); err != nil {
				return teardown, fmt.Errorf("the peer policy in %s: %w", fleetRecordName, err)
			}
			p.peerPolicy = rec.PeerPolicy
		}
		for _, n := range rec.Nodes {
			image, digest, err := p.recordedImage(n)
			if err != nil {
				return teardown, err
			}
			if _, err := p.addNode(ctx, n.Name, n.Role, image, digest, n.Slot); err != nil {
				return teardown, err
			}
		}
	} else {
		for i := range spec.ControlPlanes + spec.Workers {
			role, name := metadata.RoleControlPlane, fmt.Sprintf("control-plane-%d", i)
			if i >= spec.ControlPlanes {
				role, name = metadata.RoleWorker, fmt.Sprintf("worker-%d", i-spec.ControlPlanes)
			}
			p.named[role] = max(p.named[role], nameNumber(name, role)+1)
			if _, err := p.addNode(ctx, name, role, spec.Image, digest, -1); err != nil {
				return teardown, err
			}
		}
	}
	for _, nd := range p.nodes {
		if err := p.route(nd); err != nil {
			return teardown, err
		}
	}
	return teardown, nil
}

// addNode creates a node's TPM, boots it from image in slot (-1: a free one) and records it. Its routes are
// the caller's business. On an error, the node it returns (if not nil) is recorded half-booted: teardown or
// removeNode end it.
func (p *Provider) addNode(ctx context.Context, name, role, image string, digest [32]byte, slot int) (*node, error) {
	i := slot
	if i < 0 {
		var err error
		if i, err = p.freeSlot(); err != nil {
			return nil, err
		}
	}
	nd := &node{index: i, name: name, role: role, addr: NodeAddr(i), dir: filepath.Join(p.Dir, "nodes", name), image: image, digest: digest}
	p.progress(fmt.Sprintf("booting %s (%s): measured boot into its TPM", name, nd.addr))
	tpm, err := NewVTPM(ctx, nd.dir, p.ekCA)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	nd.tpm = tpm
	p.nodes = append(p.nodes, nd) // from here on, teardown stops it
	if err := p.startNode(ctx, nd); err != nil {
		return nd, err
	}
	p.state.Nodes = append(p.state.Nodes, nd.state())
	p.save()
	if err := p.saveFleet(); err != nil {
		return nd, err
	}
	return nd, nil
}

// freeSlot returns a slot (an address and a pod range) that no node has, the first free one from nextSlot
// on: a deleted node's slot is reused only after every other one.
func (p *Provider) freeSlot() (int, error) {
	used := map[int]bool{}
	for _, n := range p.nodes {
		used[n.index] = true
	}
	for k := range MaxNodes {
		if i := (p.nextSlot + k) % MaxNodes; !used[i] {
			p.nextSlot = i + 1
			return i, nil
		}
	}
	return 0, fmt.Errorf("the cluster has %d nodes, the most a mini cluster can have", len(p.nodes))
}

// newName names a new node of role: control-plane-N or worker-N with an N that no node of this provider had.
func (p *Provider) newName(role string) string {
	next := p.named[role]
	for _, n := range p.nodes {
		if n.role == role {
			next = max(next, nameNumber(n.name, role)+1)
		}
	}
	p.named[role] = next + 1
	return rolePrefix(role) + strconv.Itoa(next)
}

func rolePrefix(role string) string {
	if role == metadata.RoleControlPlane {
		return "control-plane-"
	}
	return "worker-"
}

// nameNumber is the N of a node named control-plane-N or worker-N after its role; -1 for another name.
func nameNumber(name, role string) int {
	if s, ok := strings.CutPrefix(name, rolePrefix(role)); ok {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			return n
		}
	}
	return -1
}

// MaxNodes bounds a cluster's nodes: each gets a /24 of pods in the /16 and an address of the /24 node network.
const MaxNodes = 200

// AddWorker boots a new worker into the running cluster, as a cloud's scaling does; it then joins by itself
// through the join service. image, if not empty, is another node image to boot it from (a node the join
// service must refuse, unless its measurements match). It returns the node's name.
func (p *Provider) AddWorker(ctx context.Context, image string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state.Phase != PhaseRunning {
		return "", fmt.Errorf("the cluster is %s, not running", p.state.Phase)
	}
	digest := p.digest
	if image == "" {
		image = p.spec.Image
	} else {
		var err error
		if image, err = filepath.Abs(image); err != nil {
			return "", err
		}
		if digest, err = measuredboot.DigestFile(image); err != nil {
			return "", fmt.Errorf("reading the node image: %w", err)
		}
	}
	nd, err := p.bootNode(ctx, metadata.RoleWorker, image, digest)
	if err != nil {
		return "", err
	}
	return nd.name, nil
}

// bootNode boots a new node of role into the running cluster from image, whose digest the caller checked, and
// routes between it and the other nodes. A node that fails to boot is removed again. p.mu is held.
func (p *Provider) bootNode(ctx context.Context, role, image string, digest [32]byte) (*node, error) {
	if len(p.nodes) >= MaxNodes {
		return nil, fmt.Errorf("the cluster has %d nodes, the most a mini cluster can have", len(p.nodes))
	}
	nd, err := p.addNode(ctx, p.newName(role), role, image, digest, -1)
	if err == nil {
		err = p.routeNew(nd)
	}
	if err != nil {
		if nd != nil {
			if rerr := p.removeNode(nd); rerr != nil {
				p.Log.Error("removing a node that failed to boot", "node", nd.name, "error", rerr.Error())
			}
		}
		return nil, err
	}
	return nd, nil
}

// routeNew adds a new node's routes, and routes to its pods in the other running nodes.
func (p *Provider) routeNew(nd *node) error {
	if err := p.route(nd); err != nil {
		return err
	}
	for _, other := range p.nodes {
		if other != nd && other.sb != nil && !other.stopped {
			if err := other.sb.IPInNode("route", "add", PodCIDR(nd.index).String(), "via", nd.addr.String()); err != nil {
				if died := other.died(); died != nil {
					return died
				}
				return fmt.Errorf("routing for %s: %w", other.name, err)
			}
		}
	}
	return nil
}

// NetworkInUse reports whether a mini cluster's node network exists on this machine.
func NetworkInUse() bool { return linkExists(BridgeName) }

// NodeAddr is the address of the i-th node: 10.217.0.10, .11, ...
func NodeAddr(i int) netip.Addr {
	a := Gateway.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// Cleanup removes what a cluster described by state left behind when its provider died: node processes,
// cgroups, links, the bridge, and the host sysctls the kubelet changed. It is idempotent.
func Cleanup(dir string, s State) error {
	var errs []error
	for _, n := range s.Nodes {
		sb := &Sandbox{Name: n.Name, PID: n.PID, Cgroup: n.Cgroup, HostLink: n.HostLink}
		if err := sb.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	// TPMs of nodes whose provider died: stop their swtpm processes cleanly.
	entries, _ := os.ReadDir(filepath.Join(dir, "nodes"))
	for _, e := range entries {
		stopStaleTPM(filepath.Join(dir, "nodes", e.Name(), "tpm"))
	}
	removeCgroupTreeAll(cgroupParent)
	if err := (Network{Bridge: BridgeName}).Down(); err != nil {
		errs = append(errs, err)
	}
	restoreSysctls(s.Sysctls)
	if err := os.Remove(StatePath(dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stateDiskName is a node's state disk image in its directory.
const stateDiskName = "state-disk.img"

// StateDisks returns the state disk images of the nodes in a provider directory.
func StateDisks(dir string) []string {
	disks, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", stateDiskName))
	return disks
}

// RemoveStateDisks deletes the state disks of the nodes in a provider directory, whose nodes must be stopped
// ([Cleanup]): nodes booted from this directory again get new, empty disks, as new VMs would. What was on the
// disks is gone, and so is the record of the nodes the cluster had (the next cluster boots the configuration's).
// The nodes' TPMs stay.
func RemoveStateDisks(dir string) error {
	var errs []error
	for _, d := range StateDisks(dir) {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// The nodes recorded with those disks go with them: the next cluster starts from its configuration.
	if err := os.Remove(filepath.Join(dir, fleetRecordName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Remove deletes a provider directory whose cluster is down ([Cleanup]): the CAs, the nodes' TPMs and state
// disks, the provider's log. It refuses while anything is mounted below the directory, rather than delete
// through a mount.
func Remove(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// The mount table lists resolved paths: compare with the directory's, or a workspace reached through a
	// symbolic link would hide what is mounted below it.
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("reading the mounts before removing %s: %w", abs, err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(unescapeMountPath(f[4])+"/", abs+"/") {
			return fmt.Errorf("not removing %s: %s is still mounted; unmount it and run this again", abs, unescapeMountPath(f[4]))
		}
	}
	return os.RemoveAll(abs)
}

// unescapeMountPath undoes the octal escapes (\040 for a space) of a path in /proc/self/mountinfo.
func unescapeMountPath(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// stopStaleTPM stops a swtpm left running on state dir by a dead provider.
func stopStaleTPM(state string) {
	swtpm.StopOrphan(state)
}

func removeCgroupTreeAll(rel string) {
	for _, h := range append(cgroupHierarchies, "unified") {
		removeCgroupTree(filepath.Join(cgroupRoot, h, rel))
	}
}

func readSysctls() map[string]string {
	out := map[string]string{}
	for _, k := range hostSysctls {
		if raw, err := os.ReadFile("/proc/sys/" + k); err == nil {
			out[k] = strings.TrimSpace(string(raw))
		}
	}
	return out
}

func restoreSysctls(saved map[string]string) {
	for k, v := range saved {
		os.WriteFile("/proc/sys/"+k, []byte(v), 0o644)
	}
}

// StopDaemon asks the provider daemon of a state to tear its cluster down and waits until it is gone.
func StopDaemon(s State, wait time.Duration) error { return daemon.Stop(s.Status, s.DaemonAlive, wait) }

// StateDiskSize is the size of a node's state disk (a sparse file: it takes only what the node writes).
const StateDiskSize = 8 << 30

// attachStateDisk returns the node's state disk image in its directory, creating an empty one the first
// time, as a cloud attaches a new blank disk. The node formats and encrypts it itself.
func attachStateDisk(nodeDir string) (string, error) {
	path := filepath.Join(nodeDir, stateDiskName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("creating the state disk: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if fi.Size() == 0 {
		if err := f.Truncate(StateDiskSize); err != nil {
			return "", fmt.Errorf("creating the state disk: %w", err)
		}
	}
	return path, nil
}

// startNode powers the node on: a measured boot into its TPM (which resets its PCRs), its record in the
// metadata service with the boot's event log, and a fresh sandbox from the image with its state disk.
func (p *Provider) startNode(ctx context.Context, nd *node) error {
	nd.started = time.Now()
	log, err := nd.tpm.Boot(ctx, measuredboot.Boot{ImageDigest: nd.digest, Cmdline: p.spec.Cmdline})
	if err != nil {
		return fmt.Errorf("%s: %w", nd.name, err)
	}
	p.md.SetInstance(metadata.Instance{Name: nd.name, Role: nd.role, IP: nd.addr.String(), PodCIDR: PodCIDR(nd.index).String()}, log, nd.tpm.EKCertificates())
	sandboxDir := filepath.Join(nd.dir, "sandbox")
	os.RemoveAll(sandboxDir) // every boot starts from the image; what a node keeps is on its state disk
	disk, err := attachStateDisk(nd.dir)
	if err != nil {
		return fmt.Errorf("%s: %w", nd.name, err)
	}
	loaded, err := prepareLoadedImages(p.Dir)
	if err != nil {
		return err
	}
	sb, err := StartSandbox(p.net, bootSpec{
		Name: nd.name, Hostname: nd.name, Image: nd.image, StateDir: sandboxDir, StateDisk: disk, LoadedImages: loaded,
		TPMSocket: nd.tpm.SocketPath(), Cmdline: strings.Fields(p.spec.Cmdline), Metadata: p.state.MetadataURL,
	}, nd.addr, fmt.Sprintf("cst-%d", nd.index), cgroupParent)
	if err != nil {
		return fmt.Errorf("%s: %w", nd.name, err)
	}
	nd.sb = sb
	// A node whose first process ends by itself has crashed: the operator reads here how it ended.
	go func() {
		<-sb.exited
		if !sb.stopping.Load() {
			p.Log.Error("node stopped by itself", "node", nd.name, "pid", sb.PID, "how", sb.exitErr.Error(), "console", filepath.Join(sb.StateDir, "console.log"))
		}
	}()
	return nil
}

// route adds the node network's routes in the node, as a cloud's route table: services on the local link,
// each other node's pods via that node. There is no default route.
func (p *Provider) route(nd *node) error {
	routes := [][]string{{ServiceCIDR.String(), "dev", "eth0"}}
	for _, other := range p.nodes {
		if other != nd {
			routes = append(routes, []string{PodCIDR(other.index).String(), "via", other.addr.String()})
		}
	}
	for _, r := range routes {
		if err := nd.sb.IPInNode(append([]string{"route", "add"}, r...)...); err != nil {
			if died := nd.died(); died != nil {
				return died
			}
			return fmt.Errorf("routing for %s: %w", nd.name, err)
		}
	}
	return nil
}

// died returns, if the node's first process has ended, an error that says how and shows the end of the
// node's console.
func (nd *node) died() error {
	ended := nd.sb.Exited()
	if ended == nil {
		return nil
	}
	console := filepath.Join(nd.sb.StateDir, "console.log")
	raw, _ := os.ReadFile(console)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	tail := strings.Join(lines[max(0, len(lines)-10):], "\n")
	if tail == "" {
		tail = "(nothing)"
	}
	return fmt.Errorf("node %s stopped while booting (%v); its console %s ends with:\n%s", nd.name, ended, console, tail)
}

func (nd *node) state() NodeState {
	return NodeState{Name: nd.name, Role: nd.role, IP: nd.addr.String(), PID: nd.sb.PID, Cgroup: nd.sb.Cgroup, HostLink: nd.sb.HostLink, Started: nd.started}
}

// Reboot power-cycles a node, as a cloud's reset does: every process of the node ends, its TPM restarts
// (its PCRs, the cluster ID in PCR 15 included, are reset), and it boots the image again with the same state
// disk.
func (p *Provider) Reboot(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state.Phase != PhaseRunning {
		return fmt.Errorf("the cluster is %s, not running", p.state.Phase)
	}
	var nd *node
	for _, n := range p.nodes {
		if n.name == name {
			nd = n
		}
	}
	if nd == nil {
		names := make([]string, len(p.nodes))
		for i, n := range p.nodes {
			names[i] = n.name
		}
		return fmt.Errorf("no node %q; nodes: %s", name, strings.Join(names, ", "))
	}
	// The TPM will measure the digest the node was created with: boot it only if the image still has it.
	if err := checkImage(nd.image, nd.digest); err != nil {
		p.Log.Error("a node's image changed: refusing to boot it", "node", name, "error", err.Error())
		return fmt.Errorf("rebooting %s: %w", name, err)
	}
	p.Log.Info("rebooting node", "node", name)
	if err := nd.sb.Stop(); err != nil {
		return fmt.Errorf("stopping %s: %w", name, err)
	}
	if err := p.startNode(ctx, nd); err != nil {
		return err
	}
	nd.stopped = false
	if err := p.route(nd); err != nil {
		return err
	}
	for i := range p.state.Nodes {
		if p.state.Nodes[i].Name == nd.name {
			p.state.Nodes[i] = nd.state()
		}
	}
	p.state.Progress = append(p.state.Progress, name+" rebooted")
	return p.save()
}

// Stop powers a node off, as a cloud's stop does: every process of the node ends; its state disk and TPM stay,
// and the metadata service keeps listing it (a stopped instance is still the cluster's). Reboot starts it
// again.
func (p *Provider) Stop(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state.Phase != PhaseRunning {
		return fmt.Errorf("the cluster is %s, not running", p.state.Phase)
	}
	for _, nd := range p.nodes {
		if nd.name != name {
			continue
		}
		p.Log.Info("stopping node", "node", name)
		if err := nd.sb.Stop(); err != nil {
			return fmt.Errorf("stopping %s: %w", name, err)
		}
		nd.stopped = true
		p.state.Progress = append(p.state.Progress, name+" stopped")
		return p.save()
	}
	return fmt.Errorf("no node %q", name)
}

// ControlSocket is the provider's control socket in its directory: requests from the CLI (reboots).
func ControlSocket(dir string) string { return filepath.Join(dir, "provider.sock") }

// serveControl answers POST /v1/workers, /v1/peer-policy, /v1/images, /v1/node-images, /v1/nodes/{name}/reboot and
// /v1/nodes/{name}/stop on the control socket, owner-only.
func (p *Provider) serveControl(ctx context.Context) (func(), error) {
	path := ControlSocket(p.Dir)
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workers", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Image string `json:"image"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "request: "+err.Error(), http.StatusBadRequest)
			return
		}
		name, err := p.AddWorker(r.Context(), req.Image)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"name": name})
	})
	mux.HandleFunc("POST /v1/peer-policy", func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(io.LimitReader(r.Body, policyupdate.MaxSize+1))
		if err != nil {
			http.Error(w, "request: "+err.Error(), http.StatusBadRequest)
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if err := p.md.SetPeerPolicy(raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// A restarted provider hands joining nodes the same hint (an upgrade's window may outlive it).
		p.peerPolicy = nil
		if len(bytes.TrimSpace(raw)) > 0 {
			p.peerPolicy = bytes.Clone(raw)
		}
		if err := p.saveFleet(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/images", p.serveLoad)
	mux.HandleFunc("POST /v1/node-images", p.serveRegisterImage)
	mux.HandleFunc("POST /v1/nodes/{name}/reboot", func(w http.ResponseWriter, r *http.Request) {
		if err := p.Reboot(r.Context(), r.PathValue("name")); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/nodes/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		if err := p.Stop(r.PathValue("name")); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go srv.Serve(ln)
	return func() { srv.Close(); os.Remove(path) }, nil
}

// AddWorker asks the provider daemon of the cluster in dir to boot a new worker (from image, if not empty)
// and returns its name once it has booted.
func AddWorker(ctx context.Context, dir, image string) (string, error) {
	body, err := json.Marshal(map[string]string{"image": image})
	if err != nil {
		return "", err
	}
	var out struct{ Name string }
	if err := control(ctx, dir, "/v1/workers", body, &out); err != nil {
		return "", err
	}
	return out.Name, nil
}

// control sends a request to the provider daemon's control socket in dir.
func control(ctx context.Context, dir, path string, body []byte, out any) error {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ControlSocket(dir))
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://provider"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("asking the provider: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("the provider refused: %s", strings.TrimSpace(string(msg)))
	}
	if out != nil {
		return json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(out)
	}
	return nil
}

// SetPeerPolicy asks the provider daemon of the cluster in dir to hand joining nodes the peer policy raw (the
// JSON form of a policyupdate.PeerHint: the measurement sets of the peers they trust besides those of their own
// image); nil or empty removes it.
func SetPeerPolicy(ctx context.Context, dir string, raw []byte) error {
	return control(ctx, dir, "/v1/peer-policy", raw, nil)
}

// StopNode asks the provider daemon of the cluster in dir to power a node off; RebootNode starts it again.
func StopNode(ctx context.Context, dir, name string) error {
	return control(ctx, dir, "/v1/nodes/"+url.PathEscape(name)+"/stop", nil, nil)
}

// RebootNode asks the provider daemon of the cluster in dir to reboot a node, and waits until it has booted.
func RebootNode(ctx context.Context, dir, name string) error {
	return control(ctx, dir, "/v1/nodes/"+url.PathEscape(name)+"/reboot", nil, nil)
}
