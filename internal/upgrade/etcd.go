package upgrade

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdMembers reaches the control plane's etcd with a client certificate of its CA, as kubeadm lays them out on
// a control-plane node (the controller runs there, on the host network: etcd listens on 127.0.0.1:2379).
type EtcdMembers struct {
	Endpoints []string
	TLS       *tls.Config
	Log       *slog.Logger
}

// KubeadmEtcd is etcd at the endpoints with kubeadm's CA and health-check client certificate in pkiDir
// (/etc/kubernetes/pki/etcd on a control-plane node).
func KubeadmEtcd(pkiDir string, endpoints []string, log *slog.Logger) (*EtcdMembers, error) {
	info := transport.TLSInfo{
		TrustedCAFile: filepath.Join(pkiDir, "ca.crt"),
		CertFile:      filepath.Join(pkiDir, "healthcheck-client.crt"),
		KeyFile:       filepath.Join(pkiDir, "healthcheck-client.key"),
	}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("reading etcd's client certificate in %s: %w", pkiDir, err)
	}
	return &EtcdMembers{Endpoints: endpoints, TLS: cfg, Log: log}, nil
}

// RemoveMember implements [Etcd]: members are named by their node (kubeadm names them so).
func (e *EtcdMembers) RemoveMember(ctx context.Context, name, replacement string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, TLS: e.TLS, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("connecting to etcd at %v: %w", e.Endpoints, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("listing etcd members at %v: %w", e.Endpoints, err)
	}
	var old uint64
	replacementVotes := false
	for _, m := range list.Members {
		switch m.Name {
		case name:
			old = m.ID
		case replacement:
			// An unstarted member has no name yet; a learner does not vote.
			replacementVotes = !m.IsLearner
		}
	}
	if old == 0 {
		e.Log.Info("No etcd member to remove", "node", name)
		return nil
	}
	if !replacementVotes {
		return fmt.Errorf("%w: the replacement %s is not a started, voting etcd member", ErrNotYet, replacement)
	}
	_, err = cli.MemberRemove(ctx, old)
	if errors.Is(rpctypes.Error(err), rpctypes.ErrUnhealthy) {
		// etcd refuses while the remaining members have not all been connected for a while (they would lack
		// a quorum, or the replacement has just started).
		return fmt.Errorf("%w: etcd would not stay healthy without %s yet", ErrNotYet, name)
	}
	if err != nil {
		return fmt.Errorf("removing etcd member %s (%x): %w", name, old, err)
	}
	return nil
}
