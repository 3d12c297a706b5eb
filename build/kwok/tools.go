//go:build tools

// Package kwok pins KWOK, Kubernetes' tool that simulates the lifecycle of fake nodes (heartbeats, leases),
// which the scale benchmarks of the mesh and re-attestation run against a real API server. It is not part of
// the node image. Nothing imports this module; tools/bench builds the binary into _out/tools/kwok.
package kwok

import _ "sigs.k8s.io/kwok/cmd/kwok"
