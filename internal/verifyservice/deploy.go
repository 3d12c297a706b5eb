package verifyservice

import (
	"strconv"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/version"
)

// Name is the cluster's verification service's DaemonSet in kube-system.
const Name = "verification-service"

// Image is the verification service's container image. It is built into the node image with the same version
// as the bootstrapper that deploys it, and never pulled.
func Image() string { return "constellation.local/verification-service:" + version.Version }

// Manifests returns the verification service's DaemonSet, as a JSON list for `kubectl apply`: a pod on every
// node, whatever its taints, on the host network at [ClusterPort] and [ClusterGRPCPort], ready once it listens
// there. It gets its evidence
// from the node's attestation agent and no API credentials: it needs none.
func Manifests() ([]byte, error) {
	return kubeapi.List(kubeapi.HostService{
		Name:  Name,
		Image: Image(),
		Args: []string{
			"--listen=$(NODE_IP)",
			"--port=" + strconv.Itoa(ClusterPort),
			"--grpc-port=" + strconv.Itoa(ClusterGRPCPort),
		},
		Tolerations: []map[string]any{kubeapi.EveryTaint},
		// It listens once it serves: ready only then.
		ReadyPort: ClusterPort,
		Volumes: []kubeapi.Volume{
			{Name: "agent", MountPath: agent.SocketPath, HostPath: agent.SocketPath, HostPathType: "Socket"},
		},
	}.DaemonSet())
}
