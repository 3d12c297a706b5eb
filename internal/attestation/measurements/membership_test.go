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

// A node's own PCRs become a policy only if each is a SHA-256 value: a missing or short one is an error, never
// an expected zero.
func TestFromPCRs(t *testing.T) {
	pcrs := map[uint32][]byte{0: bytes.Repeat([]byte{1}, 32), 4: bytes.Repeat([]byte{4}, 32), 8: bytes.Repeat([]byte{8}, 31)}
	read := func(i uint32) []byte { return pcrs[i] }
	m, err := FromPCRs(read, 0, 4)
	if err != nil || len(m) != 2 || m[4].Expected != Digest(pcrs[4]) || m[4].WarnOnly {
		t.Fatalf("FromPCRs(0, 4) = %v, %v", m, err)
	}
	for _, idx := range []uint32{8, 15} {
		if _, err := FromPCRs(read, 0, idx); err == nil {
			t.Errorf("PCR %d (%d bytes) made a policy", idx, len(pcrs[idx]))
		}
	}
}
