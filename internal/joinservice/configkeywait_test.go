package joinservice

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
)

// watchedLog is a log sink a test waits on: every write wakes a waiter.
type watchedLog struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newWatchedLog() *watchedLog { return &watchedLog{changed: make(chan struct{}, 1)} }

func (w *watchedLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (w *watchedLog) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// waitFor waits until the log holds n lines that contain every one of parts, or done delivers first (then it
// fails the test with what done brought).
func (w *watchedLog) waitFor(t *testing.T, done <-chan error, n int, parts ...string) {
	t.Helper()
	count := func() int {
		c := 0
		for _, line := range strings.Split(w.String(), "\n") {
			all := line != ""
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				c++
			}
		}
		return c
	}
	for count() < n {
		select {
		case <-w.changed:
		case err := <-done:
			t.Fatalf("the wait for the configuration key ended (%v) before the log held %d lines with %q:\n%s", err, n, parts, w.String())
		}
	}
}

// The operator's CLI removes the image the control-plane node runs from the measurement policy (upgrade start,
// then finish to another image), and then the node's join service restarts: the key service refuses it the
// configuration key at the mutual handshake, which is right, as the node is no longer trusted. The join
// service fails closed without exiting: it says at every try, as an error, that the policy in force no longer
// accepts its node's image (naming the epoch and the PCR) and what to do, and keeps waiting. A join service
// whose key service refuses it while the policy in force, as it learns it, still accepts its image (a key
// service that received the narrowing before the one that answers the policy) takes it for passing: a
// warning, no error. Once the operator puts a policy that accepts the image in force again, the waiting join
// service gets its key and goes on, with no restart.
func TestRestartedJoinServiceOfRemovedImage(t *testing.T) {
	ctx := context.Background()
	cp, next := swtpmNode(t), swtpmNode(t)
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	clusterID, err := d.ClusterID()
	if err != nil {
		t.Fatal(err)
	}
	oldSet := imageSetOf(t, cp)
	newImageOf(t, next)
	newSet := imageSetOf(t, next)
	measureClusterID(t, cp.Issuer, clusterID)
	cpRoots := []*x509.Certificate{cp.CA.Certificate()}
	secret := &keyservice.Secret{MasterSecret: ms, ClusterID: clusterID, Measurements: oldSet}
	ks := runKeyService(t, cp, secret, cpRoots, filepath.Join(t.TempDir(), "measurement-policy.json"))
	// A second key service, which gets the policy updates after the first.
	late := runKeyService(t, cp, secret, cpRoots, filepath.Join(t.TempDir(), "measurement-policy.json"))
	mainPort, policyPort := &endpoints{}, &endpoints{}
	mainPort.set(ks.addr)
	policyPort.set(late.policyAddr)
	fetch := func(ctx context.Context) ([]byte, error) {
		return FetchConfigKey(ctx, mainPort.get, KeyServiceTrust{Issuer: cp.Issuer, AKRoots: cpRoots, Roles: roles{"node-0": true}})
	}
	want, err := fetch(ctx)
	if err != nil {
		t.Fatalf("the configuration key before the narrowing: %v", err)
	}

	policyKey, err := d.MeasurementPolicyKey()
	if err != nil {
		t.Fatal(err)
	}
	send := func(epoch uint64, to string, sets ...measurements.M) {
		t.Helper()
		u, err := policyupdate.Author(policyKey, clusterID, epoch, imageSets(sets...)...)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := u.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		trust, err := keyservice.MemberValidators(cp.Issuer.Variant(), cpRoots, clusterID, nil)([]measurements.M{oldSet})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := keyservice.SendPolicy(ctx, []string{to}, trust, raw); err != nil {
			t.Fatal(err)
		}
	}
	// Upgrade start and finish to the other image at the first key service; the second has only the start.
	send(1, ks.policyAddr, oldSet, newSet)
	send(2, ks.policyAddr, newSet)
	send(1, late.policyAddr, oldSet, newSet)

	// The join service restarts: new connections, a new policy source.
	src, closeSrc, err := KeyServicePolicy(ctx, policyPort.get, KeyServiceTrust{Issuer: cp.Issuer, AKRoots: cpRoots, Roles: roles{"node-0": true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeSrc() })
	logs := newWatchedLog()
	wait := ConfigKeyWait{
		Fetch:    fetch,
		OwnImage: func(ctx context.Context) error { return OwnImageInForce(ctx, src, cp.Issuer) },
		Log:      slog.New(slog.NewJSONHandler(logs, nil)),
		Retry:    time.Millisecond, Recheck: time.Millisecond,
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	var got []byte
	go func() {
		var err error
		got, err = wait.Run(runCtx)
		done <- err
	}()

	// Refused by the first key service while the second answers a policy that accepts the node: passing.
	logs.waitFor(t, done, 2, `"level":"WARN"`, "although the policy in force accepts this node's image", "retrying")
	if strings.Contains(logs.String(), `"level":"ERROR"`) {
		t.Fatalf("a refusal while the policy in force accepts the node's image was taken for its removal:\n%s", logs)
	}

	// The second key service gets the narrowing too: the image is removed, loudly, and the join service waits.
	send(2, late.policyAddr, newSet)
	removed := []string{`"level":"ERROR"`, "the join service cannot start", "(epoch 2, node images sha256:" + newSet[measurements.PCRNodeImage].Expected.String() + ")",
		"no longer accepts the image this node runs (mismatch: PCR 4)", "this join service gets no configuration key and admits no node", "constellation apply"}
	logs.waitFor(t, done, 3, removed...)
	select {
	case err := <-done:
		t.Fatalf("the join service stopped waiting while its image is removed: key %v, %v", got != nil, err)
	default:
	}

	// The operator puts the image in force again: the join service goes on by itself.
	send(3, late.policyAddr, oldSet, newSet)
	send(3, ks.policyAddr, oldSet, newSet)
	if err := <-done; err != nil {
		t.Fatalf("after the image was put in force again: %v\n%s", err, logs)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the configuration key after the wait differs from the one before the narrowing")
	}
	if !strings.Contains(logs.String(), "the policy in force accepts this node's image again") {
		t.Fatalf("the join service did not say that it went on:\n%s", logs)
	}
}

// A join service whose wait is stopped (its pod ends) returns the error that kept it waiting.
func TestConfigKeyWaitStops(t *testing.T) {
	refused := errors.New("refused at the handshake")
	ctx, cancel := context.WithCancel(context.Background())
	tries := 0
	_, err := ConfigKeyWait{
		Fetch: func(context.Context) ([]byte, error) {
			if tries++; tries == 3 {
				cancel()
			}
			return nil, refused
		},
		OwnImage: func(context.Context) error { return &ImageRemovedError{Epoch: 4} },
		Log:      slog.New(slog.DiscardHandler),
		Recheck:  time.Millisecond,
	}.Run(ctx)
	if !errors.Is(err, refused) || !errors.Is(err, context.Canceled) || tries != 3 {
		t.Fatalf("Run after %d tries = %v, want the refusal and the cancellation after 3", tries, err)
	}
}

// No update in force: the cluster's init measurements, which the node passed to be a member.
func TestOwnImageInForceWithoutUpdate(t *testing.T) {
	cp, _, clusterID := memberControlPlane(t)
	_ = clusterID
	if err := OwnImageInForce(context.Background(), func(context.Context) (*policyupdate.Update, error) { return nil, nil }, cp.Issuer); err != nil {
		t.Fatal(err)
	}
}
