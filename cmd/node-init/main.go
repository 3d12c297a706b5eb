// Command node-init is the init of a node's initramfs (package nodeinit): it opens the root with dm-verity,
// switches into it and starts the node's first process, or refuses to boot.
package main

import (
	"log/slog"
	"os"

	"github.com/constellation-dev/constellation/internal/nodeinit"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil)).With("component", "node-init")
	nodeinit.Refuse(nodeinit.Run(log, os.Args[1:]))
}
