package mini

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/provider/providers"
	"github.com/constellation-dev/constellation/internal/swtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// lockedBuffer collects the provider's log lines from the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fakeSquashfs writes a file that starts like a squashfs file system (nodes are not booted from it here).
func fakeSquashfs(t *testing.T, path string) string {
	t.Helper()
	raw := make([]byte, 64<<10)
	rand.Read(raw)
	copy(raw, "hsqs")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type fleetProvider struct {
	p          *Provider
	url        string // the metadata service
	credential []byte
	log        *lockedBuffer
}

// newFleetProvider sets up a running provider as boot leaves it, without node sandboxes: control-plane-0 (at
// 127.0.0.1, the address the test's requests come from), worker-0 and worker-1, each with its own swtpm
// (powered on, measured) and state disk, listed by the metadata service, which serves the provider's fleet
// behind the controller credential.
func newFleetProvider(t *testing.T) *fleetProvider {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm not installed; run scripts/setup.sh")
	}
	ctx := context.Background()
	// A short directory: the TPMs' sockets are below it, and a socket's path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "fleet")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ekCA, err := swtpm.NewCA(filepath.Join(dir, "ek-ca"))
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := tpmtest.NewCACert("mini provider AK CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := akca.New(key, cert, []*x509.Certificate{ekCA.Certificate()})
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	img := fakeSquashfs(t, filepath.Join(t.TempDir(), "cluster.squashfs"))
	digest, err := measuredboot.DigestFile(img)
	if err != nil {
		t.Fatal(err)
	}
	p := &Provider{Dir: dir, Log: log, spec: Spec{Image: img, Cmdline: "/usr/bin/bootstrapper --provider=mini"}, digest: digest,
		md: metadata.NewServer(ca, log.With("service", "metadata")), ekCA: ekCA, named: map[string]int{}, nextSlot: 3}
	if err := p.loadImages(); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"control-plane-0", "worker-0", "worker-1"} {
		role := metadata.RoleWorker
		if i == 0 {
			role = metadata.RoleControlPlane
		}
		nd := &node{index: i, name: name, role: role, addr: NodeAddr(i), dir: filepath.Join(dir, "nodes", name), image: img, digest: digest}
		if i == 0 {
			nd.addr = netip.MustParseAddr("127.0.0.1")
		}
		if nd.tpm, err = NewVTPM(ctx, nd.dir, ekCA); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.tpm.Shutdown() })
		eventLog, err := nd.tpm.Boot(ctx, measuredboot.Boot{ImageDigest: digest, Cmdline: p.spec.Cmdline})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := attachStateDisk(nd.dir); err != nil {
			t.Fatal(err)
		}
		p.md.SetInstance(metadata.Instance{Name: name, Role: role, IP: nd.addr.String(), PodCIDR: PodCIDR(i).String()}, eventLog, nd.tpm.EKCertificates())
		p.nodes = append(p.nodes, nd)
		p.state.Nodes = append(p.state.Nodes, NodeState{Name: name, Role: role, IP: nd.addr.String()})
	}
	p.state.Phase = PhaseRunning
	if err := p.save(); err != nil {
		t.Fatal(err)
	}
	cred := make([]byte, provider.FleetCredentialSize)
	rand.Read(cred)
	hash := sha256.Sum256(cred)
	if err := p.md.SetFleet(p, hash[:]); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.md.Handler())
	t.Cleanup(srv.Close)
	return &fleetProvider{p: p, url: srv.URL, credential: cred, log: logs}
}

// snapshot is what a fleet request may change: the nodes the metadata service lists, the provider's nodes
// and state file, the node directories and which of their TPMs run.
func (f *fleetProvider) snapshot(t *testing.T) string {
	t.Helper()
	list, err := metadata.NewClient(f.url).Instances(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, inst := range list {
		fmt.Fprintf(&b, "listed %s %s %s\n", inst.Name, inst.Role, inst.IP)
	}
	f.p.mu.Lock()
	for _, nd := range f.p.nodes {
		fmt.Fprintf(&b, "node %s tpm running %v\n", nd.name, nd.tpm.SocketPath() != "")
	}
	f.p.mu.Unlock()
	state, _, err := ReadState(f.p.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range state.Nodes {
		fmt.Fprintf(&b, "state %s\n", n.Name)
	}
	dirs, _ := filepath.Glob(filepath.Join(f.p.Dir, "nodes", "*", "*"))
	for _, d := range dirs {
		fmt.Fprintf(&b, "file %s\n", strings.TrimPrefix(d, f.p.Dir))
	}
	return b.String()
}

func (f *fleetProvider) send(t *testing.T, method, path, body string, auth ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// The attack, against the provider itself: create and delete nodes through its metadata service without the
// controller credential, from the address of a control-plane node (a node's own identity toward its
// metadata), with a wrong credential, or with the credential's SHA-256 (what the provider holds). Nothing is
// created or deleted: the same nodes are listed, run their TPMs and keep their state disks.
func TestFleetProviderRefusesWithoutTheCredential(t *testing.T) {
	f := newFleetProvider(t)
	before := f.snapshot(t)
	for _, want := range []string{"listed worker-0 worker", "node worker-0 tpm running true", "state worker-0", "file /nodes/worker-0/state-disk.img"} {
		if !strings.Contains(before, want) {
			t.Fatalf("the fixture lacks %q:\n%s", want, before)
		}
	}
	hash := sha256.Sum256(f.credential)
	other := make([]byte, provider.FleetCredentialSize)
	rand.Read(other)
	create := `{"role":"worker","imageDigest":"sha256:` + hex.EncodeToString(f.p.digest[:]) + `"}`
	for name, auth := range map[string][]string{
		"as control-plane-0, no credential": nil,
		"a wrong credential":                {"Bearer " + hex.EncodeToString(other)},
		"the credential's hash":             {"Bearer " + hex.EncodeToString(hash[:])},
	} {
		if code, body := f.send(t, http.MethodDelete, "/v1/fleet/nodes/worker-0", "", auth...); code != http.StatusUnauthorized {
			t.Errorf("%s: delete: %d %s", name, code, body)
		}
		if code, body := f.send(t, http.MethodPost, "/v1/fleet/nodes", create, auth...); code != http.StatusUnauthorized {
			t.Errorf("%s: create: %d %s", name, code, body)
		}
	}
	if after := f.snapshot(t); after != before {
		t.Fatalf("refused requests changed the cluster:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if strings.Contains(f.log.String(), hex.EncodeToString(f.credential)) || strings.Contains(f.log.String(), hex.EncodeToString(other)) {
		t.Fatalf("a credential is in the provider's log:\n%s", f.log.String())
	}
}

// The controller, with the credential: deleting a worker removes it everywhere (metadata, routes' owner list,
// state, TPM, state disk); unknown names and the last control-plane node are refused and change nothing.
func TestFleetProviderDelete(t *testing.T) {
	f := newFleetProvider(t)
	ctx := context.Background()
	fleet, err := providers.Fleet(metadata.ProviderName, f.url, f.credential)
	if err != nil {
		t.Fatal(err)
	}
	before := f.snapshot(t)
	for name, tc := range map[string]struct{ node, want string }{
		"unknown":            {"worker-9", `no node "worker-9"; nodes: control-plane-0, worker-0, worker-1`},
		"last control plane": {"control-plane-0", "last running control-plane node"},
	} {
		if err := fleet.DeleteNode(ctx, tc.node); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: DeleteNode(%s) = %v, want %q", name, tc.node, err, tc.want)
		}
	}
	if after := f.snapshot(t); after != before {
		t.Fatalf("refused deletes changed the cluster:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	f.p.mu.Lock()
	worker := f.p.nodes[1]
	f.p.mu.Unlock()
	if err := fleet.DeleteNode(ctx, "worker-0"); err != nil {
		t.Fatal(err)
	}
	after := f.snapshot(t)
	if strings.Contains(after, "worker-0") || !strings.Contains(after, "listed worker-1") || !strings.Contains(after, "listed control-plane-0") {
		t.Fatalf("after deleting worker-0:\n%s", after)
	}
	if _, err := os.Stat(worker.dir); !os.IsNotExist(err) {
		t.Fatalf("worker-0's directory (state disk, TPM) is still there: %v", err)
	}
	if worker.tpm.SocketPath() != "" {
		t.Fatal("worker-0's TPM still runs")
	}
	if err := fleet.DeleteNode(ctx, "worker-0"); err == nil || !strings.Contains(err.Error(), "no node") {
		t.Fatalf("deleting worker-0 again = %v", err)
	}
	// A new worker gets a name and a slot no node had.
	f.p.mu.Lock()
	name, slot, err := f.p.newName(metadata.RoleWorker), 0, error(nil)
	slot, err = f.p.freeSlot()
	f.p.mu.Unlock()
	if name != "worker-2" || slot != 3 || err != nil {
		t.Fatalf("the next worker: %s in slot %d (%v), want worker-2 in slot 3", name, slot, err)
	}
	// With a second control-plane node running, control-plane-0 may go; a stopped one does not count.
	f.p.mu.Lock()
	f.p.nodes = append(f.p.nodes, &node{index: 5, name: "control-plane-1", role: metadata.RoleControlPlane, addr: NodeAddr(5), dir: filepath.Join(f.p.Dir, "nodes", "control-plane-1"), stopped: true})
	f.p.mu.Unlock()
	if err := fleet.DeleteNode(ctx, "control-plane-0"); err == nil || !strings.Contains(err.Error(), "last running control-plane") {
		t.Fatalf("deleting control-plane-0 with the other one stopped = %v", err)
	}
	f.p.mu.Lock()
	f.p.nodes[len(f.p.nodes)-1].stopped = false
	f.p.mu.Unlock()
	if err := fleet.DeleteNode(ctx, "control-plane-0"); err != nil {
		t.Fatalf("deleting control-plane-0 with control-plane-1 running: %v", err)
	}
	if strings.Contains(f.log.String(), hex.EncodeToString(f.credential)) {
		t.Fatalf("the credential is in the provider's log:\n%s", f.log.String())
	}
}

// The attack: have the provider boot an image the operator never registered, or one that changed after it was
// registered (the cluster's own image, or a registered copy, altered on the host's disk). Each is refused
// before anything boots: no node is added.
func TestFleetProviderCreateRefusesUnknownAndTamperedImages(t *testing.T) {
	f := newFleetProvider(t)
	ctx := context.Background()
	fleet, err := providers.Fleet(metadata.ProviderName, f.url, f.credential)
	if err != nil {
		t.Fatal(err)
	}
	src := fakeSquashfs(t, filepath.Join(t.TempDir(), "next.squashfs"))
	registered, err := f.p.RegisterImage(src)
	if err != nil {
		t.Fatal(err)
	}
	before := f.snapshot(t)
	unknown := sha256.Sum256([]byte("an image the operator never registered"))
	if _, err := fleet.CreateNode(ctx, provider.RoleWorker, "sha256:"+hex.EncodeToString(unknown[:])); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("an unregistered image: %v", err)
	}
	// The registered copy altered on disk.
	f.p.mu.Lock()
	stored := f.p.images[registered]
	f.p.mu.Unlock()
	if err := os.Chmod(stored, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := os.OpenFile(stored, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd.WriteAt([]byte("X"), 1000)
	fd.Close()
	if _, err := fleet.CreateNode(ctx, provider.RoleWorker, registered); err == nil || !strings.Contains(err.Error(), "changed since it was registered") {
		t.Fatalf("a tampered registered image: %v", err)
	}
	// The cluster's own image altered where the configuration names it.
	clusterDigest := fmt.Sprintf("sha256:%x", f.p.digest)
	fd, err = os.OpenFile(f.p.spec.Image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd.WriteAt([]byte("X"), 2000)
	fd.Close()
	if _, err := fleet.CreateNode(ctx, provider.RoleControlPlane, clusterDigest); err == nil || !strings.Contains(err.Error(), "changed since it was registered") {
		t.Fatalf("the tampered cluster image: %v", err)
	}
	// Nor does a node created from it boot again: the TPM would measure the digest it was created with.
	if err := f.p.Reboot(ctx, "worker-0"); err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("rebooting a node whose image changed: %v", err)
	}
	if after := f.snapshot(t); after != before {
		t.Fatalf("refused creates changed the cluster:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if !strings.Contains(f.log.String(), "a registered node image changed") {
		t.Fatalf("the provider's log does not name the tampered image:\n%s", f.log.String())
	}
}

// Registering copies the image into the provider's directory and names it by the digest of the copy: a change
// of the user's file afterwards does not change what the provider boots; the registration survives a restart
// of the provider; what is not a node image is refused.
func TestRegisterImage(t *testing.T) {
	p := &Provider{Dir: t.TempDir(), Log: slog.New(slog.DiscardHandler)}
	src := fakeSquashfs(t, filepath.Join(t.TempDir(), "next.squashfs"))
	raw, _ := os.ReadFile(src)
	want := fmt.Sprintf("sha256:%x", sha256.Sum256(raw))
	digest, err := p.RegisterImage(src)
	if err != nil || digest != want {
		t.Fatalf("RegisterImage = %s, %v; want %s", digest, err, want)
	}
	stored := p.images[digest]
	if info, err := os.Stat(stored); err != nil || info.Mode().Perm() != 0o400 || !strings.HasPrefix(stored, NodeImagesDir(p.Dir)) {
		t.Fatalf("the stored copy %s: %v %v", stored, info.Mode(), err)
	}
	if info, _ := os.Stat(NodeImagesDir(p.Dir)); info.Mode().Perm() != 0o700 {
		t.Fatalf("the node images directory has mode %v", info.Mode().Perm())
	}
	os.WriteFile(src, []byte("hsqs changed"), 0o644)
	if d, err := measuredboot.DigestFile(stored); err != nil || fmt.Sprintf("sha256:%x", d) != want {
		t.Fatalf("the stored copy changed with the source: %x, %v", d, err)
	}
	// Registering the same bytes again gives the same digest, and one copy.
	os.WriteFile(src, raw, 0o644)
	if again, err := p.RegisterImage(src); err != nil || again != digest {
		t.Fatalf("registering again = %s, %v", again, err)
	}
	if entries, _ := os.ReadDir(NodeImagesDir(p.Dir)); len(entries) != 1 {
		t.Fatalf("the node images directory holds %d entries", len(entries))
	}
	// A restarted provider knows it.
	q := &Provider{Dir: p.Dir, Log: p.Log, spec: Spec{Image: "/cluster.squashfs"}}
	if err := q.loadImages(); err != nil || q.images[digest] != stored || len(q.images) != 2 {
		t.Fatalf("after a restart: %v, %v", q.images, err)
	}
	dir := t.TempDir()
	text := filepath.Join(dir, "text")
	os.WriteFile(text, []byte("not an image"), 0o644)
	for name, tc := range map[string]struct{ path, want string }{
		"relative":    {"next.squashfs", "not an absolute path"},
		"missing":     {filepath.Join(dir, "missing"), "no such file"},
		"a directory": {dir, "not a regular file"},
		"no squashfs": {text, "not a node image"},
	} {
		if _, err := p.RegisterImage(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	if entries, _ := os.ReadDir(NodeImagesDir(p.Dir)); len(entries) != 1 || !slices.ContainsFunc(entries, func(e os.DirEntry) bool { return !strings.HasPrefix(e.Name(), ".") }) {
		t.Fatalf("refused registrations left files: %v", entries)
	}
}
