// Package v1alpha1 is the NodeUpgrade API (group upgrade.constellation.dev, version v1alpha1): the custom
// resource through which an operator asks the cluster's upgrade controller to move every node to a node image
// (and Kubernetes version), and in whose status the controller reports its progress node by node. The status is
// the controller's only memory: a restarted controller resumes from it.
//
// +kubebuilder:object:generate=true
// +groupName=upgrade.constellation.dev
package v1alpha1
