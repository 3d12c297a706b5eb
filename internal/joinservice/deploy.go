package joinservice

import (
	"strconv"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/version"
)

// Names of the join service's objects in kube-system.
const (
	Name          = "join-service"
	ConfigMapName = "join-config"
	// ConfigDir is where the join service's container sees its ConfigMap.
	ConfigDir = "/etc/constellation/join"
	// PKIDir is the control plane's PKI directory (kubeadm's), mounted read-only: the join service hands its
	// shared CAs to attested control-plane nodes.
	PKIDir = "/etc/kubernetes/pki"
)

// clusterRoleName names the join service's cluster-wide permissions (on Node objects).
const clusterRoleName = "constellation:" + Name

// Image is the join service's container image. It is built into the node image with the same version as the
// bootstrapper that deploys it, and never pulled.
func Image() string { return "constellation.local/join-service:" + version.Version }

// Manifests returns the Kubernetes objects of the join service, as a JSON list for `kubectl apply`: its
// configuration, a service account that may only create Secrets in kube-system (bootstrap tokens), follow and
// update Nodes (the WireGuard peers, the continuous attestation's quarantine), and keep the continuous
// attestation's records (Leases in reattestation.RecordNamespace, a namespace of their own), and a DaemonSet
// on the control-plane nodes, on the host network at [joinpb.Port], ready while its readiness endpoint on the
// node's loopback address says so ([Readiness] at [HealthPort]). The provider (name, at endpoint) tells
// control-plane nodes from workers and lists them: the join service gets disk keys from the key service of
// any control-plane node, its own node's first.
func Manifests(config map[string]string, providerName, providerEndpoint string) ([]byte, error) {
	meta := func(name string) map[string]any { return kubeapi.Meta(Name, name) }
	clusterMeta := func(name string) map[string]any {
		return map[string]any{"name": name, "labels": kubeapi.Labels(Name)}
	}
	recordMeta := map[string]any{"name": Name, "namespace": reattestation.RecordNamespace, "labels": kubeapi.Labels(Name)}
	service := kubeapi.HostService{
		Name:  Name,
		Image: Image(),
		Args: []string{
			"--listen=$(NODE_IP):" + strconv.Itoa(joinpb.Port),
			"--api-endpoint=$(NODE_IP):6443",
			"--api-server=https://$(NODE_IP):6443",
			"--provider=" + providerName,
			"--provider-endpoint=" + providerEndpoint,
			"--node-ip=$(NODE_IP)",
			"--node-name=$(NODE_NAME)",
			"--health-listen=127.0.0.1:" + strconv.Itoa(HealthPort),
		},
		// Ready once it serves with its authenticated configuration, and while a node could join (Readiness).
		ReadyLocal:     &kubeapi.LocalEndpoint{Port: HealthPort, Path: ReadyPath},
		NodeSelector:   map[string]string{"node-role.kubernetes.io/control-plane": ""},
		Tolerations:    []map[string]any{kubeapi.ControlPlaneToleration},
		ServiceAccount: Name,
		Volumes: []kubeapi.Volume{
			{Name: "config", MountPath: ConfigDir, ReadOnly: true, ConfigMap: ConfigMapName},
			{Name: "registry-credentials", MountPath: CredentialsDir, ReadOnly: true, Secret: CredentialsSecretName},
			{Name: "pki", MountPath: PKIDir, ReadOnly: true, HostPath: PKIDir, HostPathType: "Directory"},
			{Name: "agent", MountPath: agent.SocketPath, HostPath: agent.SocketPath, HostPathType: "Socket"},
			{Name: "mesh", MountPath: meshpeers.LocalSocket, HostPath: meshpeers.LocalSocket, HostPathType: "Socket"},
		},
	}
	return kubeapi.List(
		map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(ConfigMapName), "data": config},
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(Name)},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(Name),
			"rules": []map[string]any{
				{"apiGroups": []string{""}, "resources": []string{"secrets"}, "verbs": []string{"create"}},
				// Continuous attestation (package reattestation): one active controller by a Lease, and its switch.
				{"apiGroups": []string{"coordination.k8s.io"}, "resources": []string{"leases"}, "verbs": []string{"create"}},
				{"apiGroups": []string{"coordination.k8s.io"}, "resources": []string{"leases"}, "resourceNames": []string{reattestation.LeaseName}, "verbs": []string{"get", "update"}},
				{"apiGroups": []string{""}, "resources": []string{"configmaps"}, "resourceNames": []string{reattestation.ControlConfigMap}, "verbs": []string{"get"}},
			},
		},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(Name),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		// A joining node learns the WireGuard peers (keys on the Node objects) from the join service.
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": clusterMeta(clusterRoleName),
			// The continuous attestation follows the Nodes (watch), and marks and quarantines them (update).
			"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"get", "list", "watch", "update"}}},
		},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": clusterMeta(clusterRoleName),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": clusterRoleName},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		// The continuous attestation's records, one Lease per node, in a namespace of their own that only this
		// service account writes (no role grants nodes anything there).
		map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": reattestation.RecordNamespace, "labels": kubeapi.Labels(Name)}},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": recordMeta,
			"rules": []map[string]any{{"apiGroups": []string{"coordination.k8s.io"}, "resources": []string{"leases"}, "verbs": []string{"get", "list", "watch", "create", "update", "delete"}}},
		},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": recordMeta,
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		service.DaemonSet(),
	)
}
