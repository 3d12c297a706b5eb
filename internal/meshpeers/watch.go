package meshpeers

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// nodes is the resource the record lives on.
var nodes = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// Watcher follows the cluster's record through one watch on the Node objects' metadata: the API server sends
// each change once, instead of every node listing every Node (with its status) every few seconds, which loads
// the API server with the square of the number of nodes. Only metadata travels (PartialObjectMetadata), not
// the Nodes' status.
type Watcher struct {
	informer cache.SharedIndexInformer
	changed  chan struct{}
	failures atomic.Int64
}

// RESTConfig reads a kubeconfig (the kubelet's, on a node). Client certificates referenced by file are read
// again when they change, so that the kubelet's certificate rotation carries over.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading the kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "constellation-mesh"
	return cfg, nil
}

// NewWatcher prepares a watch of the record; Run starts it.
func NewWatcher(cfg *rest.Config, log *slog.Logger) (*Watcher, error) {
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("a client for the Node objects: %w", err)
	}
	// No periodic resync: the informer's cache is complete after the first list, and every change arrives as
	// an event.
	inf := metadatainformer.NewFilteredMetadataInformer(client, nodes, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
	// The cache keeps of each Node only what the record needs: its name, recorded key and quarantine mark. A
	// node holds the whole cluster's record, so this is its memory at a thousand nodes.
	if err := inf.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			kept := &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta}
			kept.Name, kept.ResourceVersion = m.Name, m.ResourceVersion
			if key, ok := m.Annotations[KeyAnnotation]; ok {
				kept.Annotations = map[string]string{KeyAnnotation: key}
			}
			if mark, ok := m.Labels[QuarantineLabel]; ok {
				kept.Labels = map[string]string{QuarantineLabel: mark}
			}
			return kept, nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	w := &Watcher{informer: inf, changed: make(chan struct{}, 1)}
	notify := func() {
		select {
		case w.changed <- struct{}{}:
		default: // a notification is pending already: the reader sees this change too
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { notify() },
		UpdateFunc: func(old, cur any) {
			if keyOf(old) != keyOf(cur) || quarantined(old) != quarantined(cur) {
				notify()
			}
		},
		DeleteFunc: func(any) { notify() },
	}); err != nil {
		return nil, err
	}
	if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		w.failures.Add(1)
		log.Warn("watching the cluster's WireGuard peers failed; the watch restarts", "error", err)
	}); err != nil {
		return nil, err
	}
	return w, nil
}

// keyOf is the recorded key annotation of a Node object from the informer ("" if none).
func keyOf(obj any) string {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return ""
	}
	return m.Annotations[KeyAnnotation]
}

// quarantined tells whether a Node object from the informer carries [QuarantineLabel].
func quarantined(obj any) bool {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return false
	}
	_, q := m.Labels[QuarantineLabel]
	return q
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// Synced reports whether the first complete list has arrived.
func (w *Watcher) Synced() bool { return w.informer.HasSynced() }

// Failures is how often the list or the watch failed and was restarted.
func (w *Watcher) Failures() int64 { return w.failures.Load() }

// Changed receives a value after the record may have changed (several changes may be coalesced into one).
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Peers is the record as last received, like [List].
func (w *Watcher) Peers() (peers []Peer, malformed []string) {
	for _, obj := range w.informer.GetStore().List() {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			continue
		}
		peers, malformed = collect(peers, malformed, m.Name, m.Labels, m.Annotations)
	}
	sortRecord(peers, malformed)
	return peers, malformed
}

// WaitSynced waits until the first complete list has arrived or ctx ends.
func (w *Watcher) WaitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced)
}
