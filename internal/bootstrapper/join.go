package bootstrapper

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
)

// JoinPort is the port of the join service on initialised control-plane nodes.
const JoinPort = 9001

// tokenTTL bounds how long a bootstrap token handed to a joining node is valid.
const tokenTTL = 10 * time.Minute

// joinServer admits attested nodes into the cluster.
type joinServer struct {
	initpb.UnimplementedJoinServer
	clusterID []byte
	endpoint  string
	log       *slog.Logger
}

func (s *joinServer) Join(ctx context.Context, _ *initpb.JoinRequest) (*initpb.JoinResponse, error) {
	caller, ok := atls.AttestedPeer(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "the join service only admits attested nodes")
	}
	token, err := kubeadm.CreateToken(ctx, tokenTTL)
	if err != nil {
		s.log.Error("join failed", "caller", caller, "error", err)
		return nil, status.Error(codes.Internal, err.Error())
	}
	hash, err := kubeadm.CACertHash()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.log.Info("node admitted", "caller", caller, "tokenTTL", tokenTTL.String())
	return &initpb.JoinResponse{ApiEndpoint: s.endpoint, Token: token, CaCertHash: hash, ClusterId: s.clusterID}, nil
}

// akRoots fetches the provider's attestation-key CA certificate.
func akRoots(ctx context.Context, md *metadata.Client) ([]*x509.Certificate, error) {
	raw, err := md.AKCA(ctx)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("the metadata service returned no AK CA certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{cert}, nil
}

// mutualCredentials are aTLS credentials that attest this node with issuer and accept peers whose evidence
// chains to the provider's AK CA and matches policy.
func mutualCredentials(ctx context.Context, md *metadata.Client, issuer *vtpm.Issuer, policy measurements.M, log *slog.Logger) (*atls.Credentials, error) {
	roots, err := akRoots(ctx, md)
	if err != nil {
		return nil, err
	}
	v, err := vtpm.NewValidator(roots, policy, log)
	if err != nil {
		return nil, err
	}
	return atls.NewCredentials(issuer, []attestation.Validator{v})
}

// serveJoin starts the join service: mutual aTLS, admitting nodes that match policy.
func serveJoin(ctx context.Context, md *metadata.Client, issuer *vtpm.Issuer, self metadata.Instance, clusterID []byte, policy measurements.M, log *slog.Logger) error {
	creds, err := mutualCredentials(ctx, md, issuer, policy, log)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	initpb.RegisterJoinServer(srv, &joinServer{clusterID: clusterID, endpoint: net.JoinHostPort(self.IP, "6443"), log: log})
	ln, err := net.Listen("tcp", net.JoinHostPort(self.IP, strconv.Itoa(JoinPort)))
	if err != nil {
		return fmt.Errorf("join service: %w", err)
	}
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	go srv.Serve(ln)
	log.Info("join service listening over mutual aTLS", "address", ln.Addr().String())
	return nil
}

// ownPolicy is the policy of this node's own boot measurements: a joining node trusts a join service that
// booted the same image with the same parameters as itself.
func ownPolicy(tpm interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}) (measurements.M, error) {
	pcrs, err := client.ReadPCRs(tpm, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		return nil, err
	}
	m := measurements.M{}
	for _, idx := range []uint32{measuredboot.PCRFirmware, measuredboot.PCRNodeImage, measuredboot.PCRBootParams} {
		var d measurements.Digest
		copy(d[:], pcrs.GetPcrs()[idx])
		m[idx] = measurements.Measurement{Expected: d}
	}
	return m, nil
}

// join asks the first control-plane node's join service to admit this node, then joins Kubernetes.
func join(ctx context.Context, md *metadata.Client, issuer *vtpm.Issuer, policy measurements.M, k8s Kubernetes, log *slog.Logger) error {
	creds, err := mutualCredentials(ctx, md, issuer, policy, log)
	if err != nil {
		return err
	}
	var resp *initpb.JoinResponse
	if err := retry(ctx, log, "asking the join service to admit this node", func() error {
		list, err := md.Instances(ctx)
		if err != nil {
			return err
		}
		for _, inst := range list {
			if inst.Name != FirstControlPlane {
				continue
			}
			conn, err := grpc.NewClient(net.JoinHostPort(inst.IP, strconv.Itoa(JoinPort)), grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			defer conn.Close()
			callCtx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			resp, err = initpb.NewJoinClient(conn).Join(callCtx, &initpb.JoinRequest{})
			return err
		}
		return errors.New("no control-plane node in the metadata")
	}); err != nil {
		return err
	}
	ev := measuredboot.ClusterIDEvent(resp.GetClusterId())
	if err := issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		return fmt.Errorf("measuring the cluster ID: %w", err)
	}
	log.Info("admitted by the join service; cluster ID measured", "endpoint", resp.GetApiEndpoint())
	if err := k8s.PrepareRuntime(ctx); err != nil {
		return fmt.Errorf("preparing the container runtime: %w", err)
	}
	if err := k8s.Join(ctx, resp.GetApiEndpoint(), resp.GetToken(), resp.GetCaCertHash()); err != nil {
		return err
	}
	log.Info("joined the cluster")
	return nil
}
