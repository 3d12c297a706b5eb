package qemu

import (
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/provider/qemu/qemutest"
)

// requireNetworkTools skips a test that creates the node network where it cannot, and holds the machine's
// QEMU provider lock while it runs.
func requireNetworkTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the node network needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip not installed; run scripts/setup.sh")
	}
	qemutest.LockProvider(t)
	if NetworkOwned() {
		t.Fatalf("a QEMU cluster runs on this machine (its provider holds namespace %s) outside the tests; stop it first", Netns)
	}
	t.Cleanup(func() {
		if err := networkDown(); err != nil {
			t.Error(err)
		}
	})
}

// A provider killed without cleaning up leaves its node network behind. The next provider must not be stuck
// behind that leftover (nor ask the operator to remove it by hand), and must never take the network of a
// provider that still runs.
func TestClaimNetworkRemovesADeadProvidersLeftover(t *testing.T) {
	requireNetworkTools(t)
	// The leftover: a network nobody owns, as a provider killed with SIGKILL leaves it.
	if err := networkUp(); err != nil {
		t.Fatal(err)
	}
	if !NetworkInUse() || NetworkOwned() {
		t.Fatalf("leftover network: in use %v, owned %v; want in use and not owned", NetworkInUse(), NetworkOwned())
	}
	release, err := claimNetwork(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("claiming the network of a dead provider: %v", err)
	}
	if NetworkInUse() {
		t.Error("the leftover network is still there after the claim")
	}
	if !NetworkOwned() {
		t.Error("the network is not owned after the claim")
	}

	// A live owner's network: a second provider is refused and removes nothing; Cleanup of a dead cluster's
	// state leaves it alone too.
	if err := networkUp(); err != nil {
		t.Fatal(err)
	}
	if _, err := claimNetwork(slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "another QEMU cluster runs") {
		t.Errorf("second claim while the owner lives: %v, want a refusal", err)
	}
	if err := Cleanup(t.TempDir(), State{}); err != nil {
		t.Fatal(err)
	}
	if !NetworkInUse() {
		t.Error("the live owner's network was removed")
	}

	// The owner ends: its network becomes a leftover that the next claim takes over.
	release()
	if NetworkOwned() {
		t.Error("the network is still owned after release")
	}
	release2, err := claimNetwork(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("claiming after the owner ended: %v", err)
	}
	release2()
}
