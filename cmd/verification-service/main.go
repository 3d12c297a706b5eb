// Command verification-service answers a verifier's nonce with fresh evidence of the node it runs on, from the
// node's attestation agent; see package verifyservice.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/version"
)

func main() {
	host := flag.String("listen", "", "address to serve on (the node's IP; default: every address)")
	port := flag.Int("port", verifyservice.ClusterPort, "HTTP port")
	grpcPort := flag.Int("grpc-port", verifyservice.ClusterGRPCPort, "gRPC port")
	agentSocket := flag.String("agent", agent.SocketPath, "the node's attestation agent socket")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	srv, err := verifyservice.Listen(*host, *port, *grpcPort, agent.NewClient(*agentSocket, attestation.MiniVTPM), nil, log)
	if err != nil {
		log.Error("verification service stopped", "error", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	context.AfterFunc(ctx, srv.Close)
	httpAddr, grpcAddr := srv.Addrs()
	log.Info("verification service listening", "http", httpAddr, "grpc", grpcAddr, "version", version.Version)
	if err := srv.Serve(); err != nil {
		log.Error("verification service stopped", "error", err)
		os.Exit(1)
	}
}
