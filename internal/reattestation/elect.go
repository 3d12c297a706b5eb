package reattestation

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
)

// LeaseName is the Lease in kube-system by which one controller of the cluster is active.
const LeaseName = "constellation-reattest"

// RunElected runs the controller while this process holds the Lease (identity: this node's name), and waits
// to take it over while another holds it, until ctx ends.
func RunElected(ctx context.Context, c *Controller, identity string) error {
	c.identity = identity
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: ControlNamespace, Name: LeaseName},
		Client:     c.o.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Name:            LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					c.log.Info("re-attestation controller active on this node", "identity", identity)
					if err := c.Run(ctx); err != nil {
						c.log.Error("re-attestation controller stopped", "error", err)
					}
				},
				OnStoppedLeading: func() { c.log.Info("re-attestation controller no longer active on this node", "identity", identity) },
			},
		})
		if err != nil {
			return fmt.Errorf("leader election of the re-attestation controller: %w", err)
		}
		le.Run(ctx)
	}
	return nil
}

// Manifests are the cluster-wide objects of continuous attestation: a ValidatingAdmissionPolicy (and its
// binding) that forbids a quarantined node, with its kubelet's credentials, to uncordon itself or to delete
// its Node object (and so to register again without the quarantine); NodeRestriction already forbids it to
// change its taints and the quarantine label. The controller's own permissions come with the join service.
func Manifests() ([]byte, error) {
	const name = "constellation-quarantine"
	meta := map[string]any{"name": name, "labels": kubeapi.Labels("reattest")}
	return kubeapi.List(
		map[string]any{
			"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": meta,
			"spec": map[string]any{
				"failurePolicy": "Fail",
				"matchConstraints": map[string]any{"resourceRules": []map[string]any{{
					"apiGroups": []string{""}, "apiVersions": []string{"v1"}, "operations": []string{"UPDATE", "DELETE"}, "resources": []string{"nodes"},
				}}},
				"matchConditions": []map[string]any{
					{"name": "kubelet", "expression": "'system:nodes' in request.userInfo.groups"},
					{"name": "quarantined", "expression": fmt.Sprintf("has(oldObject.metadata.labels) && '%s' in oldObject.metadata.labels", meshpeers.QuarantineLabel)},
				},
				"validations": []map[string]any{
					{"expression": "request.operation != 'DELETE'", "message": "a quarantined node may not delete its Node object; it rejoins only after a reboot and a fresh attestation", "reason": "Forbidden"},
					{"expression": "request.operation != 'UPDATE' || (has(object.spec.unschedulable) && object.spec.unschedulable)", "message": "a quarantined node stays cordoned", "reason": "Forbidden"},
				},
			},
		},
		map[string]any{
			"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": meta,
			"spec": map[string]any{"policyName": name, "validationActions": []string{"Deny"}},
		},
	)
}
