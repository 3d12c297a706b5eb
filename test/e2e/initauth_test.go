package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/kms"
)

// initWithoutAttestation calls Init on endpoint as anyone on the node network can: plain TLS that does not
// attest the node (h2 and a nonce of its own as ALPN, as the node's aTLS server asks), with initSecret, a
// master secret of its own and an empty policy.
func initWithoutAttestation(endpoint string, initSecret []byte) error {
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // the caller does not attest the node
		NextProtos:         []string{"h2", "atls-nonce/" + hex.EncodeToString(nonce)},
	}
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		return err
	}
	// The node's init service may start a moment after its verification service answered.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = initpb.NewInitClient(conn).Init(ctx, &initpb.InitRequest{InitSecret: initSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: []byte("{}")}, grpc.WaitForReady(true))
	return err
}
