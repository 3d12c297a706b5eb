package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/constellation-dev/constellation/internal/attestation/agent"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/meshpeers"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/reattestation"
)

// checkContinuousAttestation changes the measured state of a running worker (a component measured into PCR 4
// after it joined): the cluster's continuous attestation finds it within two intervals and quarantines it
// (tainted NoExecute and cordoned, its pods run on the other worker, no other node has it as a peer), while
// the healthy worker stays trusted throughout. Rebooted, the worker rejoins with a fresh attestation and is
// released.
func checkContinuousAttestation(t *testing.T, c cli, k func(...string) (string, error), state mini.State, eventually func(string, func() (string, bool))) {
	t.Helper()
	type nodeMeta struct {
		Metadata struct {
			Name   string
			UID    types.UID
			Labels map[string]string
		}
		Spec struct {
			Unschedulable bool
			Taints        []struct{ Key, Effect string }
		}
	}
	nodes := func() map[string]nodeMeta {
		out, err := k("get", "nodes", "-o", "json")
		if err != nil {
			return nil
		}
		var list struct{ Items []nodeMeta }
		if json.Unmarshal([]byte(out), &list) != nil {
			return nil
		}
		m := map[string]nodeMeta{}
		for _, n := range list.Items {
			m[n.Metadata.Name] = n
		}
		return m
	}
	// The controller's record of a node (a Lease in its own namespace, which only the join service writes).
	stateOf := func(n nodeMeta) string {
		out, err := k("-n", reattestation.RecordNamespace, "get", "lease", n.Metadata.Name, "-o", "json")
		if err != nil {
			return ""
		}
		var lease coordinationv1.Lease
		if json.Unmarshal([]byte(out), &lease) != nil {
			return ""
		}
		r, ok := reattestation.RecordOf(&lease, n.Metadata.Name, n.Metadata.UID)
		if !ok {
			return ""
		}
		if r.State == "trusted" && !r.Trusted(time.Now()) {
			return "trusted but outdated"
		}
		return r.State
	}
	eventually("every node continuously attested: trusted", func() (string, bool) {
		ns := nodes()
		var s []string
		for name, n := range ns {
			s = append(s, name+"="+stateOf(n))
		}
		return strings.Join(s, " "), len(ns) == 3 && stateOf(ns["control-plane-0"]) == "trusted" && stateOf(ns["worker-0"]) == "trusted" && stateOf(ns["worker-1"]) == "trusted"
	})

	// worker-1 reaches a pod on worker-0 through the tunnel before.
	bad := strconv.Itoa(node(t, state, "worker-1").PID)
	fromBad := func(url string, extra ...string) (string, error) {
		out, err := exec.Command("nsenter", append(append([]string{"-t", bad, "-n", "curl", "-sS", "-m", "3"}, extra...), url)...).CombinedOutput()
		return string(out), err
	}
	cpAPI := "https://" + node(t, state, "control-plane-0").IP + ":6443/healthz"
	eventually("worker-1 reaching the API server through the tunnel, and through its own endpoint", func() (string, bool) {
		out, err := fromBad(cpAPI, "-k")
		local, lerr := fromBad(nodeAPIEndpoint, "-k")
		return out + local, err == nil && lerr == nil && local == "ok"
	})

	// A component measured into worker-1's PCR 4 at runtime, through the node's attestation agent.
	sock := fmt.Sprintf("/proc/%s/root%s", bad, agent.SocketPath)
	body := fmt.Sprintf(`{"pcr": %d, "event": "a component loaded after the node joined"}`, measurements.PCRNodeImage)
	resp, err := agent.SocketClient(sock, 10*time.Second).Post("http://agent/v1/measure", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("measuring into worker-1's PCR 4: %s %s", resp.Status, msg)
	}
	changed := time.Now()

	var took time.Duration
	eventually("worker-1 quarantined: label, NoExecute taint, cordon", func() (string, bool) {
		ns := nodes()
		n := ns["worker-1"]
		if stateOf(ns["worker-0"]) != "trusted" || ns["worker-0"].Spec.Unschedulable {
			t.Fatalf("the healthy worker is no longer trusted: %+v", ns["worker-0"])
		}
		tainted := false
		for _, taint := range n.Spec.Taints {
			tainted = tainted || (taint.Key == reattestation.QuarantineTaint && taint.Effect == "NoExecute")
		}
		ok := n.Metadata.Labels[meshpeers.QuarantineLabel] == reattestation.ReasonMeasurements && tainted && n.Spec.Unschedulable
		if ok {
			took = time.Since(changed)
		}
		return fmt.Sprintf("%+v", n), ok
	})
	t.Logf("worker-1 quarantined %v after its PCR changed (interval %v)", took.Round(time.Second), reattestation.DefaultInterval)
	if took > 2*reattestation.DefaultInterval+5*time.Second {
		t.Errorf("quarantined %v after the change, want within two intervals (%v) and the polling", took, 2*reattestation.DefaultInterval)
	}
	// Evicted by the NoExecute taint, its pod is replaced on worker-0; the evicted one stays Terminating, as
	// worker-1's kubelet, cut off from the API server, cannot confirm its end.
	webPods := func() (string, error) {
		return k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=STATUS:.status.phase,NODE:.spec.nodeName,DELETING:.metadata.deletionTimestamp")
	}
	eventually("worker-1's pods evicted and running on worker-0", func() (string, bool) {
		out, err := webPods()
		onWorker0, left := 0, 0
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) == 3 && f[0] == "Running" && f[1] == "worker-0" && f[2] == "<none>":
				onWorker0++
			case len(f) == 3 && f[1] == "worker-1" && f[2] == "<none>":
				left++
			}
		}
		return out, err == nil && onWorker0 == 3 && left == 0
	})
	eventually("worker-1 cut off: no other node has it as a peer", func() (string, bool) {
		out, err := fromBad(cpAPI, "-k")
		return out, err != nil
	})
	// Its kubelet's endpoint, the node's own, reaches the API only through the mesh: not any more either.
	if out, err := fromBad(nodeAPIEndpoint, "-k"); err == nil {
		t.Fatalf("the quarantined worker still reaches the API through its own endpoint: %s", out)
	}
	if out, _ := k("-n", "kube-system", "logs", "daemonset/join-service"); !strings.Contains(out, `"msg":"node quarantined`) || !strings.Contains(out, `"node":"worker-1"`) {
		t.Fatalf("the join service's log does not record the quarantine:\n%s", out)
	}
	if out, code := c.run("status"); code != 1 || !strings.Contains(out, "QUARANTINED: measurements") {
		t.Fatalf("status with worker-1 quarantined: exit %d\n%s", code, out)
	}

	// Rebooted, its TPM reset, it rejoins with fresh evidence and is released.
	if out, code := c.run("mini", "reboot", "worker-1"); code != 0 {
		t.Fatalf("mini reboot worker-1: exit %d\n%s", code, out)
	}
	eventually("worker-1 released after its attested rejoin, and trusted again", func() (string, bool) {
		n := nodes()["worker-1"]
		_, q := n.Metadata.Labels[meshpeers.QuarantineLabel]
		return fmt.Sprintf("%+v", n), !q && !n.Spec.Unschedulable && stateOf(n) == "trusted"
	})
	// Its kubelet, back in the cluster, ends the evicted pod.
	eventually("the evicted pod gone", func() (string, bool) {
		out, err := webPods()
		return out, err == nil && strings.Count(out, "Running") == 3 && !strings.Contains(out, "worker-1")
	})
}
