// Package deploy is how the cluster's upgrade controller (package upgrade) is deployed: its names, image,
// permissions, the NodeUpgrade CRD and its manifests. The first control-plane node's bootstrapper applies them;
// it needs none of the controller's code (and its controller-runtime), which only the controller's binary links.
package deploy

import (
	_ "embed"
	"fmt"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/version"
)

// Name is the controller's Deployment, service account and ClusterRole in kube-system.
const Name = "upgrade-controller"

// Image is the controller's container image, built into the node image with the same version as the
// bootstrapper that deploys it, and never pulled.
func Image() string { return "constellation.local/upgrade-controller:" + version.Version }

// ProviderCredentialSecret is the Secret in kube-system with the provider's endpoint and the credential with
// which the controller creates and deletes nodes; the controller reads it as files in ProviderCredentialDir.
const (
	ProviderCredentialSecret = provider.FleetSecretName
	ProviderCredentialDir    = "/etc/constellation/provider-credential"
)

// EtcdPKIDir is kubeadm's etcd CA and client certificates on a control-plane node.
const EtcdPKIDir = "/etc/kubernetes/pki/etcd"

// controlPlaneLabel marks control-plane nodes (kubeadm sets it).
const controlPlaneLabel = "node-role.kubernetes.io/control-plane"

//go:embed crd/upgrade.constellation.dev_nodeupgrades.yaml
var crdYAML []byte

// CRD returns the NodeUpgrade CustomResourceDefinition.
func CRD() (map[string]any, error) {
	var crd map[string]any
	if err := yaml.Unmarshal(crdYAML, &crd); err != nil {
		return nil, fmt.Errorf("the NodeUpgrade CRD: %w", err)
	}
	return crd, nil
}

// Rules are the controller's permissions in the whole cluster, and nothing more: it reads and watches Nodes,
// cordons (patch) and deletes them; it watches pods (to drain a node and see its pods end) and evicts them,
// never deletes them; it reads its NodeUpgrade and writes only its status.
var Rules = []map[string]any{
	{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"get", "list", "watch", "patch", "delete"}},
	{"apiGroups": []string{""}, "resources": []string{"pods"}, "verbs": []string{"list", "watch"}},
	{"apiGroups": []string{""}, "resources": []string{"pods/eviction"}, "verbs": []string{"create"}},
	{"apiGroups": []string{"upgrade.constellation.dev"}, "resources": []string{"nodeupgrades"}, "verbs": []string{"get", "list", "watch"}},
	{"apiGroups": []string{"upgrade.constellation.dev"}, "resources": []string{"nodeupgrades/status"}, "verbs": []string{"get", "patch", "update"}},
}

// ClusterInfoRules are its permissions in kube-public: reading the cluster's control-plane endpoint.
var ClusterInfoRules = []map[string]any{
	{"apiGroups": []string{""}, "resources": []string{"configmaps"}, "resourceNames": []string{"cluster-info"}, "verbs": []string{"get"}},
}

// LeaseRules are its permissions in kube-system: its leader election lease, the events that announce a new
// leader, and reading kubeadm's cluster configuration and kube-proxy DaemonSet (the cluster's Kubernetes
// version).
var LeaseRules = []map[string]any{
	{"apiGroups": []string{""}, "resources": []string{"configmaps"}, "resourceNames": []string{"kubeadm-config"}, "verbs": []string{"get"}},
	{"apiGroups": []string{"apps"}, "resources": []string{"daemonsets"}, "resourceNames": []string{"kube-proxy"}, "verbs": []string{"get"}},
	{"apiGroups": []string{"coordination.k8s.io"}, "resources": []string{"leases"}, "verbs": []string{"get", "create", "update"}},
	{"apiGroups": []string{"", "events.k8s.io"}, "resources": []string{"events"}, "verbs": []string{"create", "patch"}},
}

// RecordRules are its permissions in reattestation.RecordNamespace: reading the nodes' attestation records,
// from which it learns which node image each node runs. It writes none.
var RecordRules = []map[string]any{
	{"apiGroups": []string{"coordination.k8s.io"}, "resources": []string{"leases"}, "verbs": []string{"get", "list", "watch"}},
}

// Manifests returns the controller's objects, as a JSON list for `kubectl apply`: the NodeUpgrade CRD, the
// service account with [Rules], [LeaseRules], [ClusterInfoRules] and [RecordRules] (whose namespace the join
// service's manifests create: apply these after them), and a Deployment on the control-plane nodes, on the host
// network (it reaches etcd at 127.0.0.1:2379 with kubeadm's client certificate, to remove the members of
// replaced control-plane nodes), with leader election. It reads the provider's credential from the Secret
// [ProviderCredentialSecret], mounted as files.
func Manifests() ([]byte, error) {
	crd, err := CRD()
	if err != nil {
		return nil, err
	}
	clusterMeta := map[string]any{"name": "constellation:" + Name, "labels": kubeapi.Labels(Name)}
	labels := kubeapi.Labels(Name)
	publicMeta := kubeapi.Meta(Name, Name)
	publicMeta["namespace"] = "kube-public"
	recordMeta := kubeapi.Meta(Name, Name)
	recordMeta["namespace"] = reattestation.RecordNamespace
	container := map[string]any{
		"name":            Name,
		"image":           Image(),
		"imagePullPolicy": "Never",
		"args": []string{
			"--api-server=https://$(NODE_IP):6443",
			"--etcd-pki=" + EtcdPKIDir,
			"--etcd-endpoints=https://127.0.0.1:2379",
			"--provider-credential=" + ProviderCredentialDir,
			"--lease-namespace=kube-system",
		},
		"env": []map[string]any{
			{"name": "NODE_IP", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "status.hostIP"}}},
		},
		"securityContext": map[string]any{
			"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
			"capabilities": map[string]any{"drop": []string{"ALL"}},
		},
		"volumeMounts": []map[string]any{
			{"name": "etcd-pki", "mountPath": EtcdPKIDir, "readOnly": true},
			{"name": "provider-credential", "mountPath": ProviderCredentialDir, "readOnly": true},
		},
	}
	pod := map[string]any{
		"hostNetwork":        true,
		"priorityClassName":  "system-cluster-critical",
		"serviceAccountName": Name,
		"nodeSelector":       map[string]string{controlPlaneLabel: ""},
		"tolerations":        []map[string]any{kubeapi.ControlPlaneToleration},
		"containers":         []map[string]any{container},
		"volumes": []map[string]any{
			{"name": "etcd-pki", "hostPath": map[string]any{"path": EtcdPKIDir, "type": "Directory"}},
			{"name": "provider-credential", "secret": map[string]any{"secretName": ProviderCredentialSecret, "defaultMode": 0o400}},
		},
	}
	return kubeapi.List(
		crd,
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": kubeapi.Meta(Name, Name)},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": clusterMeta, "rules": Rules},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": clusterMeta,
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": clusterMeta["name"]},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": kubeapi.Meta(Name, Name), "rules": LeaseRules},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": kubeapi.Meta(Name, Name),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": publicMeta, "rules": ClusterInfoRules},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": publicMeta,
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": recordMeta, "rules": RecordRules},
		map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": recordMeta,
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": Name},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": Name, "namespace": "kube-system"}},
		},
		map[string]any{
			"apiVersion": "apps/v1", "kind": "Deployment", "metadata": kubeapi.Meta(Name, Name),
			"spec": map[string]any{
				"replicas": 1,
				// A new pod (on the replacement of the node being drained) waits until the old one is gone.
				"strategy": map[string]any{"type": "Recreate"},
				"selector": map[string]any{"matchLabels": labels},
				"template": map[string]any{"metadata": map[string]any{"labels": labels}, "spec": pod},
			},
		},
	)
}
