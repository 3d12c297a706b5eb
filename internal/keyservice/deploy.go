package keyservice

import (
	"path/filepath"
	"strconv"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/version"
)

// Name is the key service's DaemonSet (and service account) in kube-system.
const Name = "key-service"

// Image is the key service's container image. It is built into the node image with the same version as the
// bootstrapper that deploys it, and never pulled.
func Image() string { return "constellation.local/key-service:" + version.Version }

// clusterRoleName names the key service's only permission outside its namespace: reading Node objects, for
// their quarantine mark.
const clusterRoleName = "constellation:" + Name

// Manifests returns the key service's objects, as a JSON list for `kubectl apply`: a DaemonSet with one pod on
// every control-plane node, on the host network at [Port]; the namespace of the shared disk bindings
// ([DiskBindingsNamespace]); and a service account that may only read and create ConfigMaps there (create, not
// update or delete: a binding is made once, immutable). The pod reaches its node's bootstrapper for the master
// secret ([SecretSocket]) and for its evidence (the attestation agent), its directory on the node's encrypted
// state disk for the measurement policy in force ([PolicyFile]), its node's API server for the
// bindings and for the Node objects' quarantine mark (a ClusterRole lets it get Nodes, nothing else; see
// package reattestation), the legacy bindings file on its node's state disk (moved into the shared record once), and its
// provider (name, at endpoint), to tell control-plane nodes, its only callers, from workers.
func Manifests(providerName, providerEndpoint string) ([]byte, error) {
	clusterMeta := map[string]any{"name": clusterRoleName, "labels": kubeapi.Labels(Name)}
	meta := func(name string) map[string]any {
		m := kubeapi.Meta(Name, name)
		m["namespace"] = DiskBindingsNamespace
		return m
	}
	service := kubeapi.HostService{
		Name:  Name,
		Image: Image(),
		Args: []string{
			"--listen=$(NODE_IP):" + strconv.Itoa(Port),
			"--policy-listen=$(NODE_IP):" + strconv.Itoa(PolicyPort),
			"--api-server=https://$(NODE_IP):6443",
			"--provider=" + providerName,
			"--provider-endpoint=" + providerEndpoint,
		},
		NodeSelector:   map[string]string{"node-role.kubernetes.io/control-plane": ""},
		Tolerations:    []map[string]any{kubeapi.ControlPlaneToleration},
		ServiceAccount: Name,
		// It listens once it has the master secret and serves: ready only then.
		ReadyPort: Port,
		Volumes: []kubeapi.Volume{
			{Name: "agent", MountPath: agent.SocketPath, HostPath: agent.SocketPath, HostPathType: "Socket"},
			{Name: "secret", MountPath: SecretSocket, HostPath: SecretSocket, HostPathType: "Socket"},
			// The key service's directory on its node's encrypted state disk: the measurement policy in force
			// ([PolicyFile]), and the bindings of key services before the shared record (on the first
			// control-plane node), moved into the shared record once.
			{Name: "legacy-disk-bindings", MountPath: filepath.Dir(LegacyDiskBindingsFile), HostPath: filepath.Dir(LegacyDiskBindingsFile), HostPathType: "DirectoryOrCreate"},
		},
	}
	return kubeapi.List(
		map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": DiskBindingsNamespace, "labels": kubeapi.Labels(Name)}},
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
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(Name),
			"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"configmaps"}, "verbs": []string{"get", "create"}}},
		},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(Name),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		service.DaemonSet(),
	)
}
