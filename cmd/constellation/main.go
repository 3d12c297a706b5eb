// Command constellation manages always-encrypted Kubernetes clusters.
package main

import (
	"fmt"
	"os"

	"github.com/constellation-dev/constellation/internal/cli"
)

func main() {
	err := cli.NewRootCmd(os.Stdout, os.Stderr).Execute()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
	}
	os.Exit(cli.ExitCode(err))
}
