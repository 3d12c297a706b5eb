package wgmesh

import (
	"net/netip"
	"strings"
	"testing"
)

// A peer without a preshared key is refused before the device is touched (this Mesh has none: configuring
// it would panic).
func TestSetPeersRefusesPeerWithoutPresharedKey(t *testing.T) {
	_, pub, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	m := &Mesh{cfg: Config{Interface: "wg0"}}
	err = m.SetPeers([]Peer{{PublicKey: pub, Endpoint: netip.MustParseAddrPort("10.0.0.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}})
	if err == nil || !strings.Contains(err.Error(), "preshared key") {
		t.Fatalf("SetPeers with a peer without a preshared key = %v, want a refusal", err)
	}
	if len(m.Peers()) != 0 {
		t.Fatal("a refused peer was recorded")
	}
}

func TestPairKey(t *testing.T) {
	root := Key{1, 2, 3}
	_, a, _ := GenerateKey()
	_, b, _ := GenerateKey()
	_, c, _ := GenerateKey()
	ab, err := PairKey(root, a, b)
	if err != nil || ab == (Key{}) {
		t.Fatalf("PairKey = %v, %v", ab, err)
	}
	if ba, _ := PairKey(root, b, a); ba != ab {
		t.Fatal("the two ends of a pair derive different keys")
	}
	if ac, _ := PairKey(root, a, c); ac == ab {
		t.Fatal("two pairs share a preshared key")
	}
	if other, _ := PairKey(Key{9}, a, b); other == ab {
		t.Fatal("another root gives the same preshared key")
	}
	for name, args := range map[string][3]Key{"no root": {{}, a, b}, "no key": {root, a, {}}, "same key": {root, a, a}} {
		if _, err := PairKey(args[0], args[1], args[2]); err == nil {
			t.Errorf("%s: PairKey accepted", name)
		}
	}
	// Known answer: the derivation is a compatibility promise between nodes of different versions.
	if got, _ := PairKey(Key{1}, Key{2}, Key{3}); got.String() != pairKeyKAT {
		t.Errorf("PairKey known answer = %s, want %s", got, pairKeyKAT)
	}
}

// pairKeyKAT is HKDF-SHA256(root, no salt, label || 0x02 0..0 || 0x03 0..0) computed independently (Python
// hmac).
const pairKeyKAT = "M08UjPUJbap/O2QSI/dlN1jMhrP/VjS59/xinsqGsdk="
