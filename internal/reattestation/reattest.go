// Package reattestation attests every node of the cluster again and again, not only when it joins: a node that
// stops proving itself loses its place, its keys and its peers.
//
// The controller runs in the join service's process on the control plane, which holds the cluster's attestation
// policy (the MAC-checked join configuration, read again when it changes); one instance of it is active at a
// time, by leader election on a Lease ([RunElected]). It follows the Node objects through one watch (an
// informer) and, every interval (default 10 s, with jitter) per node, asks the node's verification service for
// fresh evidence for a fresh nonce, in which the node binds the WireGuard public key its mesh interface uses
// (verifyservice.MeshKeyUserData). The evidence counts if it validates against the CURRENT member policy
// (measurements, hardware minimums, the cluster ID in PCR 15), names the node (its attestation key certificate's
// subject), and binds the key recorded on the Node object.
//
// Each node is Trusted (verified within two intervals), Unreachable (no evidence; retried with backoff, tainted
// NoSchedule after about a minute, never more) or Failed (evidence received and wrong). The controller keeps its
// record of each node (state, reason, last verification, alert) in a Lease of the node's name in
// [RecordNamespace], which only the join service's service account may write, never on the Node object, whose
// annotations the node's own kubelet may write; the record names the Node object's UID, so that a record left
// from a deleted node is no record of a new node of the same name ([RecordOf]). The record also names the node
// image the node's evidence proved: the image the measurement set it matched names (package policyupdate; see
// [AttestedImageAnnotation]), which the upgrade controller takes as the node's image. A new leader continues from
// the records, and `constellation status` shows them. The records are also why the Node objects, which every node's
// mesh agent watches, change only when a node's taints or quarantine do. A Failed node is quarantined by the
// others: tainted NoExecute and cordoned, and marked with meshpeers.QuarantineLabel, which NodeRestriction
// forbids a kubelet to set or remove; every mesh agent then drops it as a peer, and the key service refuses it
// keys. A ValidatingAdmissionPolicy ([Manifests]) forbids a quarantined node to uncordon itself or to delete
// (and so re-register) its Node object. Only a fresh attested rejoin lifts the quarantine: the join service
// calls [Release] when it admits the node again.
//
// Safety rails: a control-plane node is not quarantined where that would leave etcd without a quorum of trusted
// members (the controller alerts instead: log and [AlertAnnotation] on the record); at most one quarantine per
// interval; enforcement can be paused cluster-wide ([ControlConfigMap], which only administrators can write);
// and the controller's figures are served in Prometheus' text format ([Metrics]).
package reattestation

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// Taints the controller puts on Node objects, and the state of a released node.
const (
	// QuarantineTaint evicts every pod from a Failed node (NoExecute).
	QuarantineTaint = "constellation.dev/quarantined"
	// UnreachableTaint keeps new pods off a node without evidence for about a minute (NoSchedule).
	UnreachableTaint = "constellation.dev/attestation-unreachable"
	// ReleasedState is what the join service writes as the state of a node it admitted again (in its record).
	ReleasedState = "rejoined"
)

// controlPlaneLabel marks control-plane nodes (kubeadm).
const controlPlaneLabel = "node-role.kubernetes.io/control-plane"

// Defaults of [Options].
const (
	DefaultInterval   = 10 * time.Second
	DefaultTaintAfter = time.Minute
)

// FetchFunc asks the node at the endpoint for evidence bound to nonce and to its mesh key.
type FetchFunc func(ctx context.Context, endpoint string, nonce []byte) ([]byte, error)

// Options configure a [Controller].
type Options struct {
	// Client reaches the API server with the join service's permissions (Nodes: get, list, watch, update;
	// Leases in RecordNamespace: get, list, watch, create, update, delete; the control ConfigMap: get).
	Client kubernetes.Interface
	// Policy returns the validator of the cluster's current member policy; an error: no valid policy now
	// (the controller then judges nobody). If it is a policyupdate.ImageValidator, the controller records the
	// image of the set a node's evidence matched; otherwise it records none.
	Policy func() (attestation.Validator, error)
	// Fetch gets evidence; nil: verifyservice.FetchGRPCMeshKey.
	Fetch FetchFunc
	// Port is the verification service's gRPC port on every node (0: verifyservice.GRPCPort).
	Port int
	// Interval between two checks of a node (0: DefaultInterval); Jitter spreads them (0: a fifth of it).
	Interval, Jitter time.Duration
	// Timeout bounds one check (0: half the interval).
	Timeout time.Duration
	// TaintAfter is how long a node may be without evidence before it is tainted NoSchedule (0:
	// DefaultTaintAfter).
	TaintAfter time.Duration
	// Concurrency bounds the checks in flight (0: 16).
	Concurrency int
	// Metrics receives the controller's figures (nil: none kept).
	Metrics *Metrics
	// OnCheck, if set, is called after every check with the node's record (tests follow the controller).
	OnCheck func(node string, state State, reason string)
	Log     *slog.Logger
}

// Controller attests the cluster's nodes continuously.
type Controller struct {
	o      Options
	t      timing
	log    *slog.Logger
	sem    chan struct{}
	nodes  cache.Indexer
	leases cache.Indexer // the records (RecordNamespace)
	notify map[string]chan struct{}
	// identity names this instance in the records it writes (RunElected's identity).
	identity string

	mu         sync.Mutex
	records    map[string]*nodeState
	cancel     map[string]context.CancelFunc
	lastAction time.Time // of the last quarantine
}

// New returns a controller; Run starts it.
func New(o Options) (*Controller, error) {
	if o.Client == nil || o.Policy == nil {
		return nil, errors.New("the re-attestation controller needs an API client and the cluster's policy")
	}
	if o.Fetch == nil {
		o.Fetch = verifyservice.FetchGRPCMeshKey
	}
	if o.Port == 0 {
		o.Port = verifyservice.GRPCPort
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Jitter <= 0 {
		o.Jitter = o.Interval / 5
	}
	if o.Timeout <= 0 {
		o.Timeout = o.Interval / 2
	}
	if o.TaintAfter <= 0 {
		o.TaintAfter = DefaultTaintAfter
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	retryBase := min(time.Second, o.Interval/4)
	return &Controller{
		o:       o,
		t:       timing{Interval: o.Interval, Jitter: o.Jitter, RetryBase: retryBase, TaintAfter: o.TaintAfter},
		log:     o.Log,
		sem:     make(chan struct{}, o.Concurrency),
		notify:  map[string]chan struct{}{},
		records: map[string]*nodeState{},
		cancel:  map[string]context.CancelFunc{},
	}, nil
}

// Run follows the Node objects and checks each node until ctx ends; then it returns nil.
func (c *Controller) Run(ctx context.Context) error {
	// A controller that leads again (RunElected) starts from the records, not from its last term.
	c.mu.Lock()
	c.records, c.cancel, c.notify = map[string]*nodeState{}, map[string]context.CancelFunc{}, map[string]chan struct{}{}
	c.mu.Unlock()
	// The records first: a node's checks start from its record.
	leaseFactory := informers.NewSharedInformerFactoryWithOptions(c.o.Client, 0, informers.WithNamespace(RecordNamespace))
	leaseInf := leaseFactory.Coordination().V1().Leases().Informer()
	c.leases = leaseInf.GetIndexer()
	if _, err := leaseInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if l, ok := obj.(*coordinationv1.Lease); ok {
				c.recordChanged(l)
			}
		},
		UpdateFunc: func(_, cur any) {
			if l, ok := cur.(*coordinationv1.Lease); ok {
				c.recordChanged(l)
			}
		},
	}); err != nil {
		return err
	}
	if err := leaseInf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		// Without its records the controller checks nobody: say why, until it can read them.
		c.log.Error("reading the nodes' attestation records failed; no node is checked until they can be read. Check that the namespace and the join service's role there exist (the join service's manifests)", "namespace", RecordNamespace, "error", err)
	}); err != nil {
		return err
	}
	go leaseInf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), leaseInf.HasSynced) {
		return nil
	}

	factory := informers.NewSharedInformerFactory(c.o.Client, 0)
	inf := factory.Core().V1().Nodes().Informer()
	c.nodes = inf.GetIndexer()
	var wg sync.WaitGroup
	start := func(n *corev1.Node) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.cancel[n.Name]; ok {
			return
		}
		rec := &nodeState{State: Pending}
		if prev, ok := recordFromLease(c.record(n.Name), refOf(n)); ok {
			rec = &prev
		}
		if reason, ok := n.Labels[meshpeers.QuarantineLabel]; ok && rec.State != Failed {
			// Quarantined, whatever the record says: stays Failed until it rejoins.
			rec = &nodeState{State: Failed, Reason: reason, Released: rec.Released}
		}
		rec.UID = n.UID
		c.records[n.Name] = rec
		nctx, cancel := context.WithCancel(ctx)
		c.cancel[n.Name] = cancel
		wake := make(chan struct{}, 1)
		c.notify[n.Name] = wake
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.follow(nctx, refOf(n), wake)
		}()
	}
	stop := func(name string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cancel, ok := c.cancel[name]; ok {
			cancel()
			delete(c.cancel, name)
			delete(c.records, name)
			delete(c.notify, name)
			c.o.Metrics.forget(name)
		}
	}
	// removed deletes the record of a deleted Node object (the garbage collector would too, by its owner
	// reference; a record of an earlier UID is never taken for a new node's anyway).
	removed := func(n *corev1.Node) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := deleteRecord(ctx, c.o.Client, c.record(n.Name), refOf(n)); err != nil && ctx.Err() == nil {
				c.log.Warn("the record of a deleted node stays; the garbage collector deletes it", "node", n.Name, "error", err)
			}
		}()
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				start(n)
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := cur.(*corev1.Node)
			if !ok1 || !ok2 {
				return
			}
			if o.UID != n.UID {
				// Deleted and created again under the same name between two events.
				stop(n.Name)
				removed(o)
				start(n)
				return
			}
			c.updated(o, n)
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				stop(n.Name)
				removed(n)
			}
		},
	}); err != nil {
		return err
	}
	go inf.RunWithContext(ctx)
	if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		c.log.Info("re-attestation controller following the nodes", "interval", c.o.Interval.String(), "taintAfter", c.o.TaintAfter.String())
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// record is the record of node name as last seen (nil if none).
func (c *Controller) record(name string) *coordinationv1.Lease {
	obj, ok, err := c.leases.GetByKey(RecordNamespace + "/" + name)
	if err != nil || !ok {
		return nil
	}
	return obj.(*coordinationv1.Lease)
}

// updated handles a change of a Node object: a node whose quarantine was lifted is checked again from
// scratch, at once.
func (c *Controller) updated(old, cur *corev1.Node) {
	_, wasQ := old.Labels[meshpeers.QuarantineLabel]
	_, isQ := cur.Labels[meshpeers.QuarantineLabel]
	if wasQ && !isQ {
		c.restart(cur.Name, cur.UID, "")
	}
}

// recordChanged handles a change of a record: a release by the join service after an attested rejoin makes
// the controller check the node again from scratch, at once.
func (c *Controller) recordChanged(l *coordinationv1.Lease) {
	released := l.Annotations[ReleasedAnnotation]
	if released == "" {
		return
	}
	c.restart(l.Name, types.UID(l.Annotations[NodeUIDAnnotation]), released)
}

// restart attests node name (its Node object's UID) from scratch, at once; released is the release it acts
// on ("" for a lifted quarantine; a release already acted on changes nothing).
func (c *Controller) restart(name string, uid types.UID, released string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.records[name]
	if !ok || rec.UID != uid || (released != "" && released == rec.Released) {
		return
	}
	if released == "" {
		released = rec.Released
	}
	if rec.State == Failed {
		c.log.Info("node released after an attested rejoin; attesting it again", "node", name)
	}
	*rec = nodeState{State: Pending, UID: uid, Released: released, Epoch: rec.Epoch + 1}
	select {
	case c.notify[name] <- struct{}{}:
	default:
	}
}

// follow checks the node name until ctx ends.
func (c *Controller) follow(ctx context.Context, node nodeRef, wake <-chan struct{}) {
	delay := time.Duration(0)
	if c.t.Jitter > 0 {
		// Spread the first checks of the nodes over the jitter.
		delay = time.Duration(mrand.Int64N(int64(c.t.Jitter)))
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		next := c.check(ctx, node)
		if ctx.Err() != nil {
			return
		}
		timer.Reset(next)
	}
}

// check attests the node once, records the result and acts on it; it returns the delay until the next check.
func (c *Controller) check(ctx context.Context, ref nodeRef) time.Duration {
	name := ref.Name
	obj, ok, err := c.nodes.GetByKey(name)
	if err != nil || !ok {
		return c.t.Interval
	}
	node := obj.(*corev1.Node)
	if node.UID != ref.UID {
		return c.t.Interval
	}
	c.mu.Lock()
	rec, ok := c.records[name]
	var epoch uint64
	if ok {
		epoch = rec.Epoch
	}
	c.mu.Unlock()
	if !ok {
		return c.t.Interval
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	start := time.Now()
	o, reason, image := c.attest(ctx, node)
	<-c.sem
	if ctx.Err() != nil {
		return 0
	}
	now := time.Now()
	c.o.Metrics.observe(name, o, reason, now.Sub(start))
	c.mu.Lock()
	rec, ok = c.records[name]
	if !ok || rec.Epoch != epoch {
		// Started over (released) while this check ran: its result is of before.
		c.mu.Unlock()
		return 0
	}
	before := *rec
	*rec = rec.observe(o, reason, now, c.t).stale(now, c.t)
	switch {
	case rec.State == Failed:
		rec.Image = ""
	case o == verified && rec.State == Trusted:
		// The image of the set this evidence matched, not of an earlier one: a node rebooted into another image
		// under the same name and UID is recorded with the one it proves now.
		rec.Image = image
	}
	after := *rec
	c.mu.Unlock()
	c.o.Metrics.setState(name, after)

	switch {
	case after.State == Failed && before.State != Failed:
		c.log.Warn("node failed its re-attestation: its evidence is wrong; quarantining it", "node", name, "reason", after.Reason)
	case after.State == Unreachable && before.State != Unreachable:
		c.log.Warn("node unreachable for re-attestation", "node", name, "error", after.Reason)
	case after.State == Trusted && before.State != Trusted:
		c.log.Info("node attested", "node", name)
	}
	if err := c.enforce(ctx, node, after, now); err != nil && ctx.Err() == nil {
		c.log.Error("acting on the node's attestation failed; retrying", "node", name, "state", after.State, "error", err)
	}
	if c.o.OnCheck != nil {
		c.o.OnCheck(name, after.State, after.Reason)
	}
	return after.next(c.t)
}

// attest asks the node for fresh evidence and judges it. A node that does not answer is unreachable, never
// wrong: only evidence received and verified wrong makes it so. Verified, it also returns the node image the
// evidence proves (see [judge]).
func (c *Controller) attest(ctx context.Context, node *corev1.Node) (outcome, string, string) {
	v, err := c.o.Policy()
	if err != nil {
		// Without a valid policy nobody is judged: a replaced configuration must not quarantine the cluster.
		return unreachable, "no valid attestation policy: " + err.Error(), ""
	}
	ip := internalIP(node)
	if ip == "" {
		return unreachable, "the Node object has no InternalIP", ""
	}
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return unreachable, err.Error(), ""
	}
	fctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	raw, err := c.o.Fetch(fctx, net.JoinHostPort(ip, strconv.Itoa(c.o.Port)), nonce)
	if err != nil {
		return unreachable, err.Error(), ""
	}
	return judge(ctx, v, node, raw, nonce)
}

// Reasons of a Failed node.
const (
	ReasonMeasurements = "measurements" // a measured PCR differs from the policy
	ReasonClusterID    = "cluster-id"   // PCR 15 does not hold this cluster's ID
	ReasonEvidence     = "evidence"     // not valid: signature, certificate chain, nonce (a replay), hardware minimums
	ReasonIdentity     = "identity"     // valid evidence of another node
	ReasonMeshKey      = "mesh-key"     // bound to another WireGuard key than the one the node recorded
)

// Judge is the controller's verdict on evidence node sent for nonce, checked against v (the cluster's member
// policy): Trusted, or Failed with the reason.
func Judge(ctx context.Context, v attestation.Validator, node *corev1.Node, evidence, nonce []byte) (State, string) {
	if o, reason, _ := judge(ctx, v, node, evidence, nonce); o != verified {
		return Failed, reason
	}
	return Trusted, ""
}

// judge validates evidence the node sent for nonce against v, and checks that it is the node's own and binds
// the mesh key recorded on its Node object. Verified, it returns the node image the evidence proves: the image
// the measurement set it matched names, if v tells it (policyupdate.ImageValidator), else "".
func judge(ctx context.Context, v attestation.Validator, node *corev1.Node, raw, nonce []byte) (outcome, string, string) {
	var (
		userData []byte
		image    string
		err      error
	)
	if iv, ok := v.(policyupdate.ImageValidator); ok {
		userData, image, err = iv.ValidateImage(ctx, raw, nonce)
	} else {
		userData, err = v.Validate(ctx, raw, nonce)
	}
	if err != nil {
		var mismatch *measurements.Error
		if errors.As(err, &mismatch) {
			for _, m := range measurements.Fatal(mismatch.Mismatches) {
				if m.PCR == measurements.PCRClusterID {
					return wrong, ReasonClusterID + ": " + err.Error(), ""
				}
			}
			return wrong, ReasonMeasurements + ": " + err.Error(), ""
		}
		return wrong, ReasonEvidence + ": " + err.Error(), ""
	}
	// The document validated, so its attestation key certificate chains to the AK roots: its subject is the
	// name the provider certified for that vTPM.
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		return wrong, ReasonEvidence + ": " + err.Error(), ""
	}
	if subject := doc.AttestationKeySubject(); subject != node.Name {
		return wrong, fmt.Sprintf("%s: the evidence is node %q's, not %q's", ReasonIdentity, subject, node.Name), ""
	}
	if recorded, ok := node.Annotations[meshpeers.KeyAnnotation]; ok {
		key, err := wgmesh.ParseKey(recorded)
		if err != nil {
			// Malformed: the node is no peer anyway (see meshpeers); its evidence binds its real key.
			return verified, "", image
		}
		if !bytes.Equal(userData, verifyservice.MeshKeyUserData(key)) {
			return wrong, ReasonMeshKey + ": the evidence binds another WireGuard key than the one recorded on the Node object", ""
		}
	}
	return verified, "", image
}

// internalIP is the node's InternalIP address.
func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
