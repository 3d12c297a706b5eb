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
	apiServer := flag.String("api-server", "", "URL of the API server that keeps the shared disk bindings and the nodes' quarantine marks (required)")
	policyListen := flag.String("policy-listen", fmt.Sprintf(":%d", keyservice.PolicyPort), "address of the policy port, where the measurement policy is read and updated (server-side aTLS)")
	policyFile := flag.String("policy-file", keyservice.PolicyFile, "where the measurement policy update in force is kept, on the node's encrypted state disk")
	legacyBindings := flag.String("legacy-disk-bindings", keyservice.LegacyDiskBindingsFile, "a file of disk bindings from before the shared record, moved into it at start")
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
		log.Error("key service stopped: --api-server is required (the shared disk bindings, the quarantine marks)")
		os.Exit(2)
	}
	api, err := kubeapi.FromServiceAccount(*apiServer, kubeapi.ServiceAccountDir)
	if err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(2)
	}
	clientset, err := kubeapi.ClientsetFromServiceAccount(*apiServer, kubeapi.ServiceAccountDir, "constellation-key-service")
	if err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(2)
	}
	log.Info("key service starting", "version", version.Version, "address", *listen)
	if err := keyservice.Run(ctx, keyservice.Options{
		Listen: func() (net.Listener, error) { return net.Listen("tcp", *listen) }, SecretSocket: *secretSocket, Issuer: agent.NewClient(*agentSocket, md.Variant()),
		AKRoots: md.AKRoots, Allowed: md.IsControlPlane,
		DiskBindings: keyservice.NewAPIDiskBindings(api), LegacyDiskBindings: *legacyBindings, Log: log,
		PolicyFile: *policyFile, PolicyListen: func() (net.Listener, error) { return net.Listen("tcp", *policyListen) },
		Quarantined: func(ctx context.Context, node string) (bool, error) {
			return reattestation.Quarantined(ctx, clientset, node)
		},
	}); err != nil {
		log.Error("key service stopped", "error", err)
		os.Exit(1)
	}
}
