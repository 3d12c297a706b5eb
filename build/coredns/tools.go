//go:build tools

// Package coredns pins the CoreDNS release the node image is built from: the version kubeadm v1.37.2 deploys
// (CoreDNSVersion v1.14.6), with its default plugin set. Nothing imports this module;
// scripts/build-components.sh builds the binary.
package coredns

import (
	_ "github.com/coredns/coredns"
)
