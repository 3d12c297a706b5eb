// Package upgrade is the cluster's upgrade controller: it moves every node to a new node image (and Kubernetes
// version) by replacing nodes, never by changing one in place. Driven by the NodeUpgrade custom resource
// (package v1alpha1), it replaces one node at a time, control plane before workers: it asks the provider for a
// new node of the same role, waits until that node has joined (attested by the join service) and is Ready,
// cordons the old node and evicts its pods through the Eviction API (PodDisruptionBudgets hold it back, pods are
// never deleted directly), removes a control-plane node's etcd member, and has the provider delete the old
// node. Every failure stops the upgrade (phase Failed, naming the node and the step); nothing continues past it.
//
// A node image determines its nodes' Kubernetes version. An upgrade to an image of the next Kubernetes version
// goes through kubeadm's upgrade path: the first control-plane replacement runs kubeadm upgrade apply once it
// joined, and no worker is replaced before the control plane is on the new version (see kubernetes.go). A
// replacement on which kubeadm failed reports it on its Node object; the upgrade stops with kubeadm's error.
//
// A NodeUpgrade whose target changes finishes the node in flight, then starts over from the nodes as they are.
// That is how an upgrade is rolled back ('constellation upgrade abort' turns it toward the image the cluster ran
// before): the nodes it replaced already run the new image by their attestation, so they are replaced again, the
// control plane first, one extra node at a time, as PodDisruptionBudgets allow.
//
// The NodeUpgrade's status is the controller's only memory: a controller that restarts, or whose pod is
// evicted from the node it drains, resumes from there.
//
// A node's image is what attestation proved, never what the node or the provider says: the node's record in
// reattestation.RecordNamespace (which only the join service's service account writes), bound to the Node
// object's UID and only while it is Trusted, names the image of the measurement set the node's evidence last
// matched (reattestation.AttestedImageAnnotation; the sets name their images under the MAC of the measurement
// policy, package policyupdate). A replacement counts only once its record proves the wanted image; a node
// whose record proves no image, or another, counts as not upgraded. Nothing a kubelet can write on its Node
// object (annotations, labels) is read for it.
package upgrade

import (
	"context"
	"errors"
)

// controlPlaneLabel marks control-plane nodes (kubeadm sets it).
const controlPlaneLabel = "node-role.kubernetes.io/control-plane"

// Roles of nodes, as the provider names them.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Fleet is what the controller asks of the provider: the provider's authenticated node management.
type Fleet interface {
	// CreateNode boots a new node of the role (RoleControlPlane, RoleWorker) from the node image with the
	// digest and returns the name its Node object will have. The node joins the cluster by itself.
	CreateNode(ctx context.Context, role, imageDigest string) (string, error)
	// DeleteNode removes the node (its machine, state disk and TPM). A node that is already gone is no error:
	// a controller that restarted may ask twice.
	DeleteNode(ctx context.Context, name string) error
}

// Etcd is the control plane's etcd membership.
type Etcd interface {
	// RemoveMember removes the etcd member of the control-plane node name, but only once the member of its
	// replacement has started and votes; until then it returns an error that wraps [ErrNotYet]. A node without a
	// member is no error (it was removed already).
	RemoveMember(ctx context.Context, name, replacement string) error
}

// ErrNotYet says that a step waits for the cluster: try again later.
var ErrNotYet = errors.New("not yet")
