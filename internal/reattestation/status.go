package reattestation

import (
	"context"
	"fmt"
	"net/http"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/meshpeers"
)

// Records lists the controller's records by node name, with the caller's credentials (`constellation status`
// uses the administrator's).
func Records(ctx context.Context, api *kubeapi.Client) (map[string]*coordinationv1.Lease, error) {
	var list coordinationv1.LeaseList
	if err := api.Do(ctx, http.MethodGet, "/apis/coordination.k8s.io/v1/namespaces/"+RecordNamespace+"/leases", "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing the continuous attestation's records (Leases in %s): %w", RecordNamespace, err)
	}
	out := make(map[string]*coordinationv1.Lease, len(list.Items))
	for i := range list.Items {
		out[list.Items[i].Name] = &list.Items[i]
	}
	return out, nil
}

// Describe is the continuous attestation of the node (name, with its Node object's UID and labels) in a few
// words, as `constellation status` shows it: "QUARANTINED: reason" by the quarantine label (which no kubelet may
// set or remove), or the state of its record (lease; nil if none) with the time since its last verification
// and an alert. Without a record of this Node object, or with a Trusted record whose verification is older
// than it holds, the node is "pending", never trusted: nothing the node itself can write counts.
func Describe(name string, uid types.UID, labels map[string]string, lease *coordinationv1.Lease, now time.Time) string {
	if reason, ok := labels[meshpeers.QuarantineLabel]; ok {
		return "QUARANTINED: " + reason
	}
	r, ok := RecordOf(lease, name, uid)
	if !ok {
		return string(Pending) + " (no record)"
	}
	ago := func() string { return now.Sub(r.LastVerified).Round(time.Second).String() }
	var s string
	switch {
	case r.State == string(Trusted) && r.Trusted(now):
		s = "trusted (verified " + ago() + " ago)"
	case r.State == string(Trusted) && r.LastVerified.IsZero():
		s = string(Pending) + " (record without a verification)"
	case r.State == string(Trusted):
		s = string(Pending) + " (record outdated: verified " + ago() + " ago)"
	case r.Reason != "":
		s = r.State + " " + r.Reason
	default:
		s = r.State
	}
	if r.Alert != "" {
		s += "; " + r.Alert
	}
	return s
}
