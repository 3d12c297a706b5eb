package joinpb

import "time"

// Port is the join service's port on every control-plane node.
const Port = 9001

// TokenTTL bounds how long a bootstrap token handed to a joining node is valid.
const TokenTTL = 10 * time.Minute

// DiskKeyLength is the length of a state disk key (JoinResponse.disk_key).
const DiskKeyLength = 64

// ControlPlaneFiles are the files of the control plane's shared PKI (paths relative to the PKI directory) that
// a joining control-plane node gets (JoinResponse.control_plane_files): the cluster, front-proxy and etcd CAs
// and the service-account key.
var ControlPlaneFiles = []string{
	"ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key",
}
