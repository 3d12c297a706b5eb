//go:build tools

// Package containerd pins the containerd release the node image is built from. Nothing imports this module;
// scripts/build-components.sh builds the binaries.
package containerd

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
