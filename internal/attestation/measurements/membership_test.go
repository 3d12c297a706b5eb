package measurements

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
)

func TestMemberAndFreshPolicy(t *testing.T) {
	policy := M{PCRNodeImage: {Expected: Digest{1}}, PCRBootParams: {Expected: Digest{2}}}
	id := bytes.Repeat([]byte{7}, 32)
	member := MemberPolicy(policy, id)
	fresh := FreshPolicy(policy)
	if len(policy) != 2 {
		t.Fatal("the input policy was changed")
	}
	if member[PCRNodeImage] != policy[PCRNodeImage] || member[PCRBootParams] != policy[PCRBootParams] || member[PCRClusterID].Expected != ExpectedClusterIDPCR(id) || len(member) != 3 {
		t.Fatalf("MemberPolicy = %v", member)
	}
	if fresh[PCRNodeImage] != policy[PCRNodeImage] || fresh[PCRBootParams] != policy[PCRBootParams] || fresh[PCRClusterID].Expected != (Digest{}) || len(fresh) != 3 {
		t.Fatalf("FreshPolicy = %v", fresh)
	}
}

// The cluster ID event extends PCR 15 from zero to SHA-256(zeros || SHA-256(data)), as a TPM does; a node's
// quote over that value is what MemberPolicy expects.
func TestExpectedClusterIDPCR(t *testing.T) {
	id := bytes.Repeat([]byte{0xc1}, 32)
	ev := ClusterIDEvent(id)
	if ev.PCR != PCRClusterID || ev.Type != eventlog.EventTag || ev.Digest != sha256.Sum256(ev.Data) {
		t.Fatalf("ClusterIDEvent = %+v", ev)
	}
	digest := sha256.Sum256(ev.Data)
	want := sha256.Sum256(append(make([]byte, 32), digest[:]...))
	if got := ExpectedClusterIDPCR(id); got != Digest(want) {
		t.Fatalf("ExpectedClusterIDPCR = %s, want %x", got, want)
	}
	if ExpectedClusterIDPCR(bytes.Repeat([]byte{0xc2}, 32)) == Digest(want) {
		t.Fatal("two clusters have the same PCR 15")
	}
}
