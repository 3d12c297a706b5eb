package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/config"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/provider/mini"
	"github.com/constellation-dev/constellation/internal/provider/providers"
)

// TestMiniFleet has the provider create and delete a node through its authenticated fleet API, as the
// cluster's upgrade controller will: apply keeps the controller credential in the cluster's Secret (the
// provider has only its hash); a request without it, from the host or from a node of the cluster, changes
// nothing; the operator registers a node image (the provider computes its digest); with the credential a new
// worker is created from it by digest, joins through the join service and becomes Ready; deleted, it is gone
// from the provider (status, its directory), and the last control-plane node cannot be deleted.
func TestMiniFleet(t *testing.T) {
	cl := startCluster(t, 1, 1)
	c, k := cl.c, cl.k
	ctx := context.Background()
	dir := filepath.Join(c.ws, "constellation-mini")
	state, _, err := mini.ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}

	// The credential: in the workspace (0600) and in the cluster's Secret, never in the provider's log or on
	// its command line.
	raw, err := os.ReadFile(filepath.Join(c.ws, "constellation-controller-credential"))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(cred) != provider.FleetCredentialSize {
		t.Fatalf("the workspace's controller credential: %v", err)
	}
	out, err := k("-n", provider.FleetSecretNamespace, "get", "secret", provider.FleetSecretName, "-o", "jsonpath={.data.credential} {.data.endpoint} {.data.provider}")
	if err != nil {
		t.Fatalf("the Secret: %v: %s", err, out)
	}
	f := strings.Fields(out)
	inCluster, _ := base64.StdEncoding.DecodeString(f[0])
	endpoint, _ := base64.StdEncoding.DecodeString(f[1])
	providerName, _ := base64.StdEncoding.DecodeString(f[2])
	if hex.EncodeToString(inCluster) != hex.EncodeToString(cred) || string(endpoint) != state.MetadataURL {
		t.Fatalf("the Secret holds another credential or endpoint (%s, want %s)", endpoint, state.MetadataURL)
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(state.DaemonPID) + "/cmdline")
	if len(cmdline) == 0 || strings.Contains(string(cmdline), hex.EncodeToString(cred)) {
		t.Fatalf("the provider's command line (%d bytes) holds the credential", len(cmdline))
	}

	// The attack: create a node without the credential, from the host and from a node of the cluster (which
	// the metadata service knows by its address).
	conf, err := config.Load(filepath.Join(c.ws, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	create := `{"role":"worker","imageDigest":"` + conf.Provider.Mini.ImageDigest + `"}`
	worker := node(t, state, "worker-0")
	for name, prefix := range map[string][]string{
		"the host":            nil,
		"worker-0":            {"nsenter", "-t", strconv.Itoa(worker.PID), "-n"},
		"control-plane-0":     {"nsenter", "-t", strconv.Itoa(node(t, state, "control-plane-0").PID), "-n"},
		"with its hash, host": nil,
	} {
		args := append(append([]string{}, prefix...), "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", create)
		if name == "with its hash, host" {
			sum := sha256.Sum256(cred)
			args = append(args, "-H", "Authorization: Bearer "+hex.EncodeToString(sum[:]))
		}
		args = append(args, state.MetadataURL+"/v1/fleet/nodes")
		got, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil || string(got) != "401" {
			t.Fatalf("create from %s without the credential: %v: %s", name, err, got)
		}
	}
	// The node is known to its metadata service: it reaches it, and still cannot create.
	if got, err := exec.Command("nsenter", "-t", strconv.Itoa(worker.PID), "-n", "curl", "-sS", "-m", "10", state.MetadataURL+"/v1/self").CombinedOutput(); err != nil || !strings.Contains(string(got), `"worker-0"`) {
		t.Fatalf("worker-0 asking its metadata who it is: %v: %s", err, got)
	}
	if now, _, _ := mini.ReadState(dir); len(now.Nodes) != 2 {
		t.Fatalf("refused requests changed the nodes: %+v", now.Nodes)
	}

	// The operator registers the node image; the provider computes its digest.
	image, _ := filepath.Abs("../../_out/node-image/node-image.squashfs")
	out, code := c.run("mini", "register-image", image)
	if code != 0 || strings.TrimSpace(out) != conf.Provider.Mini.ImageDigest {
		t.Fatalf("mini register-image: exit %d: %s (want %s)", code, out, conf.Provider.Mini.ImageDigest)
	}

	// The controller, with the credential from the Secret.
	fleet, err := providers.Fleet(string(providerName), string(endpoint), inCluster)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	name, err := fleet.CreateNode(cctx, provider.RoleWorker, strings.TrimSpace(out))
	cancel()
	if err != nil || name != "worker-1" {
		t.Fatalf("CreateNode = %q, %v", name, err)
	}
	cl.eventually("worker-1 Ready, joined through the join service", func() (string, bool) {
		out, err := k("get", "node", "worker-1", "--no-headers")
		return out, err == nil && strings.Contains(out, " Ready ")
	})
	t.Logf("worker-1 created and Ready: %s", time.Since(start).Round(time.Second))
	// The cluster's services start on the new node too (the verification service runs on every node).
	cl.eventually("status: worker-1 attested and Ready, every service ready", func() (string, bool) {
		out, code := c.run("status")
		return out, code == 0 && strings.Contains(out, "worker-1")
	})

	if err := fleet.DeleteNode(ctx, "control-plane-0"); err == nil || !strings.Contains(err.Error(), "last running control-plane") {
		t.Fatalf("deleting the only control-plane node: %v", err)
	}
	if err := fleet.DeleteNode(ctx, "worker-1"); err != nil {
		t.Fatal(err)
	}
	// The controller removes the Node object; the provider removed the machine.
	if out, err := k("delete", "node", "worker-1"); err != nil {
		t.Fatalf("deleting the Node: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "nodes", "worker-1")); !os.IsNotExist(err) {
		t.Fatalf("worker-1's directory (state disk, TPM) is still there: %v", err)
	}
	if out, code := c.run("status"); code != 0 || strings.Contains(out, "worker-1") || !strings.Contains(out, "worker-0") {
		t.Fatalf("status after deleting worker-1: exit %d\n%s", code, out)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "provider.log")); strings.Contains(string(log), hex.EncodeToString(cred)) || !strings.Contains(string(log), "fleet request refused") {
		t.Fatal("the provider's log holds the credential, or does not record the refusals")
	}
}
