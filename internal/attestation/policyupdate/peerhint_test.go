package policyupdate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

func peerHint(t *testing.T, sets ...measurements.M) *PeerHint {
	t.Helper()
	h, err := NewPeerHint(sets...)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The canonical form does not depend on how the sets were written, and reads back as the same sets.
func TestPeerHintRoundTrip(t *testing.T) {
	h := peerHint(t, image(1), image(2))
	raw := h.Marshal()
	back, err := ParsePeerHint(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Marshal(), raw) {
		t.Fatalf("the canonical form does not read back:\n%s\n%s", raw, back.Marshal())
	}
	spaced := []byte(strings.ReplaceAll(string(raw), ",", " , "))
	if again, err := ParsePeerHint(spaced); err != nil || !bytes.Equal(again.Marshal(), raw) {
		t.Fatalf("the same sets written otherwise: %v", err)
	}
	ev := h.Event()
	if ev.PCR != measurements.PCRPeerPolicy || ev.Type != eventlog.EventTag || ev.Digest != sha256.Sum256(ev.Data) || !bytes.HasPrefix(ev.Data, []byte(measurements.PeerPolicyEventPrefix)) {
		t.Fatalf("event: %v", ev)
	}
}

// A hint is one or two distinct valid sets that hold neither PCR 14 nor PCR 15; everything else is refused.
func TestPeerHintInvalid(t *testing.T) {
	withPCR := func(pcr uint32) measurements.M {
		m := image(1)
		m[pcr] = measurements.Measurement{}
		return m
	}
	warnImage := image(1)
	warnImage[measurements.PCRNodeImage] = measurements.Measurement{Expected: warnImage[measurements.PCRNodeImage].Expected, WarnOnly: true}
	for name, sets := range map[string][]measurements.M{
		"none":          nil,
		"three":         {image(1), image(2), image(3)},
		"twice the one": {image(1), image(1)},
		"cluster ID":    {withPCR(measurements.PCRClusterID)},
		"peer policy":   {withPCR(measurements.PCRPeerPolicy)},
		"no image PCR":  {{0: {}}},
		"warn-only":     {warnImage},
	} {
		if _, err := NewPeerHint(sets...); err == nil {
			t.Errorf("%s: accepted", name)
		}
		raw := (&PeerHint{Sets: sets}).Marshal()
		if _, err := ParsePeerHint(raw); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	for _, raw := range []string{``, `{}`, `{"version":2,"sets":[]}`, `{"version":1,"sets":[{}]}`, `{"version":1,"sets":[],"extra":1}`, `[]`} {
		if _, err := ParsePeerHint([]byte(raw)); err == nil {
			t.Errorf("%q: parsed", raw)
		}
	}
}

// replay extends events (their digests) the way a TPM does and returns the value.
func replay(events ...eventlog.Event) []byte {
	var pcr [32]byte
	for _, e := range events {
		pcr = sha256.Sum256(append(pcr[:], e.Digest[:]...))
	}
	return pcr[:]
}

// The hints count only as the quoted PCR 14 proves them: the data of every event, in order, must replay to it;
// a log whose data was edited (digest kept), with a removed or an added event, or with a foreign event in PCR
// 14 is refused.
func TestPeerHintsOf(t *testing.T) {
	ab := peerHint(t, image(1), image(2)).Event()
	rogue := peerHint(t, image(1), image(9)).Event()
	other := eventlog.Event{PCR: measurements.PCRNodeImage, Type: eventlog.IPL, Data: []byte("x"), Digest: sha256.Sum256([]byte("x"))}
	zero := make([]byte, 32)

	if hints, err := PeerHintsOf([]eventlog.Event{other}, zero); err != nil || len(hints) != 0 {
		t.Fatalf("no hint, PCR zero: %v, %v", hints, err)
	}
	hints, err := PeerHintsOf([]eventlog.Event{other, ab}, replay(ab))
	if err != nil || len(hints) != 1 || len(hints[0].Sets) != 2 {
		t.Fatalf("one hint: %v, %v", hints, err)
	}
	if hints, err := PeerHintsOf([]eventlog.Event{ab, rogue}, replay(ab, rogue)); err != nil || len(hints) != 2 {
		t.Fatalf("two hints: %v, %v", hints, err)
	}

	// The node measured the rogue hint; the log claims the genuine one, with the digest of what was measured.
	edited := rogue
	edited.Data = ab.Data
	foreign := eventlog.Event{PCR: measurements.PCRPeerPolicy, Type: eventlog.EventTag, Data: []byte("something else"), Digest: sha256.Sum256([]byte("something else"))}
	retyped := ab
	retyped.Type = eventlog.IPL
	for name, tc := range map[string]struct {
		events []eventlog.Event
		quoted []byte
	}{
		"data edited, digest kept": {[]eventlog.Event{edited}, replay(rogue)},
		"event removed":            {nil, replay(rogue)},
		"one of two removed":       {[]eventlog.Event{ab}, replay(ab, rogue)},
		"event added":              {[]eventlog.Event{ab}, zero},
		"foreign event":            {[]eventlog.Event{foreign}, replay(foreign)},
		"retyped":                  {[]eventlog.Event{retyped}, replay(retyped)},
		"short quote":              {nil, zero[:20]},
	} {
		if hints, err := PeerHintsOf(tc.events, tc.quoted); err == nil {
			t.Errorf("%s: accepted %v", name, hints)
		}
	}
}

// A hinted set passes if a set in force accepts every node it accepts: the same set, or one that pins more.
func TestCheckPeerHints(t *testing.T) {
	inForce := []measurements.M{image(1), image(2)}
	stricter := image(2)
	stricter[9] = measurements.Measurement{}
	if err := CheckPeerHints([]*PeerHint{peerHint(t, image(1), image(2)), peerHint(t, stricter)}, inForce); err != nil {
		t.Fatal(err)
	}
	if err := CheckPeerHints(nil, inForce); err != nil {
		t.Fatal(err)
	}
	looser := image(2)
	looser[measurements.PCRBootParams] = measurements.Measurement{Expected: looser[measurements.PCRBootParams].Expected, WarnOnly: true}
	for name, h := range map[string]*PeerHint{
		"rogue image":          {Sets: []measurements.M{image(1), image(9)}},
		"boot params unpinned": {Sets: []measurements.M{looser}},
	} {
		err := CheckPeerHints([]*PeerHint{h}, inForce)
		var uncovered *UncoveredSetError
		if !errors.As(err, &uncovered) {
			t.Errorf("%s: %v, want an UncoveredSetError", name, err)
		}
	}
	if err := CheckPeerHints([]*PeerHint{peerHint(t, image(1))}, nil); err == nil {
		t.Error("no set in force covered a hint")
	}
}

// FuzzParsePeerHint: the peer policy, which the host writes into a node's metadata and a node's event log
// carries to the join service.
func FuzzParsePeerHint(f *testing.F) {
	h, _ := NewPeerHint(image(1), image(2))
	f.Add(h.Marshal())
	one, _ := NewPeerHint(image(3))
	f.Add(one.Marshal())
	f.Add([]byte(`{"version":1,"sets":[]}`))
	f.Add([]byte(`{"version":1,"sets":[{"4":{"expected":"00"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParsePeerHint(data)
		if err != nil {
			return
		}
		if len(h.Sets) == 0 || len(h.Sets) > MaxSets {
			t.Fatalf("parsed an invalid peer policy: %+v", h)
		}
		back, err := ParsePeerHint(h.Marshal())
		if err != nil || !bytes.Equal(back.Marshal(), h.Marshal()) {
			t.Fatalf("the canonical form does not read back: %v", err)
		}
		// Its event is what PeerHintsOf reads back from a log that replays to the quote.
		ev := h.Event()
		hints, err := PeerHintsOf([]eventlog.Event{ev}, replay(ev))
		if err != nil || len(hints) != 1 || !bytes.Equal(hints[0].Marshal(), h.Marshal()) {
			t.Fatalf("its event does not read back: %v", err)
		}
	})
}
