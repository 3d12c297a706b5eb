//go:build tools

// Package runc pins the runc release the node image is built from: the one containerd v2.4.2 is tested with
// (its script/setup/runc-version). Nothing imports this module; scripts/build-components.sh builds the binary.
package runc

import (
	_ "github.com/opencontainers/runc"
)
