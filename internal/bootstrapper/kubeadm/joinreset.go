package kubeadm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// A join that fails is either final ([Permanent]: this node may not join as it is, or it joined and what
// followed failed) or may succeed if it is tried again (the API server's endpoint did not answer, a connection
// was reset): the caller then undoes what the failed join left (ResetJoin) and runs Join again with the same
// answer of the join service, while its bootstrap token is valid; once it gives up, it reports the last failure
// on the node's Node object (ReportJoinFailure), as Join reports a final failure itself.

// permanentError marks a failure of Join that another attempt cannot cure.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// permanent marks err as a failure that another attempt cannot cure.
func permanent(err error) error { return permanentError{err} }

// Permanent says whether err, a failure of Join, is final: trying again cannot cure it. Join has reported it on
// the node's Node object already.
func Permanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// preflightRefused is what kubeadm says when its preflight checks of the node refuse it.
const preflightRefused = "[preflight] Some fatal errors occurred"

// redact replaces the bootstrap token, and its secret half on its own, in kubeadm's output by a placeholder:
// the output goes into logs and onto the Node object.
func redact(out, token string) string {
	if token == "" {
		return out
	}
	out = strings.ReplaceAll(out, token, "<bootstrap token>")
	if _, secret, ok := strings.Cut(token, "."); ok && secret != "" {
		out = strings.ReplaceAll(out, secret, "<bootstrap token secret>")
	}
	return out
}

// runningKubelet is the kubelet a Join started: stop ends it, or its wait for kubeadm's files; done is closed
// once it exited.
type runningKubelet struct {
	stop context.CancelFunc
	done <-chan struct{}
}

// startJoinKubelet starts the kubelet of a join as soon as kubeadm has configured it, until stopJoinKubelet.
func (d *Driver) startJoinKubelet(ctx context.Context) {
	d.stopJoinKubelet()
	kctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	d.mu.Lock()
	d.joinKubelet = &runningKubelet{stop: stop, done: done}
	d.mu.Unlock()
	go func() {
		defer close(done)
		if exited := d.launchKubelet(kctx); exited != nil {
			<-exited
		}
	}()
}

// stopJoinKubelet stops the kubelet the last Join started, if any, and waits until it exited.
func (d *Driver) stopJoinKubelet() {
	d.mu.Lock()
	k := d.joinKubelet
	d.joinKubelet = nil
	d.mu.Unlock()
	if k != nil {
		k.stop()
		<-k.done
	}
}

// ResetJoin undoes what a failed Join left on the node, as a fresh node has it, so that Join can run again: it
// stops the kubelet Join started (kubeadm stops it through an init system, which these nodes do not have), then
// runs kubeadm reset, which removes the containers of the kubelet's pods, the static pods' manifests, the
// cluster's PKI and kubeconfigs, the kubelet's directory and, on a control-plane node, its etcd member and data.
// The kubelet's kubeconfig is removed in any case: Join takes one that is left for a join of an earlier boot.
// The registry and DNS configuration of the container runtime, and the runtime itself, stay.
func (d *Driver) ResetJoin(ctx context.Context) error {
	d.stopJoinKubelet()
	out, err := exec.CommandContext(ctx, d.kubeadm(), "reset", "--force", "--cri-socket", "unix://"+ContainerdSocket).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubeadm reset after a failed join: %w\n%s", err, tail(out, 30))
	}
	for _, path := range []string{d.kubeletKubeconfig(), d.kubeadmConfig()} {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s after a failed join: %w", path, err)
		}
	}
	d.logf("kubeadm reset: the node's Kubernetes state is as before the join")
	return nil
}

// ReportJoinFailure reports the failure of Join on the node's Node object (see [KubeadmErrorAnnotation]), with
// the kubelet's credentials: for a failure that was not [Permanent] when the caller stops trying.
func (d *Driver) ReportJoinFailure(ctx context.Context, failure error) error {
	c, err := d.kubeletClient()
	if err != nil {
		return err
	}
	return reportFailure(ctx, c, d.Options.NodeName, failure)
}

func (d *Driver) kubeletCommand() string {
	if d.kubeletBin != "" {
		return d.kubeletBin
	}
	return "kubelet"
}

func (d *Driver) kubeletDir() string {
	if d.kubeletRunDir != "" {
		return d.kubeletRunDir
	}
	return "/var/lib/kubelet"
}

func (d *Driver) kubeadmConfig() string {
	if d.kubeadmConf != "" {
		return d.kubeadmConf
	}
	return KubeadmConfig
}
