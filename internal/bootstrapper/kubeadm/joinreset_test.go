package kubeadm

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// joinToken is a bootstrap token as the join service hands it out.
const joinToken = "abcdef.0123456789abcdef"

// A kubeadm join that fails for a reason another attempt may cure (the API server's endpoint reset the
// connection) is not final: it is left to the caller, which tries again, and nothing is reported on the Node
// object yet, where the upgrade controller would stop an upgrade with it. Once the caller gives up, it reports
// it. Neither the error nor the report carries the bootstrap token, even where kubeadm prints it.
func TestTransientJoinFailureIsLeftToTheCaller(t *testing.T) {
	e := newKubeadmEnv(t, "v1.37.2", "worker-0", "")
	script := "#!/bin/sh\necho \"$*\" >> " + e.calls + "\n" +
		"echo '[preflight] Running pre-flight checks'\n" +
		"echo 'I1207 20:31:07 token.go:70] [discovery] Created cluster-info discovery client, requesting info from \"10.217.0.10:6443\" with token " + joinToken + "' >&2\n" +
		"echo 'error: error execution phase kubelet-start: Get \"https://10.217.0.10:6443/api/v1/nodes/worker-0\": read tcp 10.217.0.12:41634->10.217.0.10:6443: read: connection reset by peer' >&2\nexit 1\n"
	if err := os.WriteFile(e.driver.kubeadmBin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	err := e.driver.joinKubeadm(t.Context(), []byte("token: "+joinToken+"\n"), []string{"join"}, false, joinToken)
	if err == nil || !strings.Contains(err.Error(), "connection reset by peer") {
		t.Fatalf("error %v, want kubeadm's", err)
	}
	if Permanent(err) {
		t.Errorf("a reset connection counts as final: %v", err)
	}
	if strings.Contains(err.Error(), "0123456789abcdef") {
		t.Errorf("the error carries the bootstrap token's secret:\n%v", err)
	}
	if r, ok := e.report(t, "worker-0"); ok || r != "" {
		t.Errorf("a failure that may pass was reported on the Node: %q", r)
	}
	if err := e.driver.ReportJoinFailure(t.Context(), err); err != nil {
		t.Fatal(err)
	}
	r, _ := e.report(t, "worker-0")
	if !strings.Contains(r, "connection reset by peer") || strings.Contains(r, "0123456789abcdef") {
		t.Errorf("reported on the Node: %q", r)
	}
}

// What another attempt cannot cure is final, and reported at once: kubeadm's preflight checks refuse the node,
// the node may not join at the cluster's version, or it joined and the upgrade that followed failed.
func TestFinalJoinFailures(t *testing.T) {
	for name, run := range map[string]func(t *testing.T) error{
		"preflight": func(t *testing.T) error {
			return newKubeadmEnv(t, "v1.37.2", "worker-0", "join").driver.joinKubeadm(t.Context(), nil, []string{"join"}, false, joinToken)
		},
		"version skew": func(t *testing.T) error {
			return newKubeadmEnv(t, "v1.36.3", "worker-0", "").driver.joinKubeadm(t.Context(), nil, []string{"join"}, false, joinToken)
		},
		"upgrade after the join": func(t *testing.T) error {
			e := newKubeadmEnv(t, "v1.36.3", "control-plane-1", "upgrade")
			e.registerReady(t, "control-plane-1")
			return e.driver.joinKubeadm(t.Context(), nil, []string{"join"}, true, joinToken)
		},
	} {
		t.Run(name, func(t *testing.T) {
			if err := run(t); err == nil || !Permanent(err) {
				t.Errorf("error %v, want a final one", err)
			}
		})
	}
	if Permanent(errors.New("connection refused")) {
		t.Error("an unmarked error counts as final")
	}
}

// ResetJoin stops the kubelet that the failed join started (there is no init system to stop it), and waits for
// it to exit, then runs kubeadm reset and removes the kubelet's kubeconfig, which the next Join would take for
// a join of an earlier boot.
func TestResetJoinStopsTheKubeletAndResets(t *testing.T) {
	e := newKubeadmEnv(t, "v1.37.2", "worker-0", "")
	dir := t.TempDir()
	d := e.driver
	d.kubeletRunDir, d.logDir = filepath.Join(dir, "kubelet"), dir
	if err := os.MkdirAll(d.kubeletRunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.yaml", "kubeadm-flags.env"} {
		if err := os.WriteFile(filepath.Join(d.kubeletRunDir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pidFile := filepath.Join(dir, "kubelet.pid")
	d.kubeletBin = filepath.Join(dir, "kubelet-bin")
	// The kubelet records its process ID and then runs until it is stopped.
	if err := os.WriteFile(d.kubeletBin, []byte("#!/bin/sh\necho $$ > "+pidFile+".tmp\nmv "+pidFile+".tmp "+pidFile+"\nexec sleep 3600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d.Log = func(format string, args ...any) {}
	d.startJoinKubelet(t.Context())
	// The launcher starts the kubelet as kubeadm's files are there already.
	raw, err := os.ReadFile(pidFile)
	for ; errors.Is(err, os.ErrNotExist); raw, err = os.ReadFile(pidFile) {
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ResetJoin(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the kubelet (process %d) still runs after ResetJoin: %v", pid, err)
	}
	if calls := e.kubeadmCalls(); len(calls) != 1 || calls[0] != "reset --force --cri-socket unix://"+ContainerdSocket {
		t.Errorf("kubeadm calls: %v", calls)
	}
	if _, err := os.Stat(d.kubeletConf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the kubelet's kubeconfig is left: %v", err)
	}
	// Without a running kubelet, ResetJoin resets all the same.
	if err := d.ResetJoin(t.Context()); err != nil {
		t.Fatal(err)
	}
}
