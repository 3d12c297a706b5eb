package keyservice

import (
	"path/filepath"
	"strconv"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/version"
)

// Name is the key service's DaemonSet in kube-system.
const Name = "key-service"

// Image is the key service's container image. It is built into the node image with the same version as the
// bootstrapper that deploys it, and never pulled.
func Image() string { return "constellation.local/key-service:" + version.Version }

// clusterRoleName names the key service's only permission: reading Node objects, for their quarantine mark.
const clusterRoleName = "constellation:" + Name

// Manifests returns the key service's DaemonSet, as a JSON list for `kubectl apply`: one pod on node (the
// control-plane node whose bootstrapper holds the master secret), on the host network at [Port]. Its service
// account may only read Node objects, to refuse keys to a quarantined node (see package reattestation). It reaches
// the node's bootstrapper for the master secret ([SecretSocket]) and for its evidence (the attestation agent),
// and its provider (name, at endpoint), to tell control-plane nodes, its only callers, from workers.
func Manifests(node, providerName, providerEndpoint string) ([]byte, error) {
	clusterMeta := map[string]any{"name": clusterRoleName, "labels": kubeapi.Labels(Name)}
	return kubeapi.List(
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": kubeapi.Meta(Name, Name)},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": clusterMeta,
			"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"get"}}},
		},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": clusterMeta,
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": clusterRoleName},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		kubeapi.HostService{
			Name:  Name,
			Image: Image(),
			Args: []string{
				"--listen=$(NODE_IP):" + strconv.Itoa(Port),
				"--provider=" + providerName,
				"--provider-endpoint=" + providerEndpoint,
				"--api-server=https://$(NODE_IP):6443",
			},
			ServiceAccount: Name,
			NodeSelector:   map[string]string{"kubernetes.io/hostname": node},
			Tolerations:    []map[string]any{kubeapi.ControlPlaneToleration},
			Volumes: []kubeapi.Volume{
				{Name: "agent", MountPath: agent.SocketPath, HostPath: agent.SocketPath, HostPathType: "Socket"},
				{Name: "secret", MountPath: SecretSocket, HostPath: SecretSocket, HostPathType: "Socket"},
				// The record of which node each state disk belongs to, on this node's encrypted state disk.
				{Name: "disk-bindings", MountPath: filepath.Dir(DiskBindingsFile), HostPath: filepath.Dir(DiskBindingsFile), HostPathType: "DirectoryOrCreate"},
			},
		}.DaemonSet(),
	)
}
