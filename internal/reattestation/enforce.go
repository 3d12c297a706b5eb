package reattestation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/constellation-dev/constellation/internal/meshpeers"
)

// The cluster-wide switch of enforcement: a ConfigMap in kube-system that only administrators can write
// (nodes and the cluster's services may not). With data {"enforcement": "paused"} the controller keeps
// attesting and marks Failed nodes, but quarantines none.
const (
	ControlNamespace = "kube-system"
	ControlConfigMap = "reattest-control"
	EnforcementKey   = "enforcement"
	Paused           = "paused"
)

// enforce records the node's state (its record in [RecordNamespace]) and brings the Node object in line with
// it: the NoSchedule taint of an unreachable node, the quarantine of a failed one (within the safety rails).
// The Node object is written only when that changes, never for the record.
func (c *Controller) enforce(ctx context.Context, node *corev1.Node, rec nodeState, now time.Time) error {
	ref := refOf(node)
	switch rec.State {
	case Failed:
		alert, err := c.quarantine(ctx, node.Name, rec, now)
		return errors.Join(err, c.writeRecord(ctx, ref, rec, alert))
	case Unreachable:
		var err error
		if rec.taintUnreachable(now, c.t) && !tainted(node, UnreachableTaint) {
			err = c.update(ctx, node.Name, func(n *corev1.Node) bool {
				if !addTaint(n, corev1.Taint{Key: UnreachableTaint, Effect: corev1.TaintEffectNoSchedule}) {
					return false
				}
				c.log.Warn("node without evidence for too long: tainted NoSchedule", "node", n.Name, "since", rec.UnreachableSince.Format(time.RFC3339))
				return true
			})
		}
		return errors.Join(err, c.writeRecord(ctx, ref, rec, ""))
	case Trusted:
		var err error
		if tainted(node, UnreachableTaint) {
			err = c.update(ctx, node.Name, func(n *corev1.Node) bool { return removeTaint(n, UnreachableTaint) })
		}
		return errors.Join(err, c.writeRecord(ctx, ref, rec, ""))
	}
	return nil
}

// writeRecord writes the node's record, with alert (why a Failed node is not quarantined; "": none). A
// release by the join service the controller has not acted on yet is not overwritten: the controller starts
// over with the node when it sees it.
func (c *Controller) writeRecord(ctx context.Context, node nodeRef, rec nodeState, alert string) error {
	return updateRecord(ctx, c.o.Client, node, c.record(node.Name), func(l *coordinationv1.Lease) bool {
		if l.Annotations[ReleasedAnnotation] != rec.Released {
			return false
		}
		changed := setRecord(l, rec, c.identity, RecordValidity(c.t.Interval), c.t.Interval)
		if alert != "" {
			changed = setString(l.Annotations, AlertAnnotation, alert) || changed
		} else if _, ok := l.Annotations[AlertAnnotation]; ok {
			delete(l.Annotations, AlertAnnotation)
			changed = true
		}
		return changed
	})
}

// RecordValidity is how long a Trusted record holds after the node's last verification, for a controller
// that checks every interval: the record's verification time is refreshed at least every two intervals and
// a half (see setRecord), and a margin covers a change of leader.
func RecordValidity(interval time.Duration) time.Duration { return 3 * interval }

// quarantine isolates a failed node: the label no kubelet may remove (every mesh agent drops it as a peer, the
// key service refuses it keys), the NoExecute taint (its pods run elsewhere) and the cordon. Not where it
// would break etcd's quorum, not while enforcement is paused, and at most one node per interval: then it
// returns the alert, why the node is not quarantined.
func (c *Controller) quarantine(ctx context.Context, name string, rec nodeState, now time.Time) (alert string, err error) {
	obj, ok, err := c.nodes.GetByKey(name)
	if err != nil || !ok {
		return "", err
	}
	node := obj.(*corev1.Node)
	if quarantined(node) {
		return "", nil
	}
	paused, err := c.paused(ctx)
	if err != nil {
		return "", fmt.Errorf("reading the enforcement switch (ConfigMap %s/%s): %w", ControlNamespace, ControlConfigMap, err)
	}
	if paused {
		c.log.Error("ALERT: node failed its re-attestation, but enforcement is paused: not quarantined", "node", name, "reason", rec.Reason)
		return "enforcement paused: not quarantined", nil
	}
	if _, cp := node.Labels[controlPlaneLabel]; cp {
		healthy, total := c.controlPlane(name)
		if !quorumWithout(healthy, total) {
			c.log.Error("ALERT: control-plane node failed its re-attestation; not quarantined automatically, as etcd would lose its quorum of trusted members. Replace the node", "node", name, "reason", rec.Reason, "trustedControlPlane", healthy, "controlPlane", total)
			return fmt.Sprintf("not quarantined: etcd quorum (%d of %d control-plane nodes not failed)", healthy, total), nil
		}
	}
	c.mu.Lock()
	if !c.lastAction.IsZero() && now.Sub(c.lastAction) < c.t.Interval {
		c.mu.Unlock()
		c.log.Warn("node failed its re-attestation; its quarantine waits: at most one quarantine per interval", "node", name, "reason", rec.Reason)
		return "quarantine deferred: at most one per interval", nil
	}
	c.lastAction = now
	c.mu.Unlock()
	err = c.update(ctx, name, func(n *corev1.Node) bool {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[meshpeers.QuarantineLabel] = labelValue(rec.Reason)
		addTaint(n, corev1.Taint{Key: QuarantineTaint, Value: labelValue(rec.Reason), Effect: corev1.TaintEffectNoExecute})
		n.Spec.Unschedulable = true
		return true
	})
	if err != nil {
		c.mu.Lock()
		c.lastAction = time.Time{}
		c.mu.Unlock()
		return "", err
	}
	c.o.Metrics.quarantined()
	c.log.Warn("node quarantined: tainted NoExecute, cordoned, dropped from the mesh, refused keys; it rejoins only after a reboot and a fresh attestation", "node", name, "reason", rec.Reason)
	return "", nil
}

// quorumWithout tells whether etcd keeps a majority of its members (total, one per control-plane node) among
// the healthy other control-plane nodes when a failed one is quarantined.
func quorumWithout(healthyOthers, total int) bool {
	return healthyOthers > total/2
}

// controlPlane counts the control-plane nodes, and those of them other than except that are neither failed
// nor quarantined.
func (c *Controller) controlPlane(except string) (healthy, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, obj := range c.nodes.List() {
		n := obj.(*corev1.Node)
		if _, cp := n.Labels[controlPlaneLabel]; !cp {
			continue
		}
		total++
		if n.Name == except {
			continue
		}
		if rec, ok := c.records[n.Name]; (ok && rec.State == Failed) || quarantined(n) {
			continue
		}
		healthy++
	}
	return healthy, total
}

// paused reads the enforcement switch.
func (c *Controller) paused(ctx context.Context) (bool, error) {
	cm, err := c.o.Client.CoreV1().ConfigMaps(ControlNamespace).Get(ctx, ControlConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return cm.Data[EnforcementKey] == Paused, nil
}

// update changes the Node object with mutate (which reports whether it changed anything), retrying on
// conflicts with other writers (the node's kubelet, the node lifecycle controller).
func (c *Controller) update(ctx context.Context, name string, mutate func(*corev1.Node) bool) error {
	return updateNode(ctx, c.o.Client, name, mutate)
}

func updateNode(ctx context.Context, client kubernetes.Interface, name string, mutate func(*corev1.Node) bool) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !mutate(n) {
			return nil
		}
		_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

// Release lifts the quarantine of a node that has just rejoined with fresh, valid evidence (the join service
// calls it when it admits the node): the label, the taints and the cordon go, its record says so
// ([ReleasedState], [ReleasedAnnotation]), and the controller attests the node from scratch. A node without a
// Node object (a first join) has nothing to release.
func Release(ctx context.Context, client kubernetes.Interface, name string) (released bool, err error) {
	node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("releasing node %s from its quarantine: reading its Node object: %w", name, err)
	}
	lease, err := client.CoordinationV1().Leases(RecordNamespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = nil
	} else if err != nil {
		return false, fmt.Errorf("releasing node %s from its quarantine: reading its attestation record: %w", name, err)
	}
	rec, _ := RecordOf(lease, name, node.UID)
	err = updateNode(ctx, client, name, func(n *corev1.Node) bool {
		_, q := n.Labels[meshpeers.QuarantineLabel]
		released = q
		delete(n.Labels, meshpeers.QuarantineLabel)
		changed := removeTaint(n, QuarantineTaint) || q
		changed = removeTaint(n, UnreachableTaint) || changed
		if q {
			n.Spec.Unschedulable = false
		}
		return changed
	})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("releasing node %s from its quarantine: %w", name, err)
	}
	if !released && rec.State != string(Failed) {
		return released, nil
	}
	at := time.Now().UTC().Format(time.RFC3339Nano)
	err = updateRecord(ctx, client, refOf(node), lease, func(l *coordinationv1.Lease) bool {
		l.Annotations[StateAnnotation] = ReleasedState
		l.Annotations[ReleasedAnnotation] = at
		delete(l.Annotations, AlertAnnotation)
		return true
	})
	if err != nil {
		return released, fmt.Errorf("releasing node %s from its quarantine: %w", name, err)
	}
	return released, nil
}

// Quarantined tells whether the node name is quarantined, by its Node object (a missing one is not).
func Quarantined(ctx context.Context, client kubernetes.Interface, name string) (bool, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the Node object of %s: %w", name, err)
	}
	return quarantined(n), nil
}

func quarantined(n *corev1.Node) bool {
	_, q := n.Labels[meshpeers.QuarantineLabel]
	return q
}

// labelValue makes a reason a valid label value: its first word, at most 63 characters.
func labelValue(reason string) string {
	v, _, _ := strings.Cut(reason, ":")
	v = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '-'
	}, strings.TrimSpace(v))
	if len(v) > 63 {
		v = v[:63]
	}
	return strings.Trim(v, "-_.")
}

func tainted(n *corev1.Node, key string) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == key })
}

func addTaint(n *corev1.Node, t corev1.Taint) bool {
	if slices.ContainsFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == t.Key && x.Effect == t.Effect }) {
		return false
	}
	now := metav1.Now()
	if t.Effect == corev1.TaintEffectNoExecute {
		t.TimeAdded = &now
	}
	n.Spec.Taints = append(n.Spec.Taints, t)
	return true
}

func removeTaint(n *corev1.Node, key string) bool {
	before := len(n.Spec.Taints)
	n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == key })
	return len(n.Spec.Taints) != before
}
