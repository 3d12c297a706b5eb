package bootstrapper

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/provider"
)

// hintingProvider answers the peer policy raw for a node of variant; a node asks it nothing else here.
type hintingProvider struct {
	provider.Node
	raw     []byte
	variant attestation.Variant
}

func (p hintingProvider) PeerPolicy(context.Context) ([]byte, error) { return p.raw, nil }
func (p hintingProvider) Variant() attestation.Variant               { return p.variant }

// The host writes the peer policy: a node takes a valid one that fits its measured boot, and treats anything
// else as none (it trusts peers of its own image only).
func TestReadPeerHint(t *testing.T) {
	image := func(b byte) measurements.M {
		return measurements.M{
			0:                          {Expected: measurements.Digest(bytes.Repeat([]byte{0x0f}, 32))},
			measurements.PCRNodeImage:  {Expected: measurements.Digest(bytes.Repeat([]byte{b}, 32))},
			measurements.PCRBootParams: {Expected: measurements.Digest(bytes.Repeat([]byte{0x88}, 32))},
		}
	}
	h, err := policyupdate.NewPeerHint(image(1), image(2))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	got, err := readPeerHint(context.Background(), hintingProvider{raw: h.Marshal(), variant: attestation.MiniVTPM}, log)
	if err != nil || got == nil || !bytes.Equal(got.Marshal(), h.Marshal()) {
		t.Fatalf("a valid peer policy: %v, %v", got, err)
	}
	for name, p := range map[string]hintingProvider{
		"none":                  {variant: attestation.MiniVTPM},
		"not JSON":              {raw: []byte("trust me"), variant: attestation.MiniVTPM},
		"no sets":               {raw: []byte(`{"version":1,"sets":[]}`), variant: attestation.MiniVTPM},
		"another measured boot": {raw: h.Marshal(), variant: attestation.QEMUVTPM},
	} {
		if got, err := readPeerHint(context.Background(), p, log); err != nil || got != nil {
			t.Errorf("%s: %v, %v; want none", name, got, err)
		}
	}
}
