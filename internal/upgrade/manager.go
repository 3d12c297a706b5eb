package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/constellation-dev/constellation/internal/reattestation"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
)

// Options configure the controller.
type Options struct {
	Fleet Fleet
	Etcd  Etcd
	Log   *slog.Logger
	// LeaderElection makes the controller act only while it holds the lease LeaseName in LeaseNamespace,
	// so that of several replicas one acts at a time.
	LeaderElection bool
	LeaseNamespace string
	// Retry is how long to wait before asking again what only time changes (default 5 s).
	Retry time.Duration
	// JoinTimeout is how long a replacement may take to join and become Ready (default 30 min).
	JoinTimeout time.Duration
}

// LeaseName is the controller's leader election lease.
const LeaseName = "upgrade-controller"

// NewManager returns the controller, ready to Start: it watches the NodeUpgrade, the Nodes, the deletion of
// Pods and the nodes' attestation records, and never lists on a timer.
func NewManager(cfg *rest.Config, opts Options) (manager.Manager, error) {
	if opts.Fleet == nil || opts.Etcd == nil || opts.Log == nil {
		return nil, fmt.Errorf("the upgrade controller needs a fleet, etcd and a logger")
	}
	if opts.Retry == 0 {
		opts.Retry = 5 * time.Second
	}
	if opts.JoinTimeout == 0 {
		opts.JoinTimeout = 30 * time.Minute
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                        scheme,
		Logger:                        logr.FromSlogHandler(opts.Log.Handler()),
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              LeaseName,
		LeaderElectionNamespace:       opts.LeaseNamespace,
		LeaderElectionReleaseOnCancel: true,
		Metrics:                       metricsserver.Options{BindAddress: "0"}, // serves nothing
		Controller:                    config.Controller{SkipNameValidation: ptr.To(true)},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// Of a pod, the controller reads where it runs, who controls it and whether it ends.
			&corev1.Pod{}: {Transform: slimPod},
			// The nodes' attestation records, which say which image each node runs; none elsewhere.
			&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{reattestation.RecordNamespace: {}}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("creating the controller manager: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Pod{}, podNodeIndex, func(o client.Object) []string {
		return []string{o.(*corev1.Pod).Spec.NodeName}
	}); err != nil {
		return nil, fmt.Errorf("indexing pods by node: %w", err)
	}
	r := &Reconciler{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Fleet: opts.Fleet, Etcd: opts.Etcd, Log: opts.Log, Retry: opts.Retry, JoinTimeout: opts.JoinTimeout}
	toUpgrade := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: v1alpha1.Name}}}
	})
	onlyDeletes := predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		UpdateFunc:  func(e event.UpdateEvent) bool { return e.ObjectNew.GetDeletionTimestamp() != nil },
		DeleteFunc:  func(event.DeleteEvent) bool { return true },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("nodeupgrade").
		For(&v1alpha1.NodeUpgrade{}).
		Watches(&corev1.Node{}, toUpgrade).
		Watches(&corev1.Pod{}, toUpgrade, builder.WithPredicates(onlyDeletes)).
		Watches(&coordinationv1.Lease{}, toUpgrade, builder.WithPredicates(recordVerdicts)).
		Complete(r)
	if err != nil {
		return nil, fmt.Errorf("creating the NodeUpgrade controller: %w", err)
	}
	return mgr, nil
}

// recordVerdicts lets through the changes of an attestation record that can change what it vouches for: its
// state, image or Node object, not each renewal of its verification time (the controller asks again by itself
// while it waits for a record).
var recordVerdicts = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		for _, a := range []string{reattestation.StateAnnotation, reattestation.AttestedImageAnnotation, reattestation.NodeUIDAnnotation} {
			if e.ObjectOld.GetAnnotations()[a] != e.ObjectNew.GetAnnotations()[a] {
				return true
			}
		}
		return false
	},
}

// slimPod keeps of a cached pod what the drain reads.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp, OwnerReferences: p.OwnerReferences,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	if v, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		slim.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: v}
	}
	return slim, nil
}
