package providers

import (
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

func TestNode(t *testing.T) {
	n, err := Node("mini", "http://10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != "mini" || n.Endpoint() != "http://10.217.0.1:8080" || n.Variant().Name != attestation.MiniVTPM.Name {
		t.Errorf("mini provider: %s at %s issuing %s", n.Name(), n.Endpoint(), n.Variant())
	}
	if pods, services := n.Networks(); !pods.IsValid() || !services.IsValid() || pods.Overlaps(services) {
		t.Errorf("networks: pods %s, services %s", pods, services)
	}
	for name, tc := range map[string]struct{ provider, endpoint, want string }{
		"unknown":     {"aws", "http://x", `unknown provider "aws"`},
		"empty":       {"", "http://x", `unknown provider ""`},
		"no endpoint": {"mini", "", "no endpoint"},
	} {
		if _, err := Node(tc.provider, tc.endpoint); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

func TestFleet(t *testing.T) {
	cred := make([]byte, 32)
	if f, err := Fleet("mini", "http://10.217.0.1:8080", cred); err != nil || f == nil {
		t.Fatalf("mini: %v", err)
	}
	for name, tc := range map[string]struct {
		provider, endpoint string
		cred               []byte
		want               string
	}{
		"unknown":          {"aws", "http://x", cred, `unknown provider "aws"`},
		"qemu":             {"qemu", "http://x", cred, "cannot create or delete nodes"},
		"no endpoint":      {"mini", "", cred, "no endpoint"},
		"short credential": {"mini", "http://x", cred[:16], "16 bytes"},
	} {
		if _, err := Fleet(tc.provider, tc.endpoint, tc.cred); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}
