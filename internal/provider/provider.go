// Package provider is the seam between a node and the platform it runs on: what the node side (the
// bootstrapper and the services it deploys into the cluster) asks of its provider. A provider implements
// [Node] in its own package; the node side depends only on this package, and package providers picks the
// implementation by name. Nothing a provider answers is trusted for what it claims: the provider is the host,
// and its answers are checked against attestation wherever they matter (a node's name and role come from its
// certified attestation key, its boot from a quote over its event log).
package provider

import (
	"context"
	"crypto/x509"
	"net/netip"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
)

// Roles of instances.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Instance is one node as the provider knows it.
type Instance struct {
	Name string `json:"name"`
	Role string `json:"role"`
	IP   string `json:"ip"`
	// PodCIDR is the node's pod address range, routed to the node by the provider's network.
	PodCIDR string `json:"podCIDR"`
}

// Node is what a node asks of its provider.
type Node interface {
	// Name is the provider's name, e.g. "mini"; Endpoint is where the services in the cluster reach it. Both
	// are handed to those services, which open their own Node with them (package providers).
	Name() string
	Endpoint() string
	// Self is the calling node; Instances are all nodes of the cluster.
	Self(ctx context.Context) (Instance, error)
	Instances(ctx context.Context) ([]Instance, error)
	// IsControlPlane tells whether the node named name is a control-plane node.
	IsControlPlane(ctx context.Context, name string) (bool, error)
	// EventLog is the TCG event log of the calling node's boot.
	EventLog(ctx context.Context) ([]byte, error)
	// InitSecretHash is the SHA-256 of the cluster's init secret, as the operator handed it to the provider;
	// nil (and no error) if there is none.
	InitSecretHash(ctx context.Context) ([]byte, error)
	// PeerPolicy is the peer policy hint the operator handed the provider (the JSON form of a
	// policyupdate.PeerHint): the measurement sets of the peers a joining node trusts besides those of its own
	// image; nil (and no error) if there is none. A node measures it before it trusts any peer by it.
	PeerPolicy(ctx context.Context) ([]byte, error)
	// AKRoots are the CA certificates that certify nodes' attestation keys; Challenge and Complete enroll the
	// calling node's attestation key with that CA (akca.Enroll).
	AKRoots(ctx context.Context) ([]*x509.Certificate, error)
	akca.Enroller
	// Variant is the attestation variant the provider's nodes issue.
	Variant() attestation.Variant
	// Networks are the cluster's pod network (every node's PodCIDR is inside it) and service network.
	Networks() (pods, services netip.Prefix)
}

// Fleet is what the cluster's upgrade controller asks of its provider.
type Fleet interface {
	// CreateNode boots a new node of role (RoleControlPlane or RoleWorker) from the node image with the given digest ("sha256:<hex>"), which the operator made known to the provider; it returns the new node's name.
	CreateNode(ctx context.Context, role, imageDigest string) (string, error)
	// DeleteNode powers the node off and removes it with its state disk and TPM.
	DeleteNode(ctx context.Context, name string) error
}
