// Command bootstrapper is the first process of every node.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/constellation-dev/constellation/internal/apiproxy"
	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/bootstrapper"
	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/meshagent"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/providers"
	"github.com/constellation-dev/constellation/internal/wgmesh"
	"k8s.io/klog/v2"
)

func main() {
	providerName := flag.String("provider", "", "the provider the node runs on ("+strings.Join(providers.Names, ", ")+")")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "bootstrapper", "provider", *providerName)
	// The Kubernetes client library (the mesh's watch) logs through klog: into the same structured log.
	klog.SetSlogLogger(log.With("library", "client-go"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	machine, err := providers.Boot(ctx, *providerName, log)
	if err != nil {
		log.Error("unsupported environment", "error", err)
		os.Exit(2)
	}
	prov := machine.Provider
	podNetwork, serviceNetwork := prov.Networks()
	cfg := bootstrapper.Config{
		Provider:    prov,
		TPM:         machine.TPM,
		AgentSocket: agent.SocketPath,
		StateDisk:   machine.StateDisk,
		PodNetwork:  podNetwork,
		Kubernetes: func(self provider.Instance) bootstrapper.Kubernetes {
			versions, err := nodeimage.ReadVersions()
			if err != nil {
				log.Warn("no Kubernetes in this node image", "error", err)
			}
			// Pods send between nodes through the WireGuard tunnel: their MTU is the tunnel's.
			podMTU := 0
			if ip, err := netip.ParseAddr(self.IP); err == nil {
				if _, _, mtu, err := meshagent.NodeLink(ip); err == nil {
					podMTU = mtu - wgmesh.Overhead
				}
			}
			return &kubeadm.Driver{
				Options: kubeadm.Options{
					NodeName:          self.Name,
					NodeIP:            netip.MustParseAddr(self.IP),
					KubernetesVersion: versions.Kubernetes,
					PauseImage:        "registry.k8s.io/pause:" + versions.Pause,
					EtcdImageTag:      versions.Etcd,
					CoreDNSImageTag:   versions.CoreDNS,
					CgroupRoot:        "/constellation/" + self.Name,
					PodCIDR:           podCIDR(self),
					PodSubnet:         podNetwork,
					ServiceSubnet:     serviceNetwork,
					PodMTU:            podMTU,
					// Every node reaches the API through its own endpoint (started before kubeadm runs).
					ControlPlaneEndpoint: apiproxy.Address,
				},
				ImagesDir:       nodeimage.ImagesDir,
				LoadedImagesDir: kubeadm.LoadedImagesDir,
				Log:             func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) },
			}
		},
	}
	if err := bootstrapper.Run(ctx, cfg, log); err != nil {
		log.Error("bootstrapper failed", "error", err)
		os.Exit(1)
	}
}

// podCIDR is the node's pod range from the instance metadata.
func podCIDR(self provider.Instance) netip.Prefix {
	p, err := netip.ParsePrefix(self.PodCIDR)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}
