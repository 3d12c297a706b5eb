package policyupdate

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/strictjson"
)

// PeerHint is the peer policy a joining node gets from its provider: the measurement sets of the join service
// and the key services it trusts besides those that booted its own image, during an upgrade the old and the
// new image's. It is the content of an update without cluster ID, epoch and MAC: a joining node has no master
// secret to verify a MAC with, and the host, which writes the hint, is not trusted. So a node measures the hint
// into PCR 14 ([PeerHint.Event]) before it trusts any peer by it, and the cluster's join service admits it only
// if every set the node trusted is one of the sets in force ([CheckPeerHints]): a node that trusted a rogue
// image's measurements is refused, whatever the peer it trusted told it.
type PeerHint struct {
	// Sets are one or two measurement sets; none holds the cluster-ID or the peer-policy PCR.
	Sets []measurements.M
}

// maxPeerHintEvents bounds the peer policy events a node's log may hold: a bootstrapper measures one for each
// join it starts, normally one per boot.
const maxPeerHintEvents = 16

// NewPeerHint returns the peer policy that trusts sets.
func NewPeerHint(sets ...measurements.M) (*PeerHint, error) {
	h := &PeerHint{Sets: sets}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return h, nil
}

// validate checks one or two distinct sets that each pin the node image and its boot parameters, and hold
// neither the cluster-ID PCR nor the peer-policy PCR (both differ between nodes of one image).
func (h *PeerHint) validate() error {
	if len(h.Sets) == 0 || len(h.Sets) > MaxSets {
		return fmt.Errorf("peer policy: %d measurement sets; it trusts one image, or two (the old and the new one) during an upgrade", len(h.Sets))
	}
	for i, set := range h.Sets {
		if err := set.Validate(); err != nil {
			return fmt.Errorf("peer policy: set %d: %w", i+1, err)
		}
		for _, pcr := range []uint32{measurements.PCRClusterID, measurements.PCRPeerPolicy} {
			if _, ok := set[pcr]; ok {
				return fmt.Errorf("peer policy: set %d holds PCR %d, which differs between nodes of one image", i+1, pcr)
			}
		}
	}
	if len(h.Sets) == 2 && bytes.Equal(canonical(h.Sets[0]), canonical(h.Sets[1])) {
		return errors.New("peer policy: the two measurement sets are the same")
	}
	return nil
}

// peerHintWire is the JSON form of a peer policy.
type peerHintWire struct {
	Version int               `json:"version"`
	Sets    []json.RawMessage `json:"sets"`
}

// Marshal returns the canonical form: JSON with the version and the sets, each with its PCRs in ascending
// order; the same sets always give the same bytes.
func (h *PeerHint) Marshal() []byte {
	w := peerHintWire{Version: Version}
	for _, set := range h.Sets {
		w.Sets = append(w.Sets, canonical(set))
	}
	raw, err := json.Marshal(w)
	if err != nil {
		// Canonical sets are valid JSON.
		panic(err)
	}
	return raw
}

// ParsePeerHint reads a peer policy strictly (one JSON object, no unknown or repeated field, at most [MaxSize]
// bytes) and checks its content.
func ParsePeerHint(raw []byte) (*PeerHint, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("peer policy: %d bytes, more than %d", len(raw), MaxSize)
	}
	var w peerHintWire
	if err := strictjson.Decode(raw, &w, MaxSize); err != nil {
		return nil, fmt.Errorf("parsing the peer policy: %w", err)
	}
	if w.Version != Version {
		return nil, fmt.Errorf("peer policy: version %d; this program reads version %d", w.Version, Version)
	}
	if len(w.Sets) > MaxSets {
		return nil, fmt.Errorf("peer policy: %d measurement sets; it trusts one image, or two (the old and the new one) during an upgrade", len(w.Sets))
	}
	h := &PeerHint{}
	for i, rawSet := range w.Sets {
		var set measurements.M
		if err := set.UnmarshalJSON(rawSet); err != nil {
			return nil, fmt.Errorf("peer policy: set %d: %w", i+1, err)
		}
		h.Sets = append(h.Sets, set)
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return h, nil
}

// Event is the measurement a node makes of the peer policy before it trusts any peer by it: an EV_EVENT_TAG in
// PCR 14 (measurements.PCRPeerPolicy) whose data is measurements.PeerPolicyEventPrefix and the canonical form
// ([PeerHint.Marshal]), its digest the SHA-256 of the data.
func (h *PeerHint) Event() eventlog.Event {
	data := append([]byte(measurements.PeerPolicyEventPrefix), h.Marshal()...)
	return eventlog.Event{PCR: measurements.PCRPeerPolicy, Type: eventlog.EventTag, Data: data, Digest: sha256.Sum256(data)}
}

// String describes the peer policy for logs: per set, the node image's measurement.
func (h *PeerHint) String() string {
	parts := make([]string, len(h.Sets))
	for i, set := range h.Sets {
		parts[i] = Describe(set)
	}
	return strings.Join(parts, " and ")
}

// PeerHintsOf returns the peer policies a node measured, from its event log's events and the value of PCR 14
// (measurements.PCRPeerPolicy) in a quote the caller verified. Only what the quoted value proves counts:
// every peer policy event must be an EV_EVENT_TAG whose data is a valid peer policy, and extending the
// SHA-256 of each event's data, in the log's order, must give the quoted value (the events' digests in the log
// are not used); with no such event, the quoted value must be zero. Anything else is an error: the log and the
// quote disagree, and the node's trust is unknown.
func PeerHintsOf(events []eventlog.Event, quoted []byte) ([]*PeerHint, error) {
	if len(quoted) != sha256.Size {
		return nil, fmt.Errorf("the quote holds %d bytes for PCR %d, want a SHA-256 value", len(quoted), measurements.PCRPeerPolicy)
	}
	var hints []*PeerHint
	var pcr [32]byte // the reset value of PCR 14
	for _, e := range events {
		if e.PCR != measurements.PCRPeerPolicy || e.Type == eventlog.NoAction {
			continue
		}
		if len(hints) == maxPeerHintEvents {
			return nil, fmt.Errorf("the event log holds more than %d peer policy events in PCR %d", maxPeerHintEvents, measurements.PCRPeerPolicy)
		}
		raw, ok := bytes.CutPrefix(e.Data, []byte(measurements.PeerPolicyEventPrefix))
		if e.Type != eventlog.EventTag || !ok {
			return nil, fmt.Errorf("event %d in PCR %d is not a peer policy (%s); nothing but the bootstrapper's peer policy is measured there", e.Seq, measurements.PCRPeerPolicy, e.Explain())
		}
		h, err := ParsePeerHint(raw)
		if err != nil {
			return nil, fmt.Errorf("event %d in PCR %d: %w", e.Seq, measurements.PCRPeerPolicy, err)
		}
		hints = append(hints, h)
		digest := sha256.Sum256(e.Data)
		pcr = sha256.Sum256(append(pcr[:], digest[:]...))
	}
	if !bytes.Equal(pcr[:], quoted) {
		return nil, fmt.Errorf("the event log's peer policy events (%d) replay PCR %d to %x, the quote has %x: the log was altered, or the node measured something it did not log", len(hints), measurements.PCRPeerPolicy, pcr, quoted)
	}
	return hints, nil
}

// CheckPeerHints checks that every measurement set of hints is covered by one of the sets in force: every node
// the set accepts, the covering set accepts too (it pins the same values for every PCR the covering set
// enforces). A node whose measured peer policy passes trusted only peers the cluster would admit. The error
// names the first set that is not covered.
func CheckPeerHints(hints []*PeerHint, inForce []measurements.M) error {
	for _, h := range hints {
		for i, set := range h.Sets {
			if !coveredByAny(set, inForce) {
				return &UncoveredSetError{Set: set, Index: i + 1}
			}
		}
	}
	return nil
}

// UncoveredSetError is a measured peer policy's set that no set in force covers.
type UncoveredSetError struct {
	Set   measurements.M
	Index int // its position in its peer policy, from 1
}

func (e *UncoveredSetError) Error() string {
	return fmt.Sprintf("the node trusted peers by a measurement set (set %d of its peer policy, %s) that is not one of the measurement sets in force", e.Index, Describe(e.Set))
}

// coveredByAny tells whether one of sets covers set.
func coveredByAny(set measurements.M, sets []measurements.M) bool {
	for _, s := range sets {
		if covers(s, set) {
			return true
		}
	}
	return false
}

// covers tells whether every node that set accepts, by the PCRs it enforces, strict accepts too: set enforces
// the value strict expects for every PCR strict enforces.
func covers(strict, set measurements.M) bool {
	if len(strict) == 0 {
		return false
	}
	for idx, want := range strict {
		if want.WarnOnly {
			continue
		}
		got, ok := set[idx]
		if !ok || got.WarnOnly || got.Expected != want.Expected {
			return false
		}
	}
	return true
}
