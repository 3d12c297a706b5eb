package kubeadm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/version"
	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

// A node runs the Kubernetes of its own image, whatever version the cluster's kubeadm configuration
// (kube-system/kubeadm-config) names: the image has no other. A node of a newer image joins a cluster of the
// previous minor version only as a control-plane node (a kubelet must never be newer than the API server): kubeadm
// join deploys the control plane at the cluster's version, so the node patches its control-plane static pods to
// the images of its own version (ControlPlanePatches), and once it has joined, it runs `kubeadm upgrade apply`
// to its own version. That moves the cluster's configuration, the kubelet configuration and the addons (CoreDNS,
// kube-proxy) to the new version; the control-plane nodes that join afterwards join at the new version. The
// upgrade controller replaces the control plane first and every worker only after the cluster's configuration
// names the new version.

// clusterVersionPath is kubeadm's cluster configuration, which every node (group system:nodes) may read.
const clusterVersionPath = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"

// controlPlaneComponents are the static pods of a control-plane node whose images carry the Kubernetes
// version (etcd's and CoreDNS's are the image's own, see InitConfigFile).
var controlPlaneComponents = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// ControlPlanePatches returns kubeadm patches (file name in PatchesDir → content) that run the control-plane
// components of Kubernetes version v: JSON patches of the static pods' images.
func ControlPlanePatches(v string) map[string][]byte {
	patches := map[string][]byte{}
	for _, c := range controlPlaneComponents {
		op := []map[string]string{{"op": "replace", "path": "/spec/containers/0/image", "value": "registry.k8s.io/" + c + ":" + v}}
		raw, _ := json.Marshal(op)
		patches[c+"+json.json"] = raw
	}
	return patches
}

// clusterVersion reads the Kubernetes version of the cluster's kubeadm configuration through c.
//
// A joining node reaches the API through its own endpoint, whose backends (the control plane's API servers) may
// not answer yet: while the request does not reach an API server, or the API server is not ready (5xx, 429), it
// is sent again, for up to joinAPITimeout. So is a refusal (401, 403): an API server that has just (re)started
// refuses what its authorizers will allow once they have caught up with the cluster's state; one that still
// refuses when the wait ends is final. Any other answer (404: no kubeadm configuration) is final at once.
func clusterVersion(ctx context.Context, c *kubeapi.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, joinAPITimeout)
	defer cancel()
	var cm struct {
		Data map[string]string `json:"data"`
	}
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := c.Do(ctx, http.MethodGet, clusterVersionPath, "", nil, &cm)
		if err == nil {
			break
		}
		var se *kubeapi.StatusError
		refused := errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden)
		if se != nil && !refused && se.Code != http.StatusTooManyRequests && se.Code < 500 {
			return "", permanent(fmt.Errorf("reading the cluster's kubeadm configuration (kube-system/kubeadm-config): %w", err))
		}
		select {
		case <-ctx.Done():
			if refused {
				return "", permanent(fmt.Errorf("reading the cluster's kubeadm configuration (kube-system/kubeadm-config): the API server still refused it when the wait ended: %w", err))
			}
			return "", fmt.Errorf("reading the cluster's kubeadm configuration (kube-system/kubeadm-config): no API server answered in time: %w", err)
		case <-time.After(wait):
		}
	}
	v, err := ClusterConfigVersion(cm.Data["ClusterConfiguration"])
	if err != nil {
		return "", permanent(err)
	}
	return v, nil
}

// joinAPITimeout bounds how long a joining node waits for an API server to answer through its endpoint, as
// kubeadm join's own discovery does.
const joinAPITimeout = 5 * time.Minute

// ClusterConfigVersion returns the kubernetesVersion of kubeadm's ClusterConfiguration document.
func ClusterConfigVersion(clusterConfiguration string) (string, error) {
	var cc struct {
		KubernetesVersion string `json:"kubernetesVersion"`
	}
	if err := yaml.Unmarshal([]byte(clusterConfiguration), &cc); err != nil {
		return "", fmt.Errorf("the cluster's kubeadm ClusterConfiguration: %w", err)
	}
	if _, err := version.ParseSemantic(cc.KubernetesVersion); err != nil {
		return "", fmt.Errorf("the cluster's kubeadm ClusterConfiguration names no Kubernetes version: %w", err)
	}
	return cc.KubernetesVersion, nil
}

// PlanJoin decides how a node of Kubernetes version own joins a cluster whose kubeadm configuration names
// version cluster: upgrade says that the node, a control-plane node, runs `kubeadm upgrade apply own` after it
// joined. A node that cannot join (a worker newer than the control plane, a control-plane node older than the
// cluster or more than one minor version newer) gets an error that says why; it must not join.
func PlanJoin(cluster, own string, controlPlane bool) (upgrade bool, err error) {
	cv, err := version.ParseSemantic(cluster)
	if err != nil {
		return false, fmt.Errorf("the cluster's Kubernetes version %q: %w", cluster, err)
	}
	ov, err := version.ParseSemantic(own)
	if err != nil {
		return false, fmt.Errorf("this node image's Kubernetes version %q: %w", own, err)
	}
	switch c := compare(ov, cv); {
	case c == 0:
		return false, nil
	case c > 0 && !controlPlane:
		return false, fmt.Errorf("this worker's kubelet %s is newer than the cluster's control plane %s, which Kubernetes does not support: "+
			"upgrade the control plane first (the upgrade controller replaces the control-plane nodes before the workers)", own, cluster)
	case c > 0 && (ov.Major() != cv.Major() || ov.Minor() > cv.Minor()+1):
		return false, fmt.Errorf("this node's Kubernetes %s is more than one minor version newer than the cluster's %s: kubeadm upgrades one minor version at a time; "+
			"upgrade the cluster to a node image of Kubernetes %d.%d first", own, cluster, cv.Major(), cv.Minor()+1)
	case c > 0:
		return true, nil
	case controlPlane:
		return false, fmt.Errorf("this node's control plane %s is older than the cluster's %s: kubeadm does not downgrade a cluster; "+
			"use a node image of Kubernetes %s or newer", own, cluster, cluster)
	}
	// An older kubelet than the API server: kubeadm's preflight checks the skew it supports.
	return false, nil
}

// upgradeArgs are the arguments of `kubeadm upgrade apply` to version v on a control-plane node that joined:
// non-interactive, with the node's patches, and without the preflight checks this product's nodes fail anyway
// (see Join). etcd is the image's own at every version and is not touched. The phase kubeconfig is skipped: it
// would point this node's kubelet at this node's API server only, where it talks to the cluster's endpoint (see
// launchKubelet).
func upgradeArgs(v, patches string) []string {
	return []string{"upgrade", "apply", v, "--yes", "--patches", patches, "--etcd-upgrade=false", "--skip-phases=kubeconfig",
		"--ignore-preflight-errors=SystemVerification,Service-Kubelet,FileExisting-crictl,FileExisting-socat,FileExisting-ethtool,FileExisting-ebtables"}
}

// KubeadmErrorAnnotation is where a node reports that kubeadm failed on it (see [v1alpha1.KubeadmErrorAnnotation]).
const KubeadmErrorAnnotation = v1alpha1.KubeadmErrorAnnotation

// maxReport bounds a failure report: the tail of kubeadm's output says what failed.
const maxReport = 4000

// reportFailure writes the failure of kubeadm on this node onto the node's Node object, with the kubelet's
// credentials (which may change only this node's Node object), so that the upgrade controller stops the upgrade
// with it. Without a Node object yet (kubeadm failed before the kubelet registered), it creates one that holds
// only the report. It returns why it could not report, if it could not.
func reportFailure(ctx context.Context, c *kubeapi.Client, node string, failure error) error {
	msg := failure.Error()
	if len(msg) > maxReport {
		msg = "…" + msg[len(msg)-maxReport:]
	}
	path := "/api/v1/nodes/" + url.PathEscape(node)
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]string{KubeadmErrorAnnotation: msg}}}
	err := c.Do(ctx, http.MethodPatch, path, kubeapi.MergePatch, patch, nil)
	if !kubeapi.IsStatus(err, http.StatusNotFound) {
		return err
	}
	obj := map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": node, "annotations": map[string]string{KubeadmErrorAnnotation: msg}}}
	if err := c.Do(ctx, http.MethodPost, "/api/v1/nodes", "", obj, nil); err != nil {
		if kubeapi.IsStatus(err, http.StatusConflict) {
			// The kubelet registered meanwhile.
			return c.Do(ctx, http.MethodPatch, path, kubeapi.MergePatch, patch, nil)
		}
		return err
	}
	return nil
}

// writePatches writes the control-plane patches of the node's own version into dir.
func writePatches(dir, v string) error {
	for name, raw := range ControlPlanePatches(v) {
		if err := writeFile(filepath.Join(dir, name), raw); err != nil {
			return fmt.Errorf("writing the control-plane patch %s: %w", name, err)
		}
	}
	return nil
}

// kubeletClient is a client of the cluster's API with the kubelet's credentials (KubeletKubeconfig).
func (d *Driver) kubeletClient() (*kubeapi.Client, error) {
	c, err := kubeapi.FromKubeconfig(d.kubeletKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("the kubelet's kubeconfig: %w", err)
	}
	return c, nil
}

func (d *Driver) kubeletKubeconfig() string {
	if d.kubeletConf != "" {
		return d.kubeletConf
	}
	return KubeletKubeconfig
}

func (d *Driver) kubeadm() string {
	if d.kubeadmBin != "" {
		return d.kubeadmBin
	}
	return "kubeadm"
}

// joinKubeadm runs kubeadm join (args, configuration cfg with the bootstrap token token) as plan says, and
// then, if the node is the first of a newer Kubernetes version, kubeadm upgrade apply to the node's version.
// Every failure of kubeadm is returned with the tail of its output (without the token). A failure that another
// attempt cannot cure ([Permanent]: the node may not join, kubeadm's preflight checks refuse it, or it joined
// and what follows failed) is reported on the node's Node object (reportFailure) at once; any other is left to
// the caller, which tries again after ResetJoin or reports it with ReportJoinFailure.
func (d *Driver) joinKubeadm(ctx context.Context, cfg []byte, args []string, controlPlane bool, token string) (err error) {
	defer func() {
		if err == nil || !Permanent(err) {
			return
		}
		c, cerr := d.kubeletClient()
		if cerr == nil {
			cerr = reportFailure(ctx, c, d.Options.NodeName, err)
		}
		if cerr != nil {
			err = fmt.Errorf("%w (reporting the failure on node %s failed too: %v)", err, d.Options.NodeName, cerr)
		}
	}()
	c, err := d.kubeletClient()
	if err != nil {
		return permanent(err)
	}
	cluster, err := clusterVersion(ctx, c)
	if err != nil {
		return err
	}
	upgrade, err := PlanJoin(cluster, d.Options.KubernetesVersion, controlPlane)
	if err != nil {
		return permanent(fmt.Errorf("kubeadm join: %w", err))
	}
	if upgrade {
		d.logf("the cluster runs Kubernetes %s, this node's image %s: joining with the control plane of %s, then kubeadm upgrade apply %s",
			cluster, d.Options.KubernetesVersion, d.Options.KubernetesVersion, d.Options.KubernetesVersion)
	}
	if out, err := runWithConfig(ctx, d.kubeadmConfig(), cfg, d.kubeadm(), args...); err != nil {
		err = fmt.Errorf("kubeadm join: %w\n%s", err, redact(tail(out, 30), token))
		if bytes.Contains(out, []byte(preflightRefused)) {
			// The checks of the node itself, which ResetJoin left as a fresh node has it: another attempt
			// finds the same.
			return permanent(err)
		}
		return err
	}
	// From here on the node is a member of the cluster: a failure is not undone by joining again.
	if !upgrade {
		return nil
	}
	// kubeadm's health checks before an upgrade want every control-plane node Ready, this one included.
	if err := waitNodeReady(ctx, c, d.Options.NodeName, d.readyTimeout()); err != nil {
		return permanent(fmt.Errorf("before kubeadm upgrade apply %s: %w", d.Options.KubernetesVersion, err))
	}
	out, err := exec.CommandContext(ctx, d.kubeadm(), upgradeArgs(d.Options.KubernetesVersion, d.patchesDir())...).CombinedOutput()
	if err != nil {
		return permanent(fmt.Errorf("kubeadm upgrade apply %s (the cluster ran %s): %w\n%s", d.Options.KubernetesVersion, cluster, err, redact(tail(out, 30), token)))
	}
	d.logf("kubeadm upgrade apply %s: the cluster's configuration and kubelet configuration are at %s", d.Options.KubernetesVersion, d.Options.KubernetesVersion)
	// kubeadm moves the addons (CoreDNS, kube-proxy) only once every control-plane node runs the new version:
	// here, once the upgrade controller removed the old ones.
	if d.addonsRequested != nil {
		d.addonsRequested <- struct{}{}
		return nil
	}
	go d.upgradeAddons(context.WithoutCancel(ctx), 15*time.Second)
	return nil
}

// addonsSkipped is what kubeadm says when it leaves the addons as they are because a control-plane node runs
// another version.
const addonsSkipped = "Skipping upgrade of addons because control plane instances"

// upgradeAddons runs kubeadm's addon upgrade on this control-plane node every interval until kubeadm no longer
// skips it (every control-plane node runs this node's version). A failure of kubeadm is reported on this node's
// Node object (reportFailure), where the upgrade controller, which replaces no worker before the addons moved,
// stops the upgrade with it.
func (d *Driver) upgradeAddons(ctx context.Context, interval time.Duration) {
	for {
		out, err := exec.CommandContext(ctx, d.kubeadm(), "upgrade", "node", "phase", "addon", "all").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("kubeadm upgrade node phase addon all (to %s): %w\n%s", d.Options.KubernetesVersion, err, tail(out, 30))
			d.logf("%v", err)
			c, cerr := d.kubeletClient()
			if cerr == nil {
				cerr = reportFailure(ctx, c, d.Options.NodeName, err)
			}
			if cerr != nil {
				d.logf("reporting the failure on node %s: %v", d.Options.NodeName, cerr)
			}
			return
		}
		if !strings.Contains(string(out), addonsSkipped) {
			d.logf("kubeadm upgraded the addons to %s", d.Options.KubernetesVersion)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// waitNodeReady waits until the Node object of node says Ready, for at most limit.
func waitNodeReady(ctx context.Context, c *kubeapi.Client, node string, limit time.Duration) error {
	why := "not registered"
	err := waitFor(ctx, limit, func() bool {
		var n struct {
			Status struct {
				Conditions []struct{ Type, Status, Reason, Message string } `json:"conditions"`
			} `json:"status"`
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(node), "", nil, &n); err != nil {
			why = err.Error()
			return false
		}
		why = "no Ready condition"
		for _, cond := range n.Status.Conditions {
			if cond.Type == "Ready" {
				why = "Ready=" + cond.Status + " " + cond.Reason + " " + cond.Message
				return cond.Status == "True"
			}
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("node %s is not Ready (%s): %w", node, why, err)
	}
	return nil
}

func (d *Driver) readyTimeout() time.Duration {
	if d.nodeReadyTimeout > 0 {
		return d.nodeReadyTimeout
	}
	return 20 * time.Minute
}

// compare is -1, 0 or 1 as a is older than, the same as or newer than b.
func compare(a, b *version.Version) int {
	switch {
	case a.LessThan(b):
		return -1
	case b.LessThan(a):
		return 1
	}
	return 0
}
