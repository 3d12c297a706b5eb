package reattestation

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// RecordNamespace holds the controller's record of every node: one Lease per node, named like the node. Only
// the join service's service account (and administrators) may write there; a node's kubelet may not (the Node
// authorizer grants kubelets Leases in kube-node-lease only, and no role grants them anything here). The Node
// object itself is no place for it: a kubelet may write its own Node's annotations.
const RecordNamespace = "constellation-attestation"

// Annotations of a record (a Lease in [RecordNamespace]). Its spec says the rest: renewTime is when the node's
// evidence last verified, acquireTime when it entered its state, holderIdentity the controller instance that
// wrote it, and leaseDurationSeconds how long a Trusted record stays valid without a newer verification.
const (
	// StateAnnotation is the node's state (see [State], or [ReleasedState]), with the reason after a space if
	// it has one.
	StateAnnotation = "constellation.dev/attestation-state"
	// AlertAnnotation says why a Failed node is not quarantined (a control-plane node that etcd's quorum
	// needs, enforcement paused, or the quarantine deferred).
	AlertAnnotation = "constellation.dev/attestation-alert"
	// NodeUIDAnnotation is the UID of the Node object the record is of: a record of another UID (a node of the
	// same name deleted before) is no record of this node.
	NodeUIDAnnotation = "constellation.dev/node-uid"
	// ReleasedAnnotation is when the join service last released the node after an attested rejoin
	// (RFC 3339 with nanoseconds); a new value makes the controller attest the node from scratch.
	ReleasedAnnotation = "constellation.dev/attestation-released"
	// AttestedImageAnnotation is the digest ("sha256:<hex>") of the node image the node's evidence last proved:
	// the image the measurement set it matched names (package policyupdate). None if that set names no image,
	// and none on a Failed or Pending record. It counts only while the record is Trusted ([Record.Trusted]).
	AttestedImageAnnotation = "constellation.dev/attested-image"
)

// Record is the controller's record of one node as the cluster keeps it.
type Record struct {
	// State is the node's state, or [ReleasedState] right after the join service released it.
	State  string
	Reason string
	Alert  string
	// LastVerified is when the node's evidence last verified (zero: never); Since when it entered State.
	LastVerified, Since time.Time
	// ValidFor is how long after LastVerified a Trusted record holds.
	ValidFor time.Duration
	// Released is the join service's last release of the node ("" if none).
	Released string
	// Holder is the controller instance that wrote the record.
	Holder string
	// Image is the node image the node's evidence last proved ("" if none: see [AttestedImageAnnotation]). It
	// counts only while the record is Trusted: [Record.TrustedImage].
	Image string
}

// RecordOf reads the record of node (with its Node object's UID) from the Lease; ok is false if the Lease
// is no record of that node (another UID, or none).
func RecordOf(lease *coordinationv1.Lease, name string, uid types.UID) (Record, bool) {
	if lease == nil || lease.Name != name || uid == "" || lease.Annotations[NodeUIDAnnotation] != string(uid) {
		return Record{}, false
	}
	r := Record{Alert: lease.Annotations[AlertAnnotation], Released: lease.Annotations[ReleasedAnnotation], Image: lease.Annotations[AttestedImageAnnotation]}
	r.State, r.Reason, _ = strings.Cut(lease.Annotations[StateAnnotation], " ")
	if s := lease.Spec; s.RenewTime != nil {
		r.LastVerified = s.RenewTime.Time
	}
	if s := lease.Spec; s.AcquireTime != nil {
		r.Since = s.AcquireTime.Time
	}
	if d := lease.Spec.LeaseDurationSeconds; d != nil {
		r.ValidFor = time.Duration(*d) * time.Second
	}
	if h := lease.Spec.HolderIdentity; h != nil {
		r.Holder = *h
	}
	return r, true
}

// Trusted tells whether the record vouches for the node at now: Trusted, and verified within ValidFor.
func (r Record) Trusted(now time.Time) bool {
	return r.State == string(Trusted) && !r.LastVerified.IsZero() && now.Sub(r.LastVerified) <= r.ValidFor
}

// TrustedImage is the node image the record vouches for at now: its image while it is Trusted, else "".
func (r Record) TrustedImage(now time.Time) string {
	if !r.Trusted(now) {
		return ""
	}
	return r.Image
}

// nodeRef is the Node object a record is of.
type nodeRef struct {
	Name string
	UID  types.UID
}

func refOf(n *corev1.Node) nodeRef { return nodeRef{n.Name, n.UID} }

// ownRecord makes lease the (empty) record of node if it is not already: a record left from an earlier Node
// object of the same name starts over. It tells whether it changed anything.
func ownRecord(lease *coordinationv1.Lease, node nodeRef) bool {
	if lease.Annotations[NodeUIDAnnotation] == string(node.UID) && len(lease.OwnerReferences) == 1 && lease.OwnerReferences[0].UID == node.UID {
		return false
	}
	lease.Labels = kubeapi.Labels("reattest")
	lease.Annotations = map[string]string{NodeUIDAnnotation: string(node.UID)}
	// The garbage collector deletes the record with its Node object (the controller deletes it as well).
	lease.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
	lease.Spec = coordinationv1.LeaseSpec{}
	return true
}

// setRecord writes rec into lease (the controller's view of the node: holder is the controller's identity,
// validFor how long a Trusted record holds) and tells whether that changed it. The verification time is
// written when it advanced by at least refresh, so that not every check costs a write.
func setRecord(lease *coordinationv1.Lease, rec nodeState, holder string, validFor, refresh time.Duration) bool {
	changed := setString(lease.Annotations, StateAnnotation, stateValue(rec))
	if s := lease.Spec.AcquireTime; s == nil || !s.Time.Equal(rec.Since.Truncate(time.Microsecond)) {
		if !rec.Since.IsZero() {
			lease.Spec.AcquireTime = &metav1.MicroTime{Time: rec.Since.Truncate(time.Microsecond)}
			changed = true
		}
	}
	if !rec.LastVerified.IsZero() {
		if r := lease.Spec.RenewTime; r == nil || rec.LastVerified.Sub(r.Time) >= refresh {
			lease.Spec.RenewTime = &metav1.MicroTime{Time: rec.LastVerified.Truncate(time.Microsecond)}
			changed = true
		}
	}
	secs := int32(min(math.Ceil(validFor.Seconds()), math.MaxInt32))
	if d := lease.Spec.LeaseDurationSeconds; d == nil || *d != secs {
		lease.Spec.LeaseDurationSeconds = &secs
		changed = true
	}
	if h := lease.Spec.HolderIdentity; holder != "" && (h == nil || *h != holder) {
		lease.Spec.HolderIdentity = &holder
		changed = true
	}
	if rec.Image != "" {
		changed = setString(lease.Annotations, AttestedImageAnnotation, rec.Image) || changed
	} else if _, ok := lease.Annotations[AttestedImageAnnotation]; ok {
		delete(lease.Annotations, AttestedImageAnnotation)
		changed = true
	}
	return changed
}

// stateValue is the state annotation of a record: the state, and the reason after a space.
func stateValue(rec nodeState) string {
	if rec.State == Failed && rec.Reason != "" {
		return string(Failed) + " " + rec.Reason
	}
	return string(rec.State)
}

// recordFromLease is the controller's starting point for a node from its record (a new leader continues
// where the last one left); ok is false without a record of this node.
func recordFromLease(lease *coordinationv1.Lease, node nodeRef) (nodeState, bool) {
	r, ok := RecordOf(lease, node.Name, node.UID)
	if !ok {
		return nodeState{}, false
	}
	s := nodeState{Since: r.Since}
	switch State(r.State) {
	case Trusted:
		s.State, s.LastVerified, s.Image = Trusted, r.LastVerified, r.Image
	case Unreachable:
		s.State, s.Reason, s.LastVerified, s.UnreachableSince, s.Image = Unreachable, r.Reason, r.LastVerified, r.Since, r.Image
	case Failed:
		s.State, s.Reason = Failed, r.Reason
	default: // Pending, or released after a rejoin
		s.State = Pending
	}
	return s, true
}

// updateRecord changes the record of node with mutate (which reports whether it changed anything), creating it
// if there is none, and retrying on conflicts. cached, if not nil, is the record as last seen (it saves a read).
func updateRecord(ctx context.Context, client kubernetes.Interface, node nodeRef, cached *coordinationv1.Lease, mutate func(*coordinationv1.Lease) bool) error {
	leases := client.CoordinationV1().Leases(RecordNamespace)
	first := true
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var lease *coordinationv1.Lease
		if first && cached != nil {
			lease = cached.DeepCopy()
		} else {
			var err error
			lease, err = leases.Get(ctx, node.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				lease = nil
			} else if err != nil {
				return err
			}
		}
		first = false
		if lease == nil {
			lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: node.Name, Namespace: RecordNamespace}}
			ownRecord(lease, node)
			mutate(lease)
			_, err := leases.Create(ctx, lease, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Written meanwhile by another: read it and try again.
				return apierrors.NewConflict(coordinationv1.Resource("leases"), node.Name, err)
			}
			return err
		}
		changed := ownRecord(lease, node)
		if !mutate(lease) && !changed {
			return nil
		}
		_, err := leases.Update(ctx, lease, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("writing the attestation record of node %s (Lease %s/%s): %w", node.Name, RecordNamespace, node.Name, err)
	}
	return nil
}

// deleteRecord deletes the record of the deleted Node object node, if the record is of it.
func deleteRecord(ctx context.Context, client kubernetes.Interface, lease *coordinationv1.Lease, node nodeRef) error {
	if lease == nil || lease.Annotations[NodeUIDAnnotation] != string(node.UID) {
		return nil
	}
	uid := lease.UID
	err := client.CoordinationV1().Leases(RecordNamespace).Delete(ctx, lease.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting the attestation record of the deleted node %s: %w", node.Name, err)
	}
	return nil
}

func setString(m map[string]string, key, value string) bool {
	if v, ok := m[key]; ok && v == value {
		return false
	}
	m[key] = value
	return true
}
