// Command upgrade-controller replaces the cluster's nodes by nodes of a new image, as its NodeUpgrade asks; see
// package upgrade.
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/providers"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/upgrade"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
	"github.com/constellation-dev/constellation/internal/version"
)

func main() {
	apiServer := flag.String("api-server", "", "URL of the API server (default: the in-cluster address)")
	etcdPKI := flag.String("etcd-pki", deploy.EtcdPKIDir, "kubeadm's etcd CA and client certificates")
	etcdEndpoints := flag.String("etcd-endpoints", "https://127.0.0.1:2379", "etcd's client URLs, comma-separated")
	credential := flag.String("provider-credential", deploy.ProviderCredentialDir, "the provider's endpoint and credential (the files of Secret "+deploy.ProviderCredentialSecret+")")
	leaseNamespace := flag.String("lease-namespace", "kube-system", "the namespace of the leader election lease")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	klog.SetSlogLogger(log)
	ctrllog.SetLogger(logr.FromSlogHandler(log.Handler()))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log, *apiServer, *etcdPKI, *etcdEndpoints, *credential, *leaseNamespace); err != nil {
		log.Error("upgrade controller stopped", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, apiServer, etcdPKI, etcdEndpoints, credential, leaseNamespace string) error {
	cfg, err := restConfig(apiServer)
	if err != nil {
		return err
	}
	fleet, err := openFleet(credential)
	if err != nil {
		return err
	}
	etcd, err := upgrade.KubeadmEtcd(etcdPKI, strings.Split(etcdEndpoints, ","), log)
	if err != nil {
		return err
	}
	mgr, err := upgrade.NewManager(cfg, upgrade.Options{Fleet: fleet, Etcd: etcd, Log: log, LeaderElection: true, LeaseNamespace: leaseNamespace})
	if err != nil {
		return err
	}
	log.Info("upgrade controller starting", "version", version.Version)
	return mgr.Start(ctx)
}

// restConfig authenticates with the pod's service account at the API server.
func restConfig(apiServer string) (*rest.Config, error) {
	if apiServer == "" {
		return rest.InClusterConfig()
	}
	return &rest.Config{
		Host:            apiServer,
		BearerTokenFile: filepath.Join(kubeapi.ServiceAccountDir, kubeapi.TokenFile),
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(kubeapi.ServiceAccountDir, kubeapi.CAFile)},
		UserAgent:       deploy.Name,
	}, nil
}

// openFleet is the provider's authenticated node management, from the files of the mounted Secret in dir:
// "provider" (its name), "endpoint" and "credential".
func openFleet(dir string) (upgrade.Fleet, error) {
	data := map[string][]byte{}
	for _, key := range []string{"provider", "endpoint", "credential"} {
		b, err := os.ReadFile(filepath.Join(dir, key))
		if err != nil {
			return nil, fmt.Errorf("reading the provider credential (Secret kube-system/%s): %w", deploy.ProviderCredentialSecret, err)
		}
		data[key] = b
	}
	access, err := provider.FleetAccessFromSecret(data)
	if err != nil {
		return nil, fmt.Errorf("the provider credential (Secret kube-system/%s): %w", deploy.ProviderCredentialSecret, err)
	}
	return providers.Fleet(access.Provider, access.Endpoint, access.Credential)
}
