package upgrade

import (
	"context"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/version"
	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

// Kubernetes versions: the node image determines a node's Kubernetes version. An upgrade to a node image of
// another version (NodeUpgradeSpec.KubernetesVersion) moves the cluster there by kubeadm's upgrade path: the
// first control-plane replacement of the new version joins with its own control plane and runs `kubeadm upgrade
// apply`, which moves the cluster's kubeadm configuration (kube-system/kubeadm-config, written by control-plane
// nodes only) to the new version, and with it the kubelet configuration and the addons. The controller
// - refuses a target more than one minor version newer than the cluster's, or older (kubeadm neither skips
//   minor versions nor downgrades by joining nodes), before it replaces a node;
// - counts a control-plane replacement of a Kubernetes upgrade as joined only once kubeadm upgrade apply is
//   through: the cluster's kubeadm configuration (written by control-plane nodes only) names the new version;
// - replaces workers only once kubeadm moved the addons (the kube-proxy DaemonSet names the new version), which
//   it does only when every control-plane node runs the new version: after the old ones are gone, the first
//   new control-plane node runs kubeadm's addon phase;
// - refuses to replace a worker before the control plane is on the new version (the configuration names it,
//   and every control-plane node's kubelet reports it): a kubelet must never be newer than the API server;
// - stops the upgrade when a replacement reports that kubeadm failed on it (KubeadmErrorAnnotation on its Node
//   object), with kubeadm's error.

// kubeadmConfig is kubeadm's cluster configuration; kubeProxy is the DaemonSet of kubeadm's kube-proxy addon.
var (
	kubeadmConfig = types.NamespacedName{Namespace: "kube-system", Name: "kubeadm-config"}
	kubeProxy     = types.NamespacedName{Namespace: "kube-system", Name: "kube-proxy"}
)

// upgradedTo reports why the cluster's kubeadm configuration does not name target yet ("" if it does): kubeadm
// upgrade apply on the first control-plane node of target uploads it.
func (r *Reconciler) upgradedTo(ctx context.Context, target string) (string, error) {
	tv, err := version.ParseSemantic(target)
	if err != nil {
		return "", fmt.Errorf("the target Kubernetes version %q: %w", target, err)
	}
	cv, err := r.clusterVersion(ctx)
	if err != nil {
		return "", err
	}
	if cv.LessThan(tv) || tv.LessThan(cv) {
		return fmt.Sprintf("its kubeadm configuration names v%s", cv), nil
	}
	return "", nil
}

// addonsAt reports why kubeadm's addons are not at target yet ("" if they are): its kube-proxy DaemonSet, which
// kubeadm moves once every control-plane node runs target. A control-plane node on which kubeadm failed to move
// them reported it (KubeadmErrorAnnotation): that is returned as an error that stops the upgrade.
func (r *Reconciler) addonsAt(ctx context.Context, target string) (string, error) {
	var nodes corev1.NodeList
	if err := r.Client.List(ctx, &nodes); err != nil {
		return "", fmt.Errorf("listing nodes: %w", err)
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if msg := n.Annotations[v1alpha1.KubeadmErrorAnnotation]; msg != "" && isControlPlane(n) {
			return "", &kubeadmFailure{node: n.Name, msg: msg}
		}
	}
	var ds appsv1.DaemonSet
	if err := r.Reader.Get(ctx, kubeProxy, &ds); err != nil {
		return "", fmt.Errorf("reading the kube-proxy DaemonSet (%s): %w", kubeProxy, err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if !strings.HasSuffix(c.Image, ":"+target) {
			return fmt.Sprintf("its kube-proxy DaemonSet runs %s", c.Image), nil
		}
	}
	return "", nil
}

// kubeadmFailure is a failure of kubeadm a control-plane node reported.
type kubeadmFailure struct{ node, msg string }

func (f *kubeadmFailure) Error() string {
	return fmt.Sprintf("kubeadm failed on control-plane node %s: %s", f.node, f.msg)
}

// clusterVersion is the Kubernetes version of the cluster's kubeadm configuration.
func (r *Reconciler) clusterVersion(ctx context.Context) (*version.Version, error) {
	var cm corev1.ConfigMap
	if err := r.Reader.Get(ctx, kubeadmConfig, &cm); err != nil {
		return nil, fmt.Errorf("reading the cluster's kubeadm configuration (%s): %w", kubeadmConfig, err)
	}
	var cc struct {
		KubernetesVersion string `json:"kubernetesVersion"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["ClusterConfiguration"]), &cc); err != nil {
		return nil, fmt.Errorf("the ClusterConfiguration of %s: %w", kubeadmConfig, err)
	}
	v, err := version.ParseSemantic(cc.KubernetesVersion)
	if err != nil {
		return nil, fmt.Errorf("the ClusterConfiguration of %s names no Kubernetes version: %w", kubeadmConfig, err)
	}
	return v, nil
}

// checkTarget refuses a target version kubeadm cannot upgrade the cluster to by replacing nodes: older than the
// cluster's, or more than one minor version newer.
func (r *Reconciler) checkTarget(ctx context.Context, target string) error {
	tv, err := version.ParseSemantic(target)
	if err != nil {
		return fmt.Errorf("the target Kubernetes version %q: %w", target, err)
	}
	cv, err := r.clusterVersion(ctx)
	if err != nil {
		return err
	}
	switch {
	case tv.LessThan(cv):
		return fmt.Errorf("the cluster runs Kubernetes v%s and cannot go back to %s: kubeadm does not downgrade a cluster; choose a node image of Kubernetes v%s or newer", cv, target, cv)
	case tv.Major() != cv.Major() || tv.Minor() > cv.Minor()+1:
		return fmt.Errorf("the cluster runs Kubernetes v%s and cannot go to %s at once: kubeadm upgrades one minor version at a time; upgrade to a node image of Kubernetes v%d.%d first", cv, target, cv.Major(), cv.Minor()+1)
	}
	return nil
}

// controlPlaneAt reports why the control plane is not on Kubernetes target yet ("" if it is): the cluster's
// kubeadm configuration (the API servers' version) and every control-plane node's kubelet must be at target or
// newer before a worker of target may join.
func (r *Reconciler) controlPlaneAt(ctx context.Context, target string) (string, error) {
	tv, err := version.ParseSemantic(target)
	if err != nil {
		return "", fmt.Errorf("the target Kubernetes version %q: %w", target, err)
	}
	cv, err := r.clusterVersion(ctx)
	if err != nil {
		return "", err
	}
	if cv.LessThan(tv) {
		return fmt.Sprintf("the cluster's kubeadm configuration (%s) names Kubernetes v%s", kubeadmConfig, cv), nil
	}
	var nodes corev1.NodeList
	if err := r.Client.List(ctx, &nodes); err != nil {
		return "", fmt.Errorf("listing nodes: %w", err)
	}
	var behind []string
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if !isControlPlane(n) {
			continue
		}
		if v, err := version.ParseGeneric(n.Status.NodeInfo.KubeletVersion); err != nil || v.LessThan(tv) {
			behind = append(behind, fmt.Sprintf("%s runs kubelet %q", n.Name, n.Status.NodeInfo.KubeletVersion))
		}
	}
	slices.Sort(behind)
	if len(behind) > 0 {
		return fmt.Sprintf("control-plane node %v", behind), nil
	}
	return "", nil
}
