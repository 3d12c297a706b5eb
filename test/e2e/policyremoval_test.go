package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/reattestation"
)

// attestedNode is a Node object as the test reads it, with the continuous attestation's record of it.
type attestedNode struct {
	Metadata struct {
		Name   string
		UID    types.UID
		Labels map[string]string
	}
	Spec struct {
		Unschedulable bool
		Taints        []struct{ Key, Effect string }
	}
	record    reattestation.Record
	hasRecord bool
}

// quarantined tells whether the node carries every mark of a quarantine: the label, the NoExecute taint, the
// cordon.
func (n attestedNode) quarantined() bool {
	tainted := false
	for _, taint := range n.Spec.Taints {
		tainted = tainted || (taint.Key == reattestation.QuarantineTaint && taint.Effect == "NoExecute")
	}
	return n.Metadata.Labels[meshpeers.QuarantineLabel] != "" && tainted && n.Spec.Unschedulable
}

// marked tells whether the node carries any mark of a quarantine.
func (n attestedNode) marked() bool {
	for _, taint := range n.Spec.Taints {
		if taint.Key == reattestation.QuarantineTaint {
			return true
		}
	}
	_, labelled := n.Metadata.Labels[meshpeers.QuarantineLabel]
	return labelled || n.Spec.Unschedulable
}

// failedOn tells whether the node's record is Failed for reason.
func failedOn(n attestedNode, reason string) bool {
	return n.hasRecord && n.record.State == string(reattestation.Failed) && strings.HasPrefix(n.record.Reason, reason+":")
}

func (n attestedNode) String() string {
	return fmt.Sprintf("%s: record %+v, labels %v, taints %v, unschedulable %v", n.Metadata.Name, n.record, n.Metadata.Labels, n.Spec.Taints, n.Spec.Unschedulable)
}

// attestedNodes reads the Node objects and their records (nil if the API does not answer).
func attestedNodes(k func(...string) (string, error)) map[string]attestedNode {
	out, err := k("get", "nodes", "-o", "json")
	if err != nil {
		return nil
	}
	var nodes struct{ Items []attestedNode }
	if json.Unmarshal([]byte(out), &nodes) != nil {
		return nil
	}
	out, err = k("-n", reattestation.RecordNamespace, "get", "leases", "-o", "json")
	if err != nil {
		return nil
	}
	var leases struct{ Items []coordinationv1.Lease }
	if json.Unmarshal([]byte(out), &leases) != nil {
		return nil
	}
	m := map[string]attestedNode{}
	for _, n := range nodes.Items {
		for i := range leases.Items {
			if r, ok := reattestation.RecordOf(&leases.Items[i], n.Metadata.Name, n.Metadata.UID); ok {
				n.record, n.hasRecord = r, true
			}
		}
		m[n.Metadata.Name] = n
	}
	return m
}

// TestMiniImageRemoved: the operator's CLI removes the image every node runs from the measurement policy
// (`upgrade start` to an image no node runs, then `upgrade finish`). The key service then takes none of the
// nodes for a member, the control-plane node's join service included, which still learns the new policy on the
// key service's policy port, also after the key service restarted (fresh connections): the continuous
// attestation fails every node. Each worker is quarantined (tainted NoExecute, cordoned), one per interval at
// most; the control-plane node is failed with an alert and not quarantined (etcd's quorum). A worker of the
// removed image that reboots is refused at join. `upgrade abort` has nothing to roll back after finish; the
// cluster is torn down. (The name is short: the nodes' TPM sockets live under the test's directory.)
func TestMiniImageRemoved(t *testing.T) {
	cl := startCluster(t, 1, 2)
	c, k := cl.c, cl.k
	cl.eventually("every node continuously attested: trusted", func() (string, bool) {
		ns := attestedNodes(k)
		var s []string
		trusted := 0
		for _, n := range ns {
			s = append(s, n.String())
			if n.hasRecord && n.record.Trusted(time.Now()) {
				trusted++
			}
		}
		return strings.Join(s, "\n"), len(ns) == 3 && trusted == 3
	})

	// The measurements of an image no node runs: the image's digest in PCR 4, booted as the real one.
	raw, err := os.ReadFile("../../_out/node-image/node-image.json")
	if err != nil {
		t.Fatal(err)
	}
	var manifest nodeimage.Manifest
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	otherDigest := sha256.Sum256([]byte("a node image no node of this cluster runs"))
	other, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: otherDigest, Cmdline: manifest.Cmdline})
	if err != nil {
		t.Fatal(err)
	}
	otherJSON, err := other.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other-image-measurements.json")
	if err := os.WriteFile(otherFile, otherJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := c.run("upgrade", "start", "--measurements", otherFile, "--image-digest", fmt.Sprintf("sha256:%x", otherDigest)); code != 0 {
		t.Fatalf("upgrade start: exit %d\n%s", code, out)
	}
	if out, code := c.run("upgrade", "finish"); code != 0 || !strings.Contains(out, "epoch 2") {
		t.Fatalf("upgrade finish: exit %d\n%s", code, out)
	}
	finished := time.Now()
	// The key service's pod restarts: from now on the join service reaches it on new connections only, which
	// it refuses to a node of the removed image on its mutual aTLS port.
	if out, err := k("-n", "kube-system", "delete", "pod", "-l", "app.kubernetes.io/name=key-service", "--wait=true"); err != nil {
		t.Fatalf("restarting the key service's pod: %v\n%s", err, out)
	}

	// Every node fails; the workers are quarantined one after the other, the control-plane node is not.
	quarantinedAt := map[string]time.Time{}
	deadline := time.Now().Add(3 * time.Minute)
	var last []string
	for {
		ns := attestedNodes(k)
		last = last[:0]
		for _, n := range ns {
			last = append(last, n.String())
		}
		if cp, ok := ns["control-plane-0"]; ok && cp.marked() {
			t.Fatalf("the control-plane node was quarantined, which leaves etcd without a trusted member:\n%s", strings.Join(last, "\n"))
		}
		for _, w := range []string{"worker-0", "worker-1"} {
			if n, ok := ns[w]; ok && n.quarantined() && quarantinedAt[w].IsZero() {
				quarantinedAt[w] = time.Now()
				if n.Metadata.Labels[meshpeers.QuarantineLabel] != reattestation.ReasonMeasurements {
					t.Errorf("%s quarantined for another reason than its measurements: %s", w, n)
				}
			}
		}
		cp := ns["control-plane-0"]
		cpFailed := failedOn(cp, reattestation.ReasonMeasurements) && strings.Contains(cp.record.Alert, "etcd quorum")
		workersFailed := true
		for _, w := range []string{"worker-0", "worker-1"} {
			n := ns[w]
			workersFailed = workersFailed && failedOn(n, reattestation.ReasonMeasurements)
		}
		if cpFailed && workersFailed && len(quarantinedAt) == 2 {
			break
		}
		if time.Now().After(deadline) {
			logs, _ := k("-n", "kube-system", "logs", "daemonset/join-service")
			t.Fatalf("not every node failed, the workers quarantined, within 3 minutes after upgrade finish:\n%s\njoin service:\n%s", strings.Join(last, "\n"), logs)
		}
		time.Sleep(time.Second)
	}
	first, second := quarantinedAt["worker-0"], quarantinedAt["worker-1"]
	if second.Before(first) {
		first, second = second, first
	}
	t.Logf("after upgrade finish: first worker quarantined after %v, second after %v (interval %v)", first.Sub(finished).Round(time.Second), second.Sub(finished).Round(time.Second), reattestation.DefaultInterval)
	// At most one quarantine per interval: the second comes at least an interval after the first (less the
	// polling's granularity).
	if gap := second.Sub(first); gap < reattestation.DefaultInterval/2 {
		t.Errorf("the workers were quarantined %v apart, want at most one quarantine per interval (%v)", gap, reattestation.DefaultInterval)
	}
	logs, _ := k("-n", "kube-system", "logs", "daemonset/join-service")
	if !strings.Contains(logs, `"msg":"measurement policy in force","epoch":2,"sets":1`) {
		t.Errorf("the join service did not log the narrowed policy in force:\n%s", logs)
	}
	if !strings.Contains(logs, "ALERT: control-plane node failed its re-attestation") {
		t.Errorf("the join service did not alert about the control-plane node:\n%s", logs)
	}

	// A worker of the removed image that reboots is refused at join, on its image's PCR.
	if out, code := c.run("mini", "reboot", "worker-0"); code != 0 {
		t.Fatalf("mini reboot worker-0: exit %d\n%s", code, out)
	}
	refused := regexp.MustCompile(`"msg":"join refused: the node's measurements differ from the cluster's","pcrs":\[4\],"node":"worker-0"`)
	cl.eventually("the rebooted worker of the removed image refused at join", func() (string, bool) {
		logs, err := k("-n", "kube-system", "logs", "daemonset/join-service")
		return logs, err == nil && refused.MatchString(logs)
	})
	if n := attestedNodes(k)["worker-0"]; !n.quarantined() {
		t.Errorf("the refused worker is no longer quarantined: %s", n)
	}

	// After finish there is no upgrade to roll back: the cluster runs no image the policy accepts until the
	// operator puts one in force again. The test tears the cluster down.
	if out, code := c.run("upgrade", "abort"); code == 0 || !strings.Contains(out, "no upgrade is open") {
		t.Fatalf("upgrade abort after finish: exit %d\n%s", code, out)
	}
}
