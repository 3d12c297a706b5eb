package bootstrapper

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/measuredboot"
)

// InitPort is the port of the Init service on the first control-plane node.
const InitPort = 9000

// Kubernetes is what Init needs from the node's Kubernetes driver.
type Kubernetes interface {
	PrepareRuntime(ctx context.Context) error
	Init(ctx context.Context) (adminKubeconfig []byte, err error)
	Join(ctx context.Context, endpoint, token, caHash string) error
}

// initServer initialises the cluster on the first control-plane node, once.
type initServer struct {
	initpb.UnimplementedInitServer
	issuer *vtpm.Issuer
	k8s    Kubernetes
	log    *slog.Logger
	// initialised runs after a successful init, with the cluster ID and the cluster's measurement policy.
	initialised func(clusterID []byte, policy measurements.M) error

	// lock makes init one-shot: a node is initialised or joins, once, never twice.
	lock sync.Mutex
	done bool
}

func (s *initServer) Init(ctx context.Context, req *initpb.InitRequest) (*initpb.InitResponse, error) {
	if !s.lock.TryLock() {
		return nil, status.Error(codes.FailedPrecondition, "initialisation of this node is already in progress")
	}
	defer s.lock.Unlock()
	if s.done {
		return nil, status.Error(codes.FailedPrecondition, "this node is already initialised; a node is initialised only once")
	}
	policy, err := measurements.Parse(req.GetMeasurements())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("measurement policy: %v", err))
	}
	ms := &kms.MasterSecret{Key: req.GetMasterSecret(), Salt: req.GetSalt()}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	clusterID, err := d.ClusterID()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// From here on the node is no longer fresh, whatever happens next.
	s.done = true
	ev := measuredboot.ClusterIDEvent(clusterID)
	if err := s.issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("measuring the cluster ID: %v", err))
	}
	s.log.Info("cluster ID measured", "pcr", ev.PCR, "clusterID", fmt.Sprintf("%x", clusterID))
	if err := s.k8s.PrepareRuntime(ctx); err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("preparing the container runtime: %v", err))
	}
	kubeconfig, err := s.k8s.Init(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("initialising Kubernetes: %v", err))
	}
	s.log.Info("Kubernetes initialised")
	if s.initialised != nil {
		if err := s.initialised(clusterID, policy); err != nil {
			return nil, status.Error(codes.Internal, fmt.Sprintf("starting the join service: %v", err))
		}
	}
	return &initpb.InitResponse{Kubeconfig: kubeconfig, ClusterId: clusterID}, nil
}
