// Command key-service serves keys derived from the cluster's master secret to attested control-plane nodes;
// see package keyservice.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/provider/providers"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/version"
)

func main() {
	listen := flag.String("listen", fmt.Sprintf(":%d", keyservice.Port), "address to serve on")
	providerName := flag.String("provider", "", "the provider the cluster runs on (required)")
	providerEndpoint := flag.String("provider-endpoint", "", "where the provider answers (required; for mini: its metadata service)")
	agentSocket := flag.String("agent", agent.SocketPath, "the node's attestation agent socket")
	secretSocket := flag.String("secret", keyservice.SecretSocket, "the socket on which the node's bootstrapper hands over the master secret")
	diskBindings := flag.String("disk-bindings", keyservice.DiskBindingsFile, "the file recording which node each state disk belongs to")
	apiServer := flag.String("api-server", "", "API server URL, to refuse keys to quarantined nodes (required)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	md, err := providers.Node(*providerName, *providerEndpoint)
	if err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(2)
	}
	if *apiServer == "" {
		log.Error("key service stopped: --api-server is required (the key service refuses keys to quarantined nodes)")
		os.Exit(2)
	}
	clientset, err := kubeapi.ClientsetFromServiceAccount(*apiServer, kubeapi.ServiceAccountDir, "constellation-key-service")
	if err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(1)
	}
	log.Info("key service starting", "version", version.Version, "address", ln.Addr().String())
	if err := keyservice.Run(ctx, keyservice.Options{
		Listener: ln, SecretSocket: *secretSocket, Issuer: agent.NewClient(*agentSocket, md.Variant()),
		AKRoots: md.AKRoots, Allowed: md.IsControlPlane, DiskBindings: *diskBindings, Log: log,
		Quarantined: func(ctx context.Context, node string) (bool, error) {
			return reattestation.Quarantined(ctx, clientset, node)
		},
	}); err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(1)
	}
}
