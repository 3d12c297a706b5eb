// Command bench runs the benchmark suite and prints one line per figure: "<name> <value> <unit>".
// Select figures with arguments or with BENCH=<name>[,<name>...].
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
	"github.com/constellation-dev/constellation/tools/bench/suite"
)

func main() {
	mini.MaybeRunNodeInit()     // the mini-boot benchmark boots nodes whose init stage is this binary
	wgmeshtest.MaybeRunHelper() // the network benchmark runs its nodes as this binary
	selected := os.Args[1:]
	if env := os.Getenv("BENCH"); env != "" {
		selected = append(selected, strings.Split(env, ",")...)
	}
	if err := suite.Run(context.Background(), os.Stdout, selected); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
