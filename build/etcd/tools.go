//go:build tools

// Package etcd pins the etcd release the node image is built from: the version kubeadm v1.37.2 deploys
// (DefaultEtcdVersion 3.7.0). Nothing imports this module; scripts/build-components.sh builds the binaries.
package etcd

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
