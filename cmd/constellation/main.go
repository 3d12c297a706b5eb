// Command constellation manages always-encrypted Kubernetes clusters.
package main

import (
	"fmt"
	"os"

	"github.com/constellation-dev/constellation/internal/cli"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

func main() {
	mini.MaybeRunNodeInit() // when started as a mini node's init stage, this never returns
	err := cli.NewRootCmd(os.Stdout, os.Stderr).Execute()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
	}
	os.Exit(cli.ExitCode(err))
}
