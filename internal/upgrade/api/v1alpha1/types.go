package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

//go:generate go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0 object crd:crdVersions=v1 paths=. output:crd:dir=../../deploy/crd

// GroupVersion is the API's group and version.
var GroupVersion = schema.GroupVersion{Group: "upgrade.constellation.dev", Version: "v1alpha1"}

// SchemeBuilder adds the API's types to a scheme; AddToScheme is its AddToScheme.
var (
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &NodeUpgrade{}, &NodeUpgradeList{})
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})
	AddToScheme = SchemeBuilder.AddToScheme
)

// Name is the name of the cluster's one NodeUpgrade: the API server refuses any other, so that two upgrades can
// never run at once.
const Name = "cluster"

// KubeadmErrorAnnotation is the annotation on a node's Node object by which the node reports that kubeadm
// failed on it (join, or the upgrade of the cluster's Kubernetes version that the first control-plane node of a
// newer version runs): the failure, with the tail of kubeadm's output. The node writes it with its kubelet's
// credentials, which may change only its own Node object. The upgrade controller stops an upgrade whose
// replacement reports it; it never counts anything a node writes there as progress.
const KubeadmErrorAnnotation = "upgrade.constellation.dev/kubeadm-error"

// Phase is where an upgrade is.
type Phase string

// The phases of an upgrade. Succeeded, Failed and Aborted are final for the spec they were reached with: a
// changed spec (a new generation) starts over from the nodes as they are.
const (
	PhasePending   Phase = "Pending"
	PhaseRunning   Phase = "Running"
	PhaseSucceeded Phase = "Succeeded"
	PhaseFailed    Phase = "Failed"
	PhaseAborted   Phase = "Aborted"
)

// Step is where the replacement of one node is.
type Step string

// The steps of one node's replacement, in order.
const (
	// StepCreating: the provider is asked for the replacement node.
	StepCreating Step = "creating"
	// StepJoining: waiting for the replacement to register and become Ready.
	StepJoining Step = "joining"
	// StepDraining: the old node is cordoned and its pods evicted.
	StepDraining Step = "draining"
	// StepRemoving: the old node leaves etcd (control plane), the provider deletes it, its Node object goes.
	StepRemoving Step = "removing"
	// StepDone: the old node is gone.
	StepDone Step = "done"
)

// NodeUpgrade asks the upgrade controller to replace every node that does not run the wanted node image by a
// new node that does, one at a time, control plane first.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'cluster'",message="the cluster has one NodeUpgrade, named cluster"
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.imageDigest`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`
type NodeUpgrade struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NodeUpgradeSpec   `json:"spec"`
	Status NodeUpgradeStatus `json:"status,omitempty"`
}

// NodeUpgradeSpec is what the operator wants.
type NodeUpgradeSpec struct {
	// ImageDigest is the node image every node shall run, as "sha256:<64 hex digits>" (the digest in the image's
	// signed measurements).
	// +kubebuilder:validation:Pattern=`^sha256:[0-9a-f]{64}$`
	ImageDigest string `json:"imageDigest"`
	// KubernetesVersion is the kubelet version the nodes of that image run, e.g. "v1.37.2"; a replacement that
	// reports another one stops the upgrade. Empty: not checked.
	// +kubebuilder:validation:Pattern=`^v[0-9]+\.[0-9]+\.[0-9]+$`
	// +optional
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	// Paused holds the upgrade before it creates a replacement or drains a node, until it is cleared; nothing
	// is undone.
	// +optional
	Paused bool `json:"paused,omitempty"`
	// Abort ends the upgrade after the node being replaced (if any) is done: phase Aborted.
	// +optional
	Abort bool `json:"abort,omitempty"`
}

// NodeUpgradeStatus is the controller's progress, and its memory across restarts.
type NodeUpgradeStatus struct {
	// ObservedGeneration is the spec generation the status is about.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase is where the upgrade is.
	// +kubebuilder:validation:Enum=Pending;Running;Succeeded;Failed;Aborted
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// Message says what the controller does or waits for, or, when Failed, which node and step failed and why.
	// +optional
	Message string `json:"message,omitempty"`
	// ImageDigest and KubernetesVersion are the target the progress is about: the spec's when the upgrade
	// started. A spec with another target starts over once the node in flight is done.
	// +optional
	ImageDigest string `json:"imageDigest,omitempty"`
	// +optional
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	// Nodes are the replacements, in the order they were made; at most the last is not done.
	// +listType=atomic
	// +optional
	Nodes []NodeProgress `json:"nodes,omitempty"`
	// Conditions are the standard conditions: Progressing, Degraded.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// NodeProgress is the replacement of one node.
type NodeProgress struct {
	// OldNode is the node being replaced.
	OldNode string `json:"oldNode"`
	// Role is the old node's role: control-plane or worker.
	// +kubebuilder:validation:Enum=control-plane;worker
	Role string `json:"role"`
	// ReplacementNode is the new node's name, as the provider created it; empty until it did.
	// +optional
	ReplacementNode string `json:"replacementNode,omitempty"`
	// Step is where this replacement is.
	// +kubebuilder:validation:Enum=creating;joining;draining;removing;done
	Step Step `json:"step"`
	// Message says what the step waits for, or why it failed.
	// +optional
	Message string `json:"message,omitempty"`
	// StepStarted is when the step began.
	// +optional
	StepStarted *metav1.Time `json:"stepStarted,omitempty"`
}

// NodeUpgradeList is a list of NodeUpgrades.
//
// +kubebuilder:object:root=true
type NodeUpgradeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeUpgrade `json:"items"`
}
