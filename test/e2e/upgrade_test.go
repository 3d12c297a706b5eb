package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/upgrade"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

const (
	upgradeOldImage = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	upgradeNewImage = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// TestMiniUpgradeWorker replaces a worker of a real cluster through the upgrade controller, with the
// controller's own permissions: the mini provider boots the replacement (`mini add-worker`; it joins through
// the join service, attested), the controller waits until it is Ready and its attestation record proves the new
// image, then drains the old worker as the application's PodDisruptionBudget allows it (real kubelets end the
// pods, the disruption controller keeps the budget): while the budget allows no disruption, the pods stay; once
// the application has a spare replica on the new worker, they move there one by one. Then the provider powers
// the old worker off and its Node goes.
//
// The nodes all run the same image here, so the re-attestation controller would record the same image for
// every node: the test takes its place (it holds the controller's leader election Lease, which stops it) and
// writes the nodes' attestation records as it would, with the join service's service account: the
// control-plane node and the replacement proven on the new image, worker-0 on the old one.
func TestMiniUpgradeWorker(t *testing.T) {
	cl := startCluster(t, 1, 1)
	k := cl.k
	records := newRecordWriter(t, cl)
	// The control-plane node serves the cluster's endpoint and stays: it counts as upgraded.
	for node, image := range map[string]string{"control-plane-0": upgradeNewImage, "worker-0": upgradeOldImage} {
		if err := records.attest(t.Context(), node, image); err != nil {
			t.Fatal(err)
		}
	}
	// Two replicas on the one worker; the budget needs both.
	manifest := filepath.Join(t.TempDir(), "app.yaml")
	app := strings.Replace(webManifest, "replicas: 3", "replicas: 2", 1) + `---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
`
	if err := os.WriteFile(manifest, []byte(app), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := k("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	cl.eventually("both replicas running", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=PHASE:.status.phase,NODE:.spec.nodeName")
		return out, err == nil && strings.Count(out, "Running") == 2 && strings.Count(out, "worker-0") == 2
	})

	// The first node deployed the controller's CRD, permissions and Deployment at init; the test runs the
	// controller itself (with a provider of its own), so the cluster's stops first.
	if out, err := k("wait", "--for=condition=Established", "crd/nodeupgrades.upgrade.constellation.dev"); err != nil {
		t.Fatalf("the CRD: %v\n%s", err, out)
	}
	if out, err := k("-n", "kube-system", "scale", "deployment/"+upgrade.Name, "--replicas=0"); err != nil {
		t.Fatalf("stopping the cluster's upgrade controller: %v\n%s", err, out)
	}
	cl.eventually("the cluster's upgrade controller stopped", func() (string, bool) {
		out, err := k("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name="+upgrade.Name, "-o", "name")
		return out, err == nil && !strings.Contains(out, "pod/")
	})

	cfg, err := clientcmd.BuildConfigFromFlags("", cl.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Impersonate.UserName = "system:serviceaccount:kube-system:" + upgrade.Name
	cfg.Impersonate.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}
	f := &miniFleet{c: cl.c, attest: records.attest, k: k}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctrllog.SetLogger(logr.FromSlogHandler(log.Handler()))
	mgr, err := upgrade.NewManager(cfg, upgrade.Options{Fleet: f, Etcd: noEtcd{}, Log: log, LeaderElection: true, LeaseNamespace: "kube-system"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the controller: %v", err)
		}
	})

	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	admin, err := clientcmd.BuildConfigFromFlags("", cl.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(admin, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	nu := &v1alpha1.NodeUpgrade{Spec: v1alpha1.NodeUpgradeSpec{ImageDigest: upgradeNewImage}}
	nu.Name = v1alpha1.Name
	if err := c.Create(t.Context(), nu); err != nil {
		t.Fatal(err)
	}
	status := func(what string, cond func(*v1alpha1.NodeUpgradeStatus) bool) v1alpha1.NodeUpgradeStatus {
		t.Helper()
		start := time.Now()
		for {
			var nu v1alpha1.NodeUpgrade
			if err := c.Get(t.Context(), types.NamespacedName{Name: v1alpha1.Name}, &nu); err != nil {
				t.Fatal(err)
			}
			if cond(&nu.Status) {
				t.Logf("%s after %s: %s", what, time.Since(start).Round(time.Second), nu.Status.Message)
				return nu.Status
			}
			if nu.Status.Phase == v1alpha1.PhaseFailed {
				b, _ := json.MarshalIndent(nu.Status, "", "  ")
				t.Fatalf("waiting for %s, the upgrade failed:\n%s", what, b)
			}
			time.Sleep(time.Second)
		}
	}
	draining := func(msg string) func(*v1alpha1.NodeUpgradeStatus) bool {
		return func(st *v1alpha1.NodeUpgradeStatus) bool {
			return len(st.Nodes) == 1 && st.Nodes[0].Step == v1alpha1.StepDraining && strings.Contains(st.Nodes[0].Message, msg)
		}
	}
	status("the budget holding the drain of worker-0", draining("refused"))
	if out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=NODE:.spec.nodeName,DELETING:.metadata.deletionTimestamp"); err != nil || strings.Count(out, "worker-0") != 2 || strings.Count(out, "<none>") != 2 {
		t.Fatalf("pods while the budget allows no disruption: %v\n%s", err, out)
	}
	// A third replica, on the new worker: now the budget lets the pods move, one at a time.
	if out, err := k("scale", "deployment/web", "--replicas=3"); err != nil {
		t.Fatalf("scale: %v\n%s", err, out)
	}
	st := status("the upgrade to succeed", func(st *v1alpha1.NodeUpgradeStatus) bool { return st.Phase == v1alpha1.PhaseSucceeded })
	if len(st.Nodes) != 1 || st.Nodes[0].OldNode != "worker-0" || st.Nodes[0].ReplacementNode != f.created() {
		t.Errorf("status: %+v", st.Nodes)
	}
	if out, err := k("get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || strings.Contains(out, "worker-0") || !strings.Contains(out, f.created()) {
		t.Errorf("nodes after the upgrade: %v\n%s", err, out)
	}
	cl.eventually("the application's replicas all on the new worker", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=PHASE:.status.phase,NODE:.spec.nodeName")
		return out, err == nil && strings.Count(out, "Running") == 3 && strings.Count(out, f.created()) == 3
	})
	if calls := f.calls(); strings.Join(calls, ",") != "create worker,delete worker-0" {
		t.Errorf("provider calls %v", calls)
	}
}

// miniFleet creates workers with `mini add-worker` and deletes nodes with `mini stop` (powered off, they
// leave the cluster); it writes the attestation record of a new node once it registers, as the re-attestation
// controller would once the node's evidence matched the new image's measurement set.
type miniFleet struct {
	c      cli
	k      func(args ...string) (string, error)
	attest func(ctx context.Context, node, image string) error
	mu     sync.Mutex
	log    []string
	name   string
}

var bootedRE = regexp.MustCompile(`(worker-[0-9]+) booted`)

func (f *miniFleet) CreateNode(ctx context.Context, role, image string) (string, error) {
	f.record("create " + role)
	if role != upgrade.RoleWorker {
		return "", errors.New("this test's provider makes workers only")
	}
	out, err := f.mini(ctx, "add-worker")
	if err != nil {
		return "", err
	}
	m := bootedRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("mini add-worker named no worker:\n%s", out)
	}
	f.mu.Lock()
	f.name = m[1]
	f.mu.Unlock()
	go func() {
		for ctx.Err() == nil {
			if _, err := f.k("get", "node", m[1]); err == nil && f.attest(ctx, m[1], image) == nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	return m[1], nil
}

func (f *miniFleet) DeleteNode(ctx context.Context, name string) error {
	f.record("delete " + name)
	_, err := f.mini(ctx, "stop", name)
	return err
}

func (f *miniFleet) mini(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, f.c.bin, append(append([]string{"mini"}, args...), "--workspace", f.c.ws)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("mini %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

func (f *miniFleet) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, call)
}

func (f *miniFleet) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

func (f *miniFleet) created() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.name
}

// recordWriter writes the nodes' attestation records in place of the re-attestation controller, with the join
// service's service account (the only one, besides administrators, that may write them).
type recordWriter struct {
	admin, join kubernetes.Interface
}

// newRecordWriter stops the cluster's re-attestation controller: it takes the controller's leader election
// Lease for an hour, and waits until the join service says its controller stopped (it loses the Lease at its
// next renewal and cannot take it back).
func newRecordWriter(t *testing.T, cl *cluster) *recordWriter {
	t.Helper()
	clientset := func(as string) kubernetes.Interface {
		cfg, err := clientcmd.BuildConfigFromFlags("", cl.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		if as != "" {
			cfg.Impersonate.UserName = "system:serviceaccount:kube-system:" + as
			cfg.Impersonate.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}
		}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	w := &recordWriter{admin: clientset(""), join: clientset(joinservice.Name)}
	leases := w.admin.CoordinationV1().Leases(reattestation.ControlNamespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l, err := leases.Get(t.Context(), reattestation.LeaseName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		holder, secs, now := "e2e-upgrade-test", int32(3600), metav1.NowMicro()
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.AcquireTime, l.Spec.RenewTime = &holder, &secs, &now, &now
		_, err = leases.Update(t.Context(), l, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("taking the re-attestation controller's Lease: %v", err)
	}
	cl.eventually("the re-attestation controller stopped", func() (string, bool) {
		out, err := cl.k("-n", "kube-system", "logs", "daemonset/join-service")
		return lastLines(out, 5), err == nil && strings.Contains(out, "re-attestation controller no longer active")
	})
	return w
}

// attest writes node's record as the re-attestation controller does when the node's evidence matched the
// measurement set of image: Trusted, verified now (valid for an hour), of its Node object's UID.
func (w *recordWriter) attest(ctx context.Context, node, image string) error {
	n, err := w.admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	leases := w.join.CoordinationV1().Leases(reattestation.RecordNamespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l, err := leases.Get(ctx, node, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		if create {
			l, err = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: reattestation.RecordNamespace}}, nil
		}
		if err != nil {
			return err
		}
		l.Annotations = map[string]string{
			reattestation.StateAnnotation:         string(reattestation.Trusted),
			reattestation.NodeUIDAnnotation:       string(n.UID),
			reattestation.AttestedImageAnnotation: image,
		}
		secs, now := int32(3600), metav1.NowMicro()
		l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &secs, &now
		if create {
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		} else {
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		return err
	})
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// noEtcd is the etcd of a test that replaces no control-plane node.
type noEtcd struct{}

func (noEtcd) RemoveMember(context.Context, string, string) error {
	return errors.New("this test replaces no control-plane node")
}
