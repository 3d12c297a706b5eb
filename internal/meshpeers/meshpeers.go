// Package meshpeers keeps the cluster's record of its WireGuard mesh: the public key of every node, as an
// annotation on its Node object, which the node publishes itself with its kubelet's credentials (the Node
// authorizer lets a node change its own Node object only). Only nodes the join service admitted have such
// credentials. Every node follows the record to know its peers, through one watch of the Node objects' metadata
// ([Watcher]), so that the API server's load grows with the changes, not with the square of the nodes; a node
// deleted from the cluster is no longer a peer of any node.
//
// Before its kubelet has registered, a joining node must already reach the control plane through the tunnel:
// the join service that admits it tells the WireGuard agent of its own node (LocalSocket), which makes the
// new node a peer until the node has published its key.
//
// Only public keys come from here; the record holds no secret. Each pair's WireGuard preshared key derives
// from the mesh's root key, which a node gets over aTLS from the join service (joinservice.MeshRootKeyID).
// A peer's addresses (its endpoint and what it may send from) come from the
// provider, which assigns them, so that a node that edits its own Node object cannot claim another node's
// traffic.
package meshpeers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

// KeyAnnotation holds a node's WireGuard public key (base64).
const KeyAnnotation = "constellation.dev/wireguard-public-key"

// QuarantineLabel marks a node that failed its continuous attestation (package reattestation): it is no peer of
// any node, whatever key it recorded. Its value is the reason. The prefix node-restriction.kubernetes.io/ is
// one the API server's NodeRestriction admission forbids kubelets to set or remove, so the node itself
// cannot lift its quarantine.
const QuarantineLabel = "node-restriction.kubernetes.io/constellation-quarantined"

// Port is the UDP port of every node's WireGuard interface.
const Port = 51820

// readerRole names the permission of every node to read the record.
const readerRole = "constellation:mesh-peers"

// Manifests are the Kubernetes objects of the record: every node (the group system:nodes) may list and watch
// the Node objects, to read its peers' keys. The Node authorizer alone lets a node read only its own.
func Manifests() ([]byte, error) {
	meta := map[string]any{"name": readerRole, "labels": map[string]string{"app.kubernetes.io/part-of": "constellation"}}
	return json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": []map[string]any{
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
			"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"list", "watch"}}},
		},
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": readerRole},
			"subjects": []map[string]any{{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}},
		},
	}}, "", "  ")
}

// Peer is a node of the mesh as the cluster records it.
type Peer struct {
	Node      string
	PublicKey wgmesh.Key
}

type node struct {
	Metadata struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
}

// ErrNotRegistered is returned by Publish while the node has no Node object yet.
var ErrNotRegistered = errors.New("the node has not registered with the API server yet")

// Publish records key as the WireGuard public key of the node name, on its Node object, which its kubelet
// must have created.
func Publish(ctx context.Context, api *kubeapi.Client, name string, key wgmesh.Key) error {
	if name == "" || key == (wgmesh.Key{}) {
		return fmt.Errorf("publishing a WireGuard key: node name %q or key missing", name)
	}
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]string{KeyAnnotation: key.String()}}}
	err := api.Do(ctx, http.MethodPatch, "/api/v1/nodes/"+url.PathEscape(name), kubeapi.MergePatch, patch, nil)
	if kubeapi.IsStatus(err, http.StatusNotFound) {
		return ErrNotRegistered
	}
	if err != nil {
		return fmt.Errorf("publishing the WireGuard key of node %s: %w", name, err)
	}
	return nil
}

// List returns the nodes with a recorded key, by name, and the names of nodes whose recorded key is
// malformed (they are no peers).
func List(ctx context.Context, api *kubeapi.Client) (peers []Peer, malformed []string, err error) {
	var list struct{ Items []node }
	if err := api.Do(ctx, http.MethodGet, "/api/v1/nodes", "", nil, &list); err != nil {
		return nil, nil, fmt.Errorf("listing the nodes: %w", err)
	}
	for _, n := range list.Items {
		peers, malformed = collect(peers, malformed, n.Metadata.Name, n.Metadata.Labels, n.Metadata.Annotations)
	}
	sortRecord(peers, malformed)
	return peers, malformed, nil
}

// collect adds the node's recorded key to peers, or its name to malformed if the key does not parse; a node
// without a key, or quarantined ([QuarantineLabel]), is neither.
func collect(peers []Peer, malformed []string, name string, labels, annotations map[string]string) ([]Peer, []string) {
	raw, ok := annotations[KeyAnnotation]
	if _, quarantined := labels[QuarantineLabel]; !ok || quarantined {
		return peers, malformed
	}
	key, err := wgmesh.ParseKey(raw)
	if err != nil || key == (wgmesh.Key{}) {
		return peers, append(malformed, name)
	}
	return append(peers, Peer{Node: name, PublicKey: key}), malformed
}

func sortRecord(peers []Peer, malformed []string) {
	sort.Slice(peers, func(i, j int) bool { return peers[i].Node < peers[j].Node })
	sort.Strings(malformed)
}
