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

// Manifests returns the key service's DaemonSet, as a JSON list for `kubectl apply`: one pod on node (the
// control-plane node whose bootstrapper holds the master secret), on the host network at [Port]. The pod gets no
// API credentials: it needs none. It reaches the node's bootstrapper for the master secret ([SecretSocket]) and
// for its evidence (the attestation agent), and its provider (name, at endpoint), to tell control-plane nodes,
// its only callers, from workers.
func Manifests(node, providerName, providerEndpoint string) ([]byte, error) {
	return kubeapi.List(kubeapi.HostService{
		Name:  Name,
		Image: Image(),
		Args: []string{
			"--listen=$(NODE_IP):" + strconv.Itoa(Port),
			"--provider=" + providerName,
			"--provider-endpoint=" + providerEndpoint,
		},
		NodeSelector: map[string]string{"kubernetes.io/hostname": node},
		Tolerations:  []map[string]any{kubeapi.ControlPlaneToleration},
		Volumes: []kubeapi.Volume{
			{Name: "agent", MountPath: agent.SocketPath, HostPath: agent.SocketPath, HostPathType: "Socket"},
			{Name: "secret", MountPath: SecretSocket, HostPath: SecretSocket, HostPathType: "Socket"},
			// The record of which node each state disk belongs to, on this node's encrypted state disk.
			{Name: "disk-bindings", MountPath: filepath.Dir(DiskBindingsFile), HostPath: filepath.Dir(DiskBindingsFile), HostPathType: "DirectoryOrCreate"},
		},
	}.DaemonSet())
}
