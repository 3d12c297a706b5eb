package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

// fakeClock is a clock that moves only when the waiter sleeps.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(_ context.Context, d time.Duration) error {
	c.t = c.t.Add(d)
	return nil
}

func waiterWith(healths []clusterHealth, limit time.Duration) (*readyWaiter, *bytes.Buffer, *int) {
	var out bytes.Buffer
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	checks := 0
	w := &readyWaiter{
		check: func(context.Context) (clusterHealth, error) {
			h := healths[min(checks, len(healths)-1)]
			checks++
			return h, nil
		},
		limit: limit, out: &out, now: clock.now, sleep: clock.sleep,
	}
	return w, &out, &checks
}

func member(name, k8s string) nodeHealth {
	return nodeHealth{Name: name, Role: "worker", Attestation: "member of this cluster", Attested: true, Kubernetes: k8s}
}

var allServicesReady = []serviceStatus{{"join-service", "1/1", true}, {"key-service", "1/1", true}, {"verification-service", "3/3", true}}

// When the cluster is not ready in time, the error names every node and service that is not, and why; on
// the way, the waiter says what it still waits for each time that changes (and only then).
func TestReadyWaiterRunsOut(t *testing.T) {
	joining := clusterHealth{Initialised: true, Nodes: []nodeHealth{
		member("control-plane-0", "Ready"),
		{Name: "worker-0", Attestation: "FAILED: measurements do not match the policy (PCR 15)", Kubernetes: "not registered"},
		member("worker-1", "not registered"),
	}, Services: []serviceStatus{{"join-service", "1/1", true}, {"key-service", "1/1", true}, {"verification-service", "1/3", false}}}
	stuck := joining
	stuck.Nodes = []nodeHealth{member("control-plane-0", "Ready"), member("worker-0", "Ready"), member("worker-1", "NotReady")}
	stuck.Services = []serviceStatus{{"join-service", "1/1", true}, {"key-service", "1/1", true}, {"verification-service", "2/3", false}}

	w, out, checks := waiterWith([]clusterHealth{joining, joining, stuck}, 10*time.Minute)
	err := w.wait(context.Background())
	if err == nil || ExitCode(err) != ExitCheckFailed {
		t.Fatalf("wait = %v (exit %d), want a failed check", err, ExitCode(err))
	}
	for _, want := range []string{"not ready after 10m0s", "worker-1 (NotReady)", "verification-service (pods ready 2/3)", "constellation status"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q:\n%v", want, err)
		}
	}
	for _, ready := range []string{"control-plane-0", "worker-0", "key-service", "join-service"} {
		if strings.Contains(err.Error(), ready) {
			t.Errorf("the error names %s, which is ready:\n%v", ready, err)
		}
	}
	// One check every 2 s from 0 to 10 min inclusive.
	if *checks != 301 {
		t.Errorf("%d checks in 10 minutes, want 301", *checks)
	}
	progress := out.String()
	first := "waiting for worker-0 (not attested as a member), worker-1 (not registered), verification-service (pods ready 1/3)\n"
	second := "waiting for worker-1 (NotReady), verification-service (pods ready 2/3)\n"
	if strings.Count(progress, first) != 1 || strings.Count(progress, second) != 1 || strings.Count(progress, "waiting for") != 2 {
		t.Errorf("progress:\n%s", progress)
	}
	if !strings.Contains(progress, "worker-0 attested as a member of this cluster and Ready") || strings.Contains(progress, "worker-1 attested") {
		t.Errorf("progress on ready nodes:\n%s", progress)
	}
}

// The waiter returns as soon as the cluster is healthy: every node a member and Ready, every service's pods
// ready.
func TestReadyWaiterReturnsWhenReady(t *testing.T) {
	waiting := clusterHealth{Initialised: true, Nodes: []nodeHealth{member("control-plane-0", "Ready"), member("worker-0", "not registered")}, Services: allServicesReady}
	ready := waiting
	ready.Nodes = []nodeHealth{member("control-plane-0", "Ready"), member("worker-0", "Ready")}
	w, out, checks := waiterWith([]clusterHealth{waiting, waiting, ready, waiting}, time.Minute)
	if err := w.wait(context.Background()); err != nil {
		t.Fatalf("wait: %v\n%s", err, out)
	}
	if *checks != 3 || !strings.Contains(out.String(), "worker-0 attested as a member of this cluster and Ready") {
		t.Fatalf("%d checks, progress:\n%s", *checks, out)
	}
	// The API not answering is not ready, whatever the nodes said before.
	down := clusterHealth{Initialised: true, Nodes: []nodeHealth{member("control-plane-0", "unknown")}, KubeErr: os.ErrDeadlineExceeded}
	if got := down.notReady(); len(got) != 2 || got[1].What != "Kubernetes API" {
		t.Fatalf("not ready with the API down: %v", got)
	}
	unscheduled := clusterHealth{Initialised: true, Services: []serviceStatus{{"join-service", "no node to run on", false}}}
	if got := unscheduled.notReady(); len(got) != 1 || got[0].short() != "join-service (no node to run on)" {
		t.Fatalf("a service without nodes: %v", got)
	}
	// A cluster without Kubernetes (mini up --skip-init) is healthy when every node is attested.
	booted := clusterHealth{Nodes: []nodeHealth{{Name: "control-plane-0", Attestation: "runs the configured image", Attested: true, Kubernetes: "-"}}}
	if got := booted.notReady(); len(got) != 0 {
		t.Fatalf("booted nodes without Kubernetes: %v", got)
	}
}

// status in a directory without a cluster says so, and how to make one, with a non-zero exit code; also where a
// configuration exists but no cluster runs.
func TestStatusWithoutCluster(t *testing.T) {
	ws := t.TempDir()
	_, errOut, code := run("status", "--workspace", ws)
	if code != ExitCheckFailed || !strings.Contains(errOut, "no cluster in "+ws) || !strings.Contains(errOut, "constellation mini up") || strings.Contains(errOut, "no such file") {
		t.Fatalf("status without a workspace: exit %d\n%s", code, errOut)
	}
	generateConfig(t, ws)
	_, errOut, code = run("status", "--workspace", ws)
	if code != ExitCheckFailed || !strings.Contains(errOut, "no cluster in "+ws) || !strings.Contains(errOut, "constellation mini up") {
		t.Fatalf("status with a configuration but no cluster: exit %d\n%s", code, errOut)
	}
}

// mini down removes what a cluster left in the workspace (the provider's directory with the nodes' state
// disks, the state file, the kubeconfig, the init secret) and keeps the configuration and the master secret;
// a second mini down finds nothing to do and succeeds.
func TestMiniDownRemovesTheCluster(t *testing.T) {
	ws := t.TempDir()
	generateConfig(t, ws)
	keep := []string{config.FileName, kms.MasterSecretFileName}
	gone := []string{StateFile, AdminKubeconfigFile, InitSecretFile, filepath.Join(miniDirName, "nodes", "control-plane-0", "state-disk.img"), filepath.Join(miniDirName, "ak-ca", "ca-cert.pem")}
	if err := os.WriteFile(filepath.Join(ws, kms.MasterSecretFileName), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range gone {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(ws, f)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ws, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if out, errOut, code := run("mini", "down", "--workspace", ws); code != 0 || !strings.Contains(out, "Kept "+config.FileName+" and the master secret") {
			t.Fatalf("mini down: exit %d\n%s%s", code, out, errOut)
		}
	}
	for _, f := range keep {
		if _, err := os.Stat(filepath.Join(ws, f)); err != nil {
			t.Errorf("mini down removed %s: %v", f, err)
		}
	}
	for _, f := range append(gone, miniDirName) {
		if _, err := os.Stat(filepath.Join(ws, f)); !os.IsNotExist(err) {
			t.Errorf("mini down left %s (%v)", f, err)
		}
	}
}

// generateConfig writes a mini configuration into ws, for an image that is not there, and returns the flags
// that make a command trust the image's signed measurements.
func generateConfig(t *testing.T, ws string) []string {
	t.Helper()
	imageDir := t.TempDir()
	expected, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: [32]byte{7}, Cmdline: nodeimage.DefaultCmdline})
	if err != nil {
		t.Fatal(err)
	}
	rawMeas, _ := json.Marshal(expected)
	write(t, filepath.Join(imageDir, "measurements.json"), rawMeas)
	rawManifest, _ := json.Marshal(nodeimage.Manifest{Digest: "sha256:0700000000000000000000000000000000000000000000000000000000000000", Cmdline: nodeimage.DefaultCmdline})
	write(t, filepath.Join(imageDir, "node-image.json"), rawManifest)
	sig := signImage(t, imageDir)
	if _, errOut, code := run(append([]string{"config", "generate", "mini", "--image-dir", imageDir, "--workspace", ws}, sig...)...); code != 0 {
		t.Fatalf("config generate: %s", errOut)
	}
	return sig
}

// A workspace that records an initialised cluster whose state disks are gone (deleted or withheld by the
// host): mini up refuses rather than initialise a new, empty cluster over its state file and kubeconfig.
func TestMiniUpRefusesARecordedClusterWithoutDisks(t *testing.T) {
	ws := t.TempDir()
	sig := generateConfig(t, ws)
	state := []byte("clusterID: " + strings.Repeat("ab", 32) + "\nendpoint: 10.217.0.10:6443\n")
	for name, content := range map[string][]byte{StateFile: state, AdminKubeconfigFile: []byte("kubeconfig")} {
		if err := os.WriteFile(filepath.Join(ws, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := run(append([]string{"mini", "up", "--workspace", ws}, sig...)...)
	if code == 0 || !strings.Contains(errOut, "state disks are gone") || !strings.Contains(errOut, "mini down") {
		t.Fatalf("mini up over a recorded cluster without disks: exit %d\n%s%s", code, out, errOut)
	}
	if raw, _ := os.ReadFile(filepath.Join(ws, StateFile)); string(raw) != string(state) {
		t.Error("mini up changed the state file")
	}
	if raw, _ := os.ReadFile(filepath.Join(ws, AdminKubeconfigFile)); string(raw) != "kubeconfig" {
		t.Error("mini up changed the kubeconfig")
	}
	if _, err := os.Stat(filepath.Join(ws, InitSecretFile)); !os.IsNotExist(err) {
		t.Errorf("mini up wrote an init secret before refusing (%v)", err)
	}
}
