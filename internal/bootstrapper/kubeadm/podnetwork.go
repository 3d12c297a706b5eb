package kubeadm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The pod network of a node is enabled last (EnablePodNetwork): while its CNI configuration is missing, the
// container runtime reports the node's network not ready, the kubelet keeps the node NotReady, and no pod but
// host-network ones (kube-proxy, the control plane) starts on it. So a node takes pods, and counts as Ready for
// whoever waits for that (the scheduler, the upgrade controller before it drains the node it replaces, a load
// balancer), only once Services work on it.

// kubeProxyMetrics is kube-proxy's metrics endpoint on the node (its default metricsBindAddress), and
// kubeProxySyncedMetric the gauge it sets after each complete programming of the node's Services; it has no
// sample before the first, which kube-proxy makes only once it has read every Service and EndpointSlice.
const (
	kubeProxyMetrics      = "http://127.0.0.1:10249/metrics"
	kubeProxySyncedMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
)

// podNetworkPoll is how often EnablePodNetwork looks at kube-proxy; noKubeProxyLimit is how long it waits for
// a kube-proxy pod on the node once the API answers it (a cluster without kube-proxy has none: its nodes
// must not stay NotReady for it).
const (
	podNetworkPoll   = 500 * time.Millisecond
	noKubeProxyLimit = 2 * time.Minute
)

func (d *Driver) cniConfigFile() string {
	dir := CNIConfDir
	if d.cniConfDir != "" {
		dir = d.cniConfDir
	}
	return filepath.Join(dir, "10-pods.conflist")
}

// disablePodNetwork removes the CNI configuration a previous boot left: the node takes no pods before
// EnablePodNetwork.
func (d *Driver) disablePodNetwork() error {
	if err := os.Remove(d.cniConfigFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the CNI configuration of an earlier boot: %w", err)
	}
	return nil
}

// EnablePodNetwork writes the node's CNI configuration, which makes it Ready for pods, once kube-proxy on this
// node has programmed the cluster's Services (its first complete sync): before that, a pod on the node, or a
// client that reaches a Service through the node, would find no Service at all. If kube-proxy cannot run on
// this node (its container waits for an image the node does not have, say: a node of the next Kubernetes
// version before kubeadm moved the addons), or none is bound to it for noKubeProxyLimit, the node does not wait
// for it. It returns early only when ctx ends.
func (d *Driver) EnablePodNetwork(ctx context.Context) error {
	metricsURL := kubeProxyMetrics
	if d.kubeProxyMetrics != "" {
		metricsURL = d.kubeProxyMetrics
	}
	client := &http.Client{Timeout: 2 * time.Second}
	began := time.Now()
	var noneSince time.Time // since when the API says no kube-proxy pod is bound to this node
	for attempt := 1; ; attempt++ {
		synced, err := kubeProxySynced(ctx, client, metricsURL)
		if synced {
			d.logf("kube-proxy has programmed the cluster's Services on this node (after %s)", time.Since(began).Round(time.Millisecond))
			break
		}
		// The API is asked less often than kube-proxy's metrics.
		if attempt%4 == 1 {
			pods, listed := d.kubeProxyPods(ctx)
			if !listed || len(pods.Items) > 0 {
				noneSince = time.Time{}
			} else if noneSince.IsZero() {
				noneSince = time.Now()
			}
			if !noneSince.IsZero() && time.Since(noneSince) > noKubeProxyLimit {
				d.logf("no kube-proxy pod is bound to this node after %s: enabling the pod network without it", noKubeProxyLimit)
				break
			}
			if why := pods.cannotRun(); why != "" {
				d.logf("kube-proxy cannot run on this node (%s): enabling the pod network without it", why)
				break
			}
		}
		if attempt%120 == 0 {
			d.logf("the node takes no pods yet: waiting for kube-proxy to program the cluster's Services on it (%v)", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(podNetworkPoll):
		}
	}
	if err := writeFile(d.cniConfigFile(), CNIConfigFile(d.Options)); err != nil {
		return fmt.Errorf("writing the CNI configuration: %w", err)
	}
	d.logf("pod network enabled: the node becomes Ready for pods")
	return nil
}

// kubeProxySynced reports whether kube-proxy's metrics at url have a sample of its last complete sync.
func kubeProxySynced(ctx context.Context, client *http.Client, url string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("kube-proxy's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("kube-proxy's metrics: %s", resp.Status)
	}
	return syncedIn(io.LimitReader(resp.Body, 16<<20))
}

// syncedIn reports whether the metrics (Prometheus' text format) have a positive sample of
// kubeProxySyncedMetric.
func syncedIn(metrics io.Reader) (bool, error) {
	sc := bufio.NewScanner(metrics)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, kubeProxySyncedMetric)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil && v > 0 {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return false, errors.New("kube-proxy has not programmed the Services yet")
}

// kubeProxyPods are kube-proxy's pods bound to this node, read with the kubelet's credentials; listed is false if
// the API did not answer (the kubelet has no credentials yet, say).
func (d *Driver) kubeProxyPods(ctx context.Context) (pods podList, listed bool) {
	c, err := d.kubeletClient()
	if err != nil {
		return podList{}, false
	}
	q := url.Values{"labelSelector": {"k8s-app=kube-proxy"}, "fieldSelector": {"spec.nodeName=" + d.Options.NodeName}}
	if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/kube-system/pods?"+q.Encode(), "", nil, &pods); err != nil {
		return podList{}, false
	}
	return pods, true
}

// podList is what kubeProxyCannotRun reads of pods.
type podList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Status struct {
			ContainerStatuses []struct {
				State struct {
					Waiting *struct {
						Reason  string `json:"reason"`
						Message string `json:"message"`
					} `json:"waiting"`
				} `json:"state"`
			} `json:"containerStatuses"`
		} `json:"status"`
	} `json:"items"`
}

// cannotRun says why a pod of the list cannot run: a container that waits for another reason than being
// created ("" if none).
func (l podList) cannotRun() string {
	for _, p := range l.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing" {
				return fmt.Sprintf("pod %s: %s %s", p.Metadata.Name, w.Reason, w.Message)
			}
		}
	}
	return ""
}
