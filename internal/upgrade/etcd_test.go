package upgrade_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/upgrade"
)

// TestEtcdRemoveMember removes the member of a replaced control-plane node from a real two-member etcd
// cluster, and only once the replacement's member is there.
func TestEtcdRemoveMember(t *testing.T) {
	etcdBin, _, err := kubeapitest.Binaries()
	if err != nil {
		t.Skip(err)
	}
	ports := freePorts(t, 4)
	url := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[i]) }
	initial := fmt.Sprintf("cp-0=%s,cp-1=%s", url(1), url(3))
	for i, name := range []string{"cp-0", "cp-1"} {
		client, peer := url(2*i), url(2*i+1)
		cmd := exec.Command(etcdBin, "--name", name, "--data-dir", filepath.Join(t.TempDir(), name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", initial, "--initial-cluster-state", "new", "--unsafe-no-fsync", "--log-level", "error")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	// cp-1's client endpoint: cp-0's etcd ends when it is removed.
	endpoints := []string{url(2)}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	members := func() []string {
		for {
			list, err := cli.MemberList(t.Context())
			if err == nil {
				var names []string
				for _, m := range list.Members {
					names = append(names, m.Name)
				}
				slices.Sort(names)
				return names
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Both members have started (an unstarted member has no name) and the cluster has a leader.
	for !slices.Equal(members(), []string{"cp-0", "cp-1"}) {
		time.Sleep(50 * time.Millisecond)
	}
	for {
		if _, err := cli.Get(t.Context(), "probe"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	e := &upgrade.EtcdMembers{Endpoints: endpoints, Log: slog.New(slog.DiscardHandler)}
	if err := e.RemoveMember(context.Background(), "cp-0", "cp-9"); !errors.Is(err, upgrade.ErrNotYet) {
		t.Fatalf("removing cp-0 for a replacement without a member: %v, want ErrNotYet", err)
	}
	if got := members(); !slices.Equal(got, []string{"cp-0", "cp-1"}) {
		t.Fatalf("members %v after a refused removal", got)
	}
	// etcd removes a member only once the others have been connected for a while: until then, not yet.
	for {
		err := e.RemoveMember(context.Background(), "cp-0", "cp-1")
		if err == nil {
			break
		}
		if !errors.Is(err, upgrade.ErrNotYet) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := members(); !slices.Equal(got, []string{"cp-1"}) {
		t.Fatalf("members %v, want cp-1 alone", got)
	}
	// Again, as a restarted controller would: cp-0 has no member any more.
	if err := e.RemoveMember(context.Background(), "cp-0", "cp-1"); err != nil {
		t.Fatalf("removing an already removed member: %v", err)
	}
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
