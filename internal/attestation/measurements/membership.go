package measurements

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"

	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
)

// Membership of a cluster, in PCR 15 (PCRClusterID): a node's PCR 15 is zero from its boot until it is
// initialised or joins a cluster; then it extends the cluster's ID into it, once. A fresh node (PCR 15 zero) is
// the only one that may be initialised or admitted; a member proves which cluster it belongs to.

// ClusterIDEventPrefix starts the data of the cluster ID event.
const ClusterIDEventPrefix = "constellation cluster id "

// PeerPolicyEventPrefix starts the data of the peer policy event, an EV_EVENT_TAG in [PCRPeerPolicy] whose
// digest is the SHA-256 of its data (package policyupdate, PeerHint.Event).
const PeerPolicyEventPrefix = "constellation peer policy "

// ClusterIDEvent is the measurement a node makes after init or join: an EV_EVENT_TAG with the cluster ID into
// PCR 15, digest the SHA-256 of its data. From then on the node cannot pose as a fresh one, and a verifier
// learns which cluster the node belongs to.
func ClusterIDEvent(clusterID []byte) eventlog.Event {
	data := []byte(ClusterIDEventPrefix + hex.EncodeToString(clusterID))
	return eventlog.Event{PCR: PCRClusterID, Type: eventlog.EventTag, Data: data, Digest: sha256.Sum256(data)}
}

// ExpectedClusterIDPCR is the PCR 15 value of a node of the cluster with this ID.
func ExpectedClusterIDPCR(clusterID []byte) Digest {
	b := eventlog.NewBuilder()
	e := ClusterIDEvent(clusterID)
	b.Append(e.PCR, e.Type, e.Data)
	return Digest(eventlog.Replay(b.Events())[e.PCR])
}

// MemberPolicy returns a copy of policy that also requires PCR 15 to hold clusterID: the policy of a node that
// belongs to that cluster.
func MemberPolicy(policy M, clusterID []byte) M {
	m := maps.Clone(policy)
	if m == nil {
		m = M{}
	}
	m[PCRClusterID] = Measurement{Expected: ExpectedClusterIDPCR(clusterID)}
	return m
}

// FreshPolicy returns a copy of policy that also requires PCR 15 to be zero: the policy of a node that belongs
// to no cluster since its boot, so an initialised node can be neither initialised nor joined again.
func FreshPolicy(policy M) M {
	m := maps.Clone(policy)
	if m == nil {
		m = M{}
	}
	m[PCRClusterID] = Measurement{}
	return m
}

// FromPCRs is the policy that enforces the values pcr reads for the PCRs idx: for example a node's own PCRs,
// as the policy it trusts peers with that booted as it did. A value that is not a SHA-256 digest is an error.
func FromPCRs(pcr func(idx uint32) []byte, idx ...uint32) (M, error) {
	m := M{}
	for _, i := range idx {
		v := pcr(i)
		if len(v) != DigestSize {
			return nil, fmt.Errorf("PCR %d has %d bytes, want a SHA-256 value of %d", i, len(v), DigestSize)
		}
		m[i] = Measurement{Expected: Digest(v)}
	}
	return m, nil
}
