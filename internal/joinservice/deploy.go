package joinservice

import (
	"encoding/json"
	"strconv"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/meshpeers"
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
// configuration, a service account that may only create Secrets in kube-system (bootstrap tokens) and list
// Nodes (the WireGuard peers), and a DaemonSet on the control-plane nodes, on the host network at [Port]. metadataURL is the provider's metadata service, which tells control-plane nodes
// from workers; keyService the key service's address, for disk keys.
func Manifests(config map[string]string, metadataURL, keyService string) ([]byte, error) {
	labels := map[string]string{"app.kubernetes.io/name": Name, "app.kubernetes.io/part-of": "constellation"}
	meta := func(name string) map[string]any {
		return map[string]any{"name": name, "namespace": "kube-system", "labels": labels}
	}
	clusterMeta := func(name string) map[string]any {
		return map[string]any{"name": name, "labels": labels}
	}
	hostPath := func(name, path, typ string) map[string]any {
		return map[string]any{"name": name, "hostPath": map[string]any{"path": path, "type": typ}}
	}
	items := []map[string]any{
		{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(ConfigMapName), "data": config},
		{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(Name)},
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(Name),
			"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"secrets"}, "verbs": []string{"create"}}},
		},
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(Name),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		// A joining node learns the WireGuard peers (keys on the Node objects) from the join service.
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": clusterMeta(clusterRoleName),
			"rules": []map[string]any{{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"list"}}},
		},
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": clusterMeta(clusterRoleName),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": clusterRoleName},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		{
			"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta(Name),
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": labels},
				"template": map[string]any{
					"metadata": map[string]any{"labels": labels},
					"spec": map[string]any{
						"serviceAccountName": Name,
						"hostNetwork":        true,
						"priorityClassName":  "system-cluster-critical",
						"nodeSelector":       map[string]string{"node-role.kubernetes.io/control-plane": ""},
						"tolerations":        []map[string]any{{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}},
						"containers": []map[string]any{{
							"name":            Name,
							"image":           Image(),
							"imagePullPolicy": "Never",
							"args": []string{
								"--listen=$(NODE_IP):" + strconv.Itoa(Port),
								"--api-endpoint=$(NODE_IP):6443",
								"--api-server=https://$(NODE_IP):6443",
								"--metadata=" + metadataURL,
								"--key-service=" + keyService,
							},
							"env": []map[string]any{{"name": "NODE_IP", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "status.hostIP"}}}},
							"volumeMounts": []map[string]any{
								{"name": "config", "mountPath": ConfigDir, "readOnly": true},
								{"name": "pki", "mountPath": PKIDir, "readOnly": true},
								{"name": "agent", "mountPath": agent.SocketPath},
								{"name": "mesh", "mountPath": meshpeers.LocalSocket},
							},
						}},
						"volumes": []map[string]any{
							{"name": "config", "configMap": map[string]any{"name": ConfigMapName}},
							hostPath("pki", PKIDir, "Directory"),
							hostPath("agent", agent.SocketPath, "Socket"),
							hostPath("mesh", meshpeers.LocalSocket, "Socket"),
						},
					},
				},
			},
		},
	}
	return json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
}
