// Package verifyservice runs on every node and answers a verifier's nonce with fresh attestation evidence, so
// that anyone can check at any time what a node runs (`constellation verify`). Evidence protects itself: it
// is bound to the caller's nonce and signed by the node's certified attestation key, so plain HTTP suffices.
//
// It runs twice on a node: in the bootstrapper from the node's start ([Port]), and as the cluster's DaemonSet
// ([Manifests], [ClusterPort]), whose pods get the same evidence from the node's attestation agent.
//
// A verifier that follows the node over time (package reattestation) asks the gRPC service to bind the WireGuard
// public key the node's mesh interface uses into the evidence ([MeshKeyUserData]): the node, not the caller,
// chooses that user data, so a caller still cannot have the node vouch for a key of the caller's choosing.
//
// Anyone may ask, so issuance is limited ([atls.IssuanceLimiter]): per source address and in total, with
// refusals (HTTP 429, gRPC RESOURCE_EXHAUSTED) instead of a queue, so that a flood from one source does not
// hold up the evidence that others, a joining node or `constellation recover`, wait for.
package verifyservice

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/verifyservice/verifypb"
	"github.com/constellation-dev/constellation/internal/wgmesh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Port is the HTTP port of the bootstrapper's verification service on every node, GRPCPort its gRPC port.
// The bootstrapper serves them from the node's start: verifiers attest nodes there before any cluster exists
// (init, recovery) and at any time after.
const (
	Port     = 9090
	GRPCPort = 9091
)

// ClusterPort is the HTTP port of the cluster's verification service (a DaemonSet of the cluster, on every
// node's host network), ClusterGRPCPort its gRPC port. It answers with the same evidence as the bootstrapper's,
// which issues it: Kubernetes keeps it running on every node the cluster has.
const (
	ClusterPort     = 9080
	ClusterGRPCPort = 9081
)

// Server is a node's verification service: the same evidence over HTTP ([Handler]) and gRPC ([GRPCServer]).
type Server struct {
	http           *http.Server
	grpc           *grpc.Server
	httpLn, grpcLn net.Listener
}

// MeshKeyFunc returns the WireGuard public key the node's mesh interface uses; an error if it has none yet.
type MeshKeyFunc func() (wgmesh.Key, error)

// meshKeyLabel separates the user data that binds a mesh key from every other use of user data.
const meshKeyLabel = "constellation mesh key v1\x00"

// MeshKeyUserData is the user data by which a node binds the WireGuard public key its mesh uses into its
// evidence: a fixed label and the 32-byte key.
func MeshKeyUserData(key wgmesh.Key) []byte {
	return append([]byte(meshKeyLabel), key[:]...)
}

// Listen opens the verification service's ports on host, serving evidence from issuer. meshKey (nil: the
// node binds none) gives the key that evidence asked with bind_mesh_key binds.
func Listen(host string, httpPort, grpcPort int, issuer attestation.Issuer, meshKey MeshKeyFunc, log *slog.Logger) (*Server, error) {
	httpLn, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(httpPort)))
	if err != nil {
		return nil, fmt.Errorf("verification service: %w", err)
	}
	grpcLn, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(grpcPort)))
	if err != nil {
		httpLn.Close()
		return nil, fmt.Errorf("verification service: %w", err)
	}
	// One limit for both protocols: they quote with the same TPM.
	limit, err := atls.NewIssuanceLimiter(atls.DefaultIssuanceLimits)
	if err != nil {
		httpLn.Close()
		grpcLn.Close()
		return nil, err
	}
	g := grpc.NewServer()
	gs := NewGRPCServer(issuer, log, limit)
	gs.meshKey = meshKey
	verifypb.RegisterVerifyServer(g, gs)
	return &Server{
		http:   &http.Server{Handler: Handler(issuer, log, limit), ReadHeaderTimeout: 10 * time.Second},
		grpc:   g,
		httpLn: httpLn, grpcLn: grpcLn,
	}, nil
}

// Addrs returns the HTTP and the gRPC address.
func (s *Server) Addrs() (httpAddr, grpcAddr string) {
	return s.httpLn.Addr().String(), s.grpcLn.Addr().String()
}

// Serve serves both protocols until [Server.Close], and returns the first error of either.
func (s *Server) Serve() error {
	errc := make(chan error, 2)
	go func() { errc <- s.http.Serve(s.httpLn) }()
	go func() { errc <- s.grpc.Serve(s.grpcLn) }()
	err := <-errc
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops both protocols.
func (s *Server) Close() {
	s.grpc.Stop()
	s.http.Close()
}

// GRPCServer serves the Verify gRPC API: the same evidence as the HTTP handler.
type GRPCServer struct {
	verifypb.UnimplementedVerifyServer
	issuer  attestation.Issuer
	log     *slog.Logger
	limit   *atls.IssuanceLimiter
	meshKey MeshKeyFunc
}

// BindMeshKey lets the service bind the node's mesh key (from meshKey) into evidence for callers that ask for
// it (bind_mesh_key).
func (s *GRPCServer) BindMeshKey(meshKey MeshKeyFunc) { s.meshKey = meshKey }

// NewGRPCServer returns the gRPC verification service of a node. It issues evidence within limit's limits;
// nil: within [atls.DefaultIssuanceLimits].
func NewGRPCServer(issuer attestation.Issuer, log *slog.Logger, limit *atls.IssuanceLimiter) *GRPCServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &GRPCServer{issuer: issuer, log: log, limit: orDefault(limit)}
}

// orDefault returns limit, or a limiter with the default limits.
func orDefault(limit *atls.IssuanceLimiter) *atls.IssuanceLimiter {
	if limit != nil {
		return limit
	}
	l, err := atls.NewIssuanceLimiter(atls.DefaultIssuanceLimits)
	if err != nil {
		panic(err) // the default limits are valid
	}
	return l
}

// GetAttestation returns fresh evidence for the caller's nonce. It binds no user data of the caller's: a caller
// must not be able to have the node vouch for a key of the caller's choosing. Asked with bind_mesh_key, it
// binds the node's own mesh key ([MeshKeyUserData]), or refuses if the node has none.
func (s *GRPCServer) GetAttestation(ctx context.Context, req *verifypb.GetAttestationRequest) (*verifypb.GetAttestationResponse, error) {
	if err := attestation.CheckNonce(req.GetNonce()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var remote net.Addr
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr
	}
	release, err := s.limit.Acquire(ctx, remote)
	if err != nil {
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	defer release()
	var userData []byte
	if req.GetBindMeshKey() {
		if s.meshKey == nil {
			return nil, status.Error(codes.FailedPrecondition, "this verification service binds no mesh key; ask the bootstrapper's (port 9091)")
		}
		key, err := s.meshKey()
		if err == nil && key == (wgmesh.Key{}) {
			err = errors.New("the node has no WireGuard key yet")
		}
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "the node's mesh key: %v", err)
		}
		userData = MeshKeyUserData(key)
	}
	ev, err := s.issuer.Issue(ctx, req.GetNonce(), userData)
	if err != nil {
		s.log.Error("issuing evidence failed", "error", err)
		return nil, status.Error(codes.Internal, "issuing evidence failed")
	}
	return &verifypb.GetAttestationResponse{Evidence: ev}, nil
}

// FetchGRPC asks the gRPC verification service at endpoint (host:port) for evidence bound to nonce.
func FetchGRPC(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
	return fetchGRPC(ctx, endpoint, &verifypb.GetAttestationRequest{Nonce: nonce})
}

// FetchGRPCMeshKey asks the gRPC verification service at endpoint (host:port) for evidence bound to nonce and
// to the node's mesh key ([MeshKeyUserData]).
func FetchGRPCMeshKey(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
	return fetchGRPC(ctx, endpoint, &verifypb.GetAttestationRequest{Nonce: nonce, BindMeshKey: true})
}

func fetchGRPC(ctx context.Context, endpoint string, req *verifypb.GetAttestationRequest) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := verifypb.NewVerifyClient(conn).GetAttestation(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("asking %s for evidence: %w", endpoint, err)
	}
	return resp.GetEvidence(), nil
}

// Handler serves GET /v1/attest?nonce=<hex>. It issues evidence within limit's limits; nil: within
// [atls.DefaultIssuanceLimits].
func Handler(issuer attestation.Issuer, log *slog.Logger, limit *atls.IssuanceLimiter) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	limit = orDefault(limit)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/attest", func(w http.ResponseWriter, r *http.Request) {
		nonce, err := hex.DecodeString(r.URL.Query().Get("nonce"))
		if err != nil {
			http.Error(w, "nonce must be hex", http.StatusBadRequest)
			return
		}
		if err := attestation.CheckNonce(nonce); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var remote net.Addr
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			remote = net.TCPAddrFromAddrPort(ap)
		}
		release, err := limit.Acquire(r.Context(), remote)
		if err != nil {
			http.Error(w, err.Error(), http.StatusTooManyRequests)
			return
		}
		defer release()
		ev, err := issuer.Issue(r.Context(), nonce, nil)
		if err != nil {
			log.Error("issuing evidence failed", "remote", r.RemoteAddr, "error", err)
			http.Error(w, "issuing evidence failed", http.StatusInternalServerError)
			return
		}
		log.Info("evidence issued", "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "application/json")
		w.Write(ev)
	})
	return mux
}

// Fetch asks the verification service at endpoint (host:port) for evidence bound to nonce.
func Fetch(ctx context.Context, endpoint string, nonce []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/v1/attest?nonce=%s", endpoint, hex.EncodeToString(nonce))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking %s for evidence: %w", endpoint, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, attestation.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading evidence from %s: %w", endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("verification service at %s: %s: %s", endpoint, resp.Status, raw)
	}
	return raw, nil
}
