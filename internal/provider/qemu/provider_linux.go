package qemu

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/daemon"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/provider/qemu/guest"
	"github.com/constellation-dev/constellation/internal/swtpm"
)

// Spec is what to boot.
type Spec struct {
	ControlPlanes, Workers int
	// Image is the bootable disk image; ImageDigest its expected digest ("sha256:<hex>"), checked before
	// any machine boots.
	Image, ImageDigest string
	// MemoryMiB is each machine's memory (0: DefaultMemoryMiB).
	MemoryMiB int
	// Accel is the machines' accelerator: AccelAuto (or ""), AccelKVM or AccelTCG.
	Accel string
	// InitSecretHash is the SHA-256 of the cluster's init secret, which the metadata service hands to every
	// node; without it, the nodes refuse to be initialised.
	InitSecretHash []byte
	// SNP, if set, launches the machines as SEV-SNP guests; the host must be able to (SNPHost).
	SNP *SNPLaunch
	// SNPMeasurements are the launch measurements the cluster's policy accepts. The provider refuses to
	// launch SEV-SNP machines whose measurement is not among them: they could never attest.
	SNPMeasurements [][]byte
}

// checkSNP checks, before anything else is created, that the host can launch the SEV-SNP machines of spec and
// that their launch measurement is one the policy accepts. It writes the UKI's kernel and initrd into dir and
// returns what QEMU boots.
func checkSNP(spec Spec, host SNPHost, dir string) (snpBoot, error) {
	if err := host.Check(); err != nil {
		return snpBoot{}, err
	}
	b, m, err := spec.SNP.prepare(dir)
	if err != nil {
		return snpBoot{}, err
	}
	for _, want := range spec.SNPMeasurements {
		if bytes.Equal(want, m[:]) {
			return b, nil
		}
	}
	return snpBoot{}, fmt.Errorf("the SEV-SNP machines would have the launch measurement %x, which the attestation policy does not accept: the firmware (%s), the UKI (%s), the vCPU type (%s) or the guest features (%#x) differ from those the configuration was generated with; run 'constellation config generate qemu --confidential sev-snp' again",
		m, spec.SNP.Firmware, spec.SNP.UKI, spec.SNP.VCPUType, spec.SNP.GuestFeatures)
}

// NodeState records a running machine.
type NodeState struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	IP      string    `json:"ip"`
	MAC     string    `json:"mac"`
	PID     int       `json:"pid"`
	Accel   string    `json:"accel"`
	Console string    `json:"console"`
	Started time.Time `json:"started"`
}

// State is the provider's record of a cluster, in <dir>/state.json.
type State struct {
	daemon.Status
	Nodes []NodeState `json:"nodes"`
}

// Phases of a cluster.
const (
	PhaseBooting  = daemon.PhaseBooting
	PhaseRunning  = daemon.PhaseRunning
	PhaseFailed   = daemon.PhaseFailed
	PhaseStopping = daemon.PhaseStopping
)

// MaxNodes bounds a cluster's machines (each gets an address of the /24 node network from .10 on).
const MaxNodes = 8

// NodeAddr is the address of the i-th machine: 10.219.0.10, .11, ...
func NodeAddr(i int) netip.Addr {
	a := guest.Gateway.As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// PodCIDR is the pod range of the i-th node: 10.220.<i>.0/24.
func PodCIDR(i int) netip.Prefix {
	a := guest.PodSubnet.Addr().As4()
	a[2] = byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

// Provider runs a cluster of QEMU machines from a directory: the CAs, the machines with their TPMs, the node
// network and the metadata service.
type Provider struct {
	Dir string
	Log *slog.Logger

	mu    sync.Mutex
	state State
	nodes []*machine
}

// StatePath is the state file of a provider directory.
func StatePath(dir string) string { return daemon.StatePath(dir) }

// NodeDir is the directory of a node's machine.
func NodeDir(dir, name string) string { return filepath.Join(dir, "nodes", name) }

// AKCAPath is the certificate of the CA that certifies the nodes' attestation keys.
func AKCAPath(dir string) string { return filepath.Join(dir, "ak-ca", "ca-cert.pem") }

// ReadState reads the state of the cluster in dir; ok is false when there is none.
func ReadState(dir string) (State, bool, error) { return daemon.ReadState[State](dir) }

// DaemonAlive reports whether the provider process of a state still runs (the provider may run in this
// process, as in tests).
func (s State) DaemonAlive() bool { return s.DaemonPID == os.Getpid() || s.Alive("qemu") }

func (p *Provider) save() error { return daemon.WriteState(p.Dir, p.state) }

func (p *Provider) progress(msg string) {
	p.Log.Info(msg)
	p.state.Progress = append(p.state.Progress, msg)
	p.save()
}

// Run boots the cluster, serves the metadata service, and tears everything down when ctx ends. It is the
// provider daemon's main loop. A machine that powers off by itself (a node that refused to boot) stays off;
// its console tells why.
func (p *Provider) Run(ctx context.Context, spec Spec) error {
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(p.Dir)
	if err != nil {
		return err
	}
	p.Dir = dir
	p.state = State{Status: daemon.Status{DaemonPID: os.Getpid(), Phase: PhaseBooting}}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return err
	}
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
	p.mu.Lock()
	p.state.Phase = PhaseRunning
	p.progress(fmt.Sprintf("machines running: %d control plane(s), %d worker(s)", spec.ControlPlanes, spec.Workers))
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
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
	}
	n := spec.ControlPlanes + spec.Workers
	if spec.ControlPlanes < 1 || n > MaxNodes {
		return teardown, fmt.Errorf("%d control plane(s) and %d worker(s): want at least one control plane and at most %d machines", spec.ControlPlanes, spec.Workers, MaxNodes)
	}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = DefaultMemoryMiB
	}
	if spec.Accel == "" {
		spec.Accel = AccelTCG
	}
	var snp *snpBoot
	if spec.SNP != nil {
		p.progress("checking that this host can launch the SEV-SNP machines")
		b, err := checkSNP(spec, SNPHost{}, filepath.Join(p.Dir, "snp"))
		if err != nil {
			return teardown, err
		}
		snp = &b
	}
	p.progress("checking the disk image")
	image, err := filepath.Abs(spec.Image)
	if err != nil {
		return teardown, err
	}
	digest, err := measuredboot.DigestFile(image)
	if err != nil {
		return teardown, err
	}
	if got := fmt.Sprintf("sha256:%x", digest); got != spec.ImageDigest {
		return teardown, fmt.Errorf("disk image %s has digest %s, the configuration expects %s; rebuild it or run 'constellation config generate qemu --force'", image, got, spec.ImageDigest)
	}
	ekCA, err := swtpm.NewCA(filepath.Join(p.Dir, "ek-ca"))
	if err != nil {
		return teardown, err
	}
	ca, err := akca.LoadOrCreate(filepath.Join(p.Dir, "ak-ca"), "Constellation QEMU provider AK CA", []*x509.Certificate{ekCA.Certificate()})
	if err != nil {
		return teardown, err
	}
	release, err := claimNetwork(p.Log)
	if err != nil {
		return teardown, err
	}
	p.progress("creating the node network " + guest.NodeNetwork.String() + " in namespace " + Netns)
	undo = append(undo, func() {
		if err := networkDown(); err != nil {
			p.Log.Warn("removing the node network", "error", err)
		}
		release()
	})
	if err := networkUp(); err != nil {
		return teardown, err
	}

	md := metadata.NewServer(ca, p.Log.With("service", "metadata"))
	if len(spec.InitSecretHash) > 0 {
		if err := md.SetInitSecretHash(spec.InitSecretHash); err != nil {
			return teardown, err
		}
	} else {
		p.Log.Warn("no init-secret hash was given: the nodes will refuse Init and Recover")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(guest.Gateway.String(), strconv.Itoa(guest.MetadataPort)))
	if err != nil {
		return teardown, fmt.Errorf("starting the metadata service: %w", err)
	}
	srv := &http.Server{Handler: md.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	undo = append(undo, func() { srv.Close() })
	p.state.MetadataURL = guest.MetadataURL

	// Every machine powers off before the network goes.
	undo = append(undo, func() {
		for i := len(p.nodes) - 1; i >= 0; i-- {
			p.nodes[i].stop()
		}
	})
	for i := range n {
		role, name := provider.RoleControlPlane, fmt.Sprintf("control-plane-%d", i)
		if i >= spec.ControlPlanes {
			role, name = provider.RoleWorker, fmt.Sprintf("worker-%d", i-spec.ControlPlanes)
		}
		addr := NodeAddr(i)
		mac, err := guest.MACForAddr(addr)
		if err != nil {
			return teardown, err
		}
		tap := fmt.Sprintf("tap%d", i)
		if err := addTap(tap); err != nil {
			return teardown, err
		}
		dir := NodeDir(p.Dir, name)
		if spec.SNP != nil {
			p.progress(fmt.Sprintf("launching %s (%s, MAC %s): SEV-SNP guest, firmware and UKI measured by the secure processor", name, addr, mac))
		} else {
			p.progress(fmt.Sprintf("booting %s (%s, MAC %s): UEFI measured boot into its TPM", name, addr, mac))
		}
		// The node asks who it is as soon as its network is up: it is registered with its TPM's EK
		// certificates (only that TPM can have an attestation key certified in its name) before it powers on.
		// Its event log is its own.
		inst := provider.Instance{Name: name, Role: role, IP: addr.String(), PodCIDR: PodCIDR(i).String()}
		m, err := startMachine(ctx, machineSpec{Dir: dir, Image: image, MAC: mac, Tap: tap, MemoryMiB: spec.MemoryMiB, Accel: spec.Accel, SNP: snp, Name: name}, ekCA,
			func(ekCerts [][]byte) { md.SetInstance(inst, nil, ekCerts) })
		if err != nil {
			return teardown, fmt.Errorf("%s: %w", name, err)
		}
		p.nodes = append(p.nodes, m)
		p.state.Nodes = append(p.state.Nodes, NodeState{Name: name, Role: role, IP: addr.String(), MAC: mac.String(), PID: m.PID(), Accel: m.Accel, Console: ConsolePath(dir), Started: time.Now()})
		p.save()
	}
	return teardown, nil
}

// Cleanup removes what a cluster described by state left behind when its provider died: machines, their
// TPMs and the node network. It is idempotent.
func Cleanup(dir string, s State) error {
	for _, n := range s.Nodes {
		if n.PID <= 0 {
			continue
		}
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(n.PID) + "/cmdline")
		if err == nil && strings.Contains(string(raw), "qemu-system") && strings.Contains(string(raw), NodeDir(dir, n.Name)) {
			syscall.Kill(n.PID, syscall.SIGKILL)
		}
	}
	// The machines' swtpm processes exit with them (--terminate).
	var errs []error
	// A live provider holding the network is another cluster's (or this one's restarted daemon): not ours.
	if !NetworkOwned() {
		if err := networkDown(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(StatePath(dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// StopDaemon stops the provider daemon of a state (which powers off its machines and removes the network),
// waiting up to wait before it kills it.
func StopDaemon(s State, wait time.Duration) error { return daemon.Stop(s.Status, s.DaemonAlive, wait) }
