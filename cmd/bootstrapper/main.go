// Command bootstrapper is the first process of every node.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/constellation-dev/constellation/internal/bootstrapper"
)

func main() {
	provider := flag.String("provider", "", "the cloud provider (mini)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "bootstrapper", "provider", *provider)
	cfg := bootstrapper.Config{MetadataURL: os.Getenv("CONSTELLATION_METADATA"), TPM: os.Getenv("CONSTELLATION_TPM")}
	if *provider != "mini" || cfg.MetadataURL == "" || cfg.TPM == "" {
		log.Error("unsupported environment: want --provider=mini with CONSTELLATION_METADATA and CONSTELLATION_TPM set")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := bootstrapper.Run(ctx, cfg, log); err != nil {
		log.Error("bootstrapper failed", "error", err)
		os.Exit(1)
	}
}
