package bootstrapper

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
)

func TestWritePKI(t *testing.T) {
	var files []*joinpb.PKIFile
	for _, name := range joinpb.ControlPlaneFiles {
		files = append(files, &joinpb.PKIFile{Name: name, Content: []byte(name)})
	}
	dir := t.TempDir()
	if err := writePKI(dir, files); err != nil {
		t.Fatal(err)
	}
	for _, name := range joinpb.ControlPlaneFiles {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if want := os.FileMode(0o644); strings.HasSuffix(name, ".key") && fi.Mode().Perm() != 0o600 || !strings.HasSuffix(name, ".key") && fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v", name, fi.Mode().Perm())
		}
	}
	for name, bad := range map[string][]*joinpb.PKIFile{
		"missing file":   files[1:],
		"escaping path":  append(append([]*joinpb.PKIFile{}, files[1:]...), &joinpb.PKIFile{Name: "../../etc/passwd"}),
		"duplicate file": append(append([]*joinpb.PKIFile{}, files[1:]...), files[1]),
	} {
		if err := writePKI(t.TempDir(), bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The kubelet's credentials from a join answer are used only if the CA is the pinned one and the certificate
// is that CA's, for the kubelet's own key.
func TestKubeletCredentials(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	hash := "sha256:" + hex.EncodeToString(sum[:])
	key, csrDER, err := kubeletRequest("worker-0")
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	if csr.Subject.CommonName != "system:node:worker-0" || csr.Subject.Organization[0] != "system:nodes" {
		t.Fatalf("request subject %v", csr.Subject)
	}
	issue := func(pub any, signer *ecdsa.PrivateKey, parent *x509.Certificate) []byte {
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: csr.Subject, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	good := &joinpb.JoinResponse{CaCertificate: caDER, CaCertHash: hash, KubeletCertificate: issue(&key.PublicKey, caKey, ca)}
	creds, err := kubeletCredentials(good, key)
	if err != nil || !strings.Contains(string(creds.Key), "EC PRIVATE KEY") || !strings.Contains(string(creds.Cert), "CERTIFICATE") {
		t.Fatalf("good answer: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	impostorDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &other.PublicKey, other) // same name, another key
	impostor, _ := x509.ParseCertificate(impostorDER)
	for name, resp := range map[string]*joinpb.JoinResponse{
		"CA not pinned":          {CaCertificate: caDER, CaCertHash: "sha256:" + strings.Repeat("0", 64), KubeletCertificate: good.KubeletCertificate},
		"another key":            {CaCertificate: caDER, CaCertHash: hash, KubeletCertificate: issue(&other.PublicKey, caKey, ca)},
		"not signed by the CA":   {CaCertificate: caDER, CaCertHash: hash, KubeletCertificate: issue(&key.PublicKey, other, impostor)},
		"no kubelet certificate": {CaCertificate: caDER, CaCertHash: hash},
		"no CA":                  {CaCertHash: hash, KubeletCertificate: good.KubeletCertificate},
	} {
		if _, err := kubeletCredentials(resp, key); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// retryingKubernetes records what the join retry asks of Kubernetes, in order.
type retryingKubernetes struct {
	recordingKubernetes
	steps   []string
	reports []error
	// resetErr is what ResetJoin returns.
	resetErr error
}

func (k *retryingKubernetes) ResetJoin(context.Context) error {
	k.steps = append(k.steps, "reset")
	return k.resetErr
}

func (k *retryingKubernetes) ReportJoinFailure(_ context.Context, err error) error {
	k.steps = append(k.steps, "report")
	k.reports = append(k.reports, err)
	return nil
}

// fakeClock is the retry's clock: its waits pass at once, and are recorded.
type fakeClock struct {
	now   time.Time
	waits []time.Duration
}

func (c *fakeClock) retry() joinRetry {
	return joinRetry{
		now: func() time.Time { return c.now },
		sleep: func(ctx context.Context, d time.Duration) error {
			c.waits = append(c.waits, d)
			c.now = c.now.Add(d)
			return ctx.Err()
		},
	}
}

// errConnReset is a failure of kubeadm join as the API endpoint's reset connection makes it.
var errConnReset = errors.New(`kubeadm join: exit status 1
error execution phase kubelet-start: read tcp 10.217.0.12:41634->10.217.0.10:6443: read: connection reset by peer`)

// A kubeadm join that fails on a reset connection is tried again after the node undid what it left, with a
// growing wait, and nothing is reported once it succeeded.
func TestJoinRetriesTransientFailures(t *testing.T) {
	k := &retryingKubernetes{}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	var logs bytes.Buffer
	err := clock.retry().run(t.Context(), k, clock.now.Add(joinpb.TokenTTL-tokenMargin), slog.New(slog.NewTextHandler(&logs, nil)), func(n int) error {
		k.steps = append(k.steps, fmt.Sprintf("join %d", n))
		if n < 3 {
			return errConnReset
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(k.steps, ", "), "join 1, reset, join 2, reset, join 3"; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}
	if want := []time.Duration{2 * time.Second, 4 * time.Second}; !slices.Equal(clock.waits, want) {
		t.Errorf("waits %v, want %v", clock.waits, want)
	}
	if n := strings.Count(logs.String(), "connection reset by peer"); n != 2 {
		t.Errorf("%d failures logged with their reason, want 2:\n%s", n, logs.String())
	}
}

// ATTACK: the host makes every kubeadm join fail (it resets every connection to the API endpoint). The node
// neither loops hot nor goes on for ever: it waits twice as long after each failure (up to a minute), stops
// before the join service's bootstrap token expires, and reports why on its Node object, once. It never asks
// the join service again: the node measured the cluster ID, and an admission needs a fresh, attested node.
func TestHostileHostFailingEveryJoinGetsNoBusyLoop(t *testing.T) {
	k := &retryingKubernetes{}
	start := time.Unix(1_700_000_000, 0)
	clock := &fakeClock{now: start}
	until := start.Add(joinpb.TokenTTL - tokenMargin)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	attempts := 0
	err := clock.retry().run(ctx, k, until, slog.New(slog.DiscardHandler), func(n int) error {
		attempts = n
		if n == 100 {
			cancel() // a busy loop: end it, the checks below fail
		}
		return errConnReset
	})
	if err == nil || !strings.Contains(err.Error(), "bootstrap token expires") || !errors.Is(err, errConnReset) {
		t.Fatalf("error %v, want the last failure and why the node stopped", err)
	}
	if attempts > 15 {
		t.Errorf("%d attempts within the token's %s", attempts, joinpb.TokenTTL)
	}
	var total time.Duration
	for i, w := range clock.waits {
		if w < 2*time.Second || i > 0 && w < clock.waits[i-1] || w > time.Minute {
			t.Errorf("wait %d: %s after %v", i+1, w, clock.waits[:i])
		}
		total += w
	}
	if start.Add(total).After(until) {
		t.Errorf("attempts until %s after the admission, past the token's end", total)
	}
	if len(k.reports) != 1 || !errors.Is(k.reports[0], errConnReset) || !slices.Equal(k.steps[len(k.steps)-2:], []string{"report", "reset"}) {
		t.Errorf("reports %v (steps %v), want the last failure, once, at the end, then the node reset for its next boot", k.reports, k.steps)
	}
}

// A node that cannot undo a failed join does not try again on what is left: it reports and stops.
func TestJoinRetryStopsWhenTheResetFails(t *testing.T) {
	k := &retryingKubernetes{resetErr: errors.New("kubeadm reset: exit status 1")}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	err := clock.retry().run(t.Context(), k, clock.now.Add(time.Hour), slog.New(slog.DiscardHandler), func(int) error { return errConnReset })
	if err == nil || !errors.Is(err, errConnReset) || !errors.Is(err, k.resetErr) {
		t.Fatalf("error %v", err)
	}
	if got := strings.Join(k.steps, ", "); got != "reset, report" {
		t.Errorf("steps %q", got)
	}
}
