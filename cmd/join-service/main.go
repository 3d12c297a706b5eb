// Command join-service admits attested nodes into the cluster; see package joinservice.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider/providers"
	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/retry"
	"github.com/constellation-dev/constellation/internal/version"
)

func main() {
	listen := flag.String("listen", fmt.Sprintf(":%d", joinpb.Port), "address to serve on")
	configDir := flag.String("config", joinservice.ConfigDir, "join configuration directory (the join-config ConfigMap)")
	pkiDir := flag.String("pki", joinservice.PKIDir, "the control plane's PKI directory")
	providerName := flag.String("provider", "", "the provider the cluster runs on (required)")
	providerEndpoint := flag.String("provider-endpoint", "", "where the provider answers (required; for mini: its metadata service)")
	nodeIP := flag.String("node-ip", "", "this node's address: its key service is asked first, then those of the other control-plane nodes (required)")
	apiEndpoint := flag.String("api-endpoint", "", "host:port of the API server that joining nodes use (required)")
	apiServer := flag.String("api-server", "", "API server URL for this service (default: the in-cluster address)")
	agentSocket := flag.String("agent", agent.SocketPath, "the node's attestation agent socket")
	meshSocket := flag.String("mesh", meshpeers.LocalSocket, "the node's WireGuard agent socket")
	nodeName := flag.String("node-name", "", "this node's name: its identity in the continuous attestation's leader election (empty: no continuous attestation)")
	interval := flag.Duration("reattest-interval", reattestation.DefaultInterval, "how often the continuous attestation checks each node")
	metrics := flag.String("reattest-metrics", fmt.Sprintf("127.0.0.1:%d", reattestation.MetricsPort), "where the continuous attestation serves its metrics (Prometheus text format; empty: nowhere)")
	health := flag.String("health-listen", fmt.Sprintf("127.0.0.1:%d", joinservice.HealthPort), "where the readiness endpoint ("+joinservice.ReadyPath+") answers the node's kubelet (a loopback address; empty: nowhere)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	re := reattestFlags{node: *nodeName, interval: *interval, metrics: *metrics}
	if err := run(*listen, *health, *configDir, *pkiDir, *apiEndpoint, *apiServer, *agentSocket, *meshSocket, *providerName, *providerEndpoint, *nodeIP, re, log); err != nil {
		log.Error("join service stopped", "error", err)
		os.Exit(1)
	}
}

// reattestFlags configure the continuous attestation.
type reattestFlags struct {
	node     string
	interval time.Duration
	metrics  string
}

func run(listen, health, configDir, pkiDir, apiEndpoint, apiServer, agentSocket, meshSocket, providerName, providerEndpoint, nodeIP string, re reattestFlags, log *slog.Logger) error {
	if apiEndpoint == "" || nodeIP == "" {
		return fmt.Errorf("--api-endpoint and --node-ip are required")
	}
	// The readiness endpoint answers from the start: not ready until the service serves.
	var ready joinservice.Readiness
	if health != "" {
		ln, err := net.Listen("tcp", health)
		if err != nil {
			return fmt.Errorf("the readiness endpoint: %w", err)
		}
		srv := &http.Server{Handler: &ready, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	if apiServer == "" {
		var err error
		if apiServer, err = joinservice.InClusterServer(); err != nil {
			return err
		}
	}
	api, err := kubeapi.FromServiceAccount(apiServer, kubeapi.ServiceAccountDir)
	if err != nil {
		return err
	}
	md, err := providers.Node(providerName, providerEndpoint)
	if err != nil {
		return err
	}
	issuer := agent.NewClient(agentSocket, md.Variant())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// Disk keys come from the key service of any control-plane node, this node's first.
	keyServices := keyservice.ControlPlaneAddrs(md, nodeIP)
	// The measurement sets in force (two during an upgrade) come from the key service's policy port at every
	// join and every continuous-attestation check; it answers whatever image this node runs.
	var policy joinservice.PolicySource
	trust := joinservice.KeyServiceTrust{Issuer: issuer, Roles: md}
	if err := retry.Do(ctx, log, "reaching the key services' policy port", func() error {
		if !validators.BindsCluster(md.Variant()) {
			// A qemu-sev-snp key service is trusted by its report alone, without attestation-key roots.
			roots, err := md.AKRoots(ctx)
			if err != nil {
				return err
			}
			trust.AKRoots = roots
		}
		var err error
		var closePolicy func() error
		policy, closePolicy, err = joinservice.KeyServicePolicy(ctx, keyservice.ControlPlanePolicyAddrs(md, nodeIP), trust)
		if err == nil {
			context.AfterFunc(ctx, func() { closePolicy() })
		}
		return err
	}); err != nil {
		return err
	}
	// The join configuration counts only with its MAC, whose key the key service derives from the master
	// secret; after a restart of the whole control plane it has it only after 'constellation recover'. A node
	// whose image the policy in force no longer accepts never gets it: the wait says so.
	macKey, err := joinservice.ConfigKeyWait{
		Fetch: func(ctx context.Context) ([]byte, error) {
			return joinservice.FetchConfigKey(ctx, keyServices, trust)
		},
		OwnImage: func(ctx context.Context) error { return joinservice.OwnImageInForce(ctx, policy, issuer) },
		Log:      log,
	}.Run(ctx)
	if err != nil {
		return err
	}
	config, err := joinservice.NewConfig(configDir, log, macKey)
	if err != nil {
		return err
	}
	config.FollowPolicy(policy)
	disks := &joinservice.KeyServiceDiskKeys{Endpoints: keyServices, Issuer: issuer, Config: config, Roles: md}
	clientset, err := kubeapi.ClientsetFromServiceAccount(apiServer, kubeapi.ServiceAccountDir, "constellation-join-service")
	if err != nil {
		return err
	}
	var release func(context.Context, string) (bool, error)
	if re.node != "" {
		release = func(ctx context.Context, name string) (bool, error) {
			return reattestation.Release(ctx, clientset, name)
		}
		if err := startReattest(ctx, clientset, config, re, log.With("service", "reattest")); err != nil {
			return err
		}
	}
	srv, err := joinservice.NewGRPCServer(joinservice.New(joinservice.Options{
		Config: config, Tokens: joinservice.NewAPITokens(api), Roles: md, Disks: disks, Release: release,
		Mesh: joinservice.ClusterMesh{Local: meshpeers.NewAdmitClient(meshSocket), API: api, Root: &joinservice.KeyServiceMeshRoot{Keys: disks}}, PKIDir: pkiDir, Endpoint: apiEndpoint, Log: log,
		CredentialsDir: joinservice.CredentialsDir,
	}), issuer)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	ready.Serving(config)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	log.Info("join service listening over mutual aTLS", "address", ln.Addr().String(), "version", version.Version)
	return srv.Serve(ln)
}

// startReattest runs the continuous attestation in the background (active on one control-plane node at a
// time), checking the nodes against the members of the current join configuration.
func startReattest(ctx context.Context, clientset kubernetes.Interface, config *joinservice.Config, re reattestFlags, log *slog.Logger) error {
	metrics := reattestation.NewMetrics()
	c, err := reattestation.New(reattestation.Options{Client: clientset, Policy: config.MemberValidator, Interval: re.interval, Metrics: metrics, Log: log})
	if err != nil {
		return err
	}
	if re.metrics != "" {
		ln, err := net.Listen("tcp", re.metrics)
		if err != nil {
			return fmt.Errorf("metrics of the continuous attestation: %w", err)
		}
		srv := &http.Server{Handler: metrics.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		context.AfterFunc(ctx, func() { srv.Close() })
	}
	go func() {
		if err := reattestation.RunElected(ctx, c, re.node); err != nil {
			log.Error("continuous attestation stopped", "error", err)
		}
	}()
	return nil
}
