// Package version holds the build's version, set at link time.
package version

import "runtime"

// Set with -ldflags "-X github.com/constellation-dev/constellation/internal/version.Version=v0.1.0 ...".
var (
	Version = "v0.0.0-dev"
	Commit  = "unknown"
)

// GoVersion is the Go release the binary was built with.
func GoVersion() string { return runtime.Version() }
