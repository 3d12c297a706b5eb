package vtpm_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// flipEvidence is genuine evidence of the reference TPM, measured as a node (image, boot parameters) and as a
// member of a cluster (its cluster ID in PCR 15), with a validator that accepts it and one whose policy
// fails on every PCR the log extends, so that the failure explains every event.
type flipEvidence struct {
	evidence      []byte
	log           []byte
	accept, fail  *vtpm.Validator
	explained     []string // the verified lines of the failure's explanation
	boundOriginal []string // the bound events' Explain of the genuine log
}

const flipNonce = 7

func newFlipEvidence(t testing.TB) *flipEvidence {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ev := measurements.ClusterIDEvent(bytes.Repeat([]byte{0xc1}, 32))
	if err := node.Issuer.Measure(ev.PCR, ev.Type, ev.Data); err != nil {
		t.Fatal(err)
	}
	raw, err := node.Issuer.Issue(context.Background(), nonce(flipNonce), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{node.CA.Certificate()}
	accepting := measurements.MemberPolicy(node.Policy, bytes.Repeat([]byte{0xc1}, 32))
	accept, err := vtpm.NewValidator(roots, accepting, nil)
	if err != nil {
		t.Fatal(err)
	}
	failing := measurements.M{}
	for _, idx := range []uint32{0, measurements.PCRNodeImage, measurements.PCRBootParams, measurements.PCRClusterID} {
		failing[idx] = measurements.Measurement{Expected: measurements.Digest{0xee}}
	}
	fail, err := vtpm.NewValidator(roots, failing, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &flipEvidence{evidence: raw, log: doc.TPM.EventLog, accept: accept, fail: fail}
	if _, err := accept.Validate(context.Background(), raw, nonce(flipNonce)); err != nil {
		t.Fatalf("genuine evidence: %v", err)
	}
	lines, ok := f.explanation(raw)
	if !ok {
		t.Fatal("the failing policy did not fail with a measurement mismatch")
	}
	for _, want := range []string{"EV_IPL: node image sha256:1111", "EV_IPL: boot parameters: console=ttyS0 ro", "EV_SEPARATOR: <4 bytes: 00000000>", "EV_EVENT_TAG: constellation cluster id c1c1"} {
		if !containsLine(lines, want) {
			t.Fatalf("explanation %q lacks %q", lines, want)
		}
	}
	f.explained = lines
	f.boundOriginal, _ = bound(f.log)
	return f
}

func containsLine(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// explanation returns the lines of the failing validator's mismatch explanation that are not marked
// unverified, or false if the evidence was refused for anything else than the measurements.
func (f *flipEvidence) explanation(ev []byte) ([]string, bool) {
	_, err := f.fail.Validate(context.Background(), ev, nonce(flipNonce))
	var me *measurements.Error
	if !errors.As(err, &me) {
		return nil, false
	}
	var out []string
	for _, l := range strings.Split(me.Error(), "\n") {
		if !strings.Contains(l, "unverified") {
			out = append(out, l)
		}
	}
	return out, true
}

// bound is what a verifier may show of a log as verified: the Explain of every event whose type and data the
// mini scheme binds.
func bound(log []byte) ([]string, error) {
	events, err := eventlog.Parse(log)
	if err != nil {
		return nil, err
	}
	if err := eventlog.CheckData(events, measuredboot.Scheme); err != nil {
		return nil, err
	}
	var out []string
	for _, e := range events {
		if e.Binding != eventlog.Unbound {
			out = append(out, e.Explain())
		}
	}
	return out, nil
}

// check asserts the property for one altered event log: the evidence is refused, or everything shown as
// verified is what the genuine evidence shows.
func (f *flipEvidence) check(t *testing.T, log []byte, what string) {
	t.Helper()
	f.checkEvidence(t, mutate(t, f.evidence, func(d *attestation.Document) { d.TPM.EventLog = log }), what)
}

// checkEvidence asserts the property for altered evidence: refused, or the same explanation, user data and
// verified events as the genuine evidence.
func (f *flipEvidence) checkEvidence(t *testing.T, ev []byte, what string) {
	t.Helper()
	if lines, ok := f.explanation(ev); ok && !slices.Equal(lines, f.explained) {
		t.Errorf("%s: the mismatch explanation changed:\n%s\nwant:\n%s", what, strings.Join(lines, "\n"), strings.Join(f.explained, "\n"))
	}
	userData, err := f.accept.Validate(context.Background(), ev, nonce(flipNonce))
	if err != nil {
		return
	}
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatalf("%s: accepted evidence does not parse: %v", what, err)
	}
	if got, err := bound(doc.TPM.EventLog); err != nil || !slices.Equal(got, f.boundOriginal) || string(userData) != "user" {
		t.Errorf("%s: accepted, and what is verified changed: user data %q, events %q (%v), want %q", what, userData, got, err, f.boundOriginal)
	}
}

// Every byte of the whole evidence document flipped in turn (one bit, and the ASCII case bit): refused, or
// nothing printed as verified changes.
func TestEvidenceByteFlips(t *testing.T) {
	f := newFlipEvidence(t)
	for i := range f.evidence {
		for _, mask := range []byte{0x01, 0x20} {
			ev := bytes.Clone(f.evidence)
			ev[i] ^= mask
			f.checkEvidence(t, ev, "evidence byte "+strconv.Itoa(i))
		}
	}
}

// An event's digest is replayed against the quote; its type and data are not part of the digest. The host
// changes them to make an operator read another image digest or cluster ID. Every byte of the genuine log
// is flipped in turn (every bit, and each byte set to a neighbouring value): the evidence is refused, or
// nothing that is printed as verified changes.
func TestEventLogByteFlips(t *testing.T) {
	f := newFlipEvidence(t)
	for i := range f.log {
		for _, change := range []func(byte) byte{
			func(b byte) byte { return ^b },
			func(b byte) byte { return b + 1 },
			func(b byte) byte { return b - 1 },
			func(b byte) byte { return b ^ 0x01 },
			func(b byte) byte { return b ^ 0x10 },
		} {
			log := bytes.Clone(f.log)
			log[i] = change(log[i])
			f.check(t, log, "byte "+strconv.Itoa(i))
		}
	}
}

// The attacks the flips stand for, spelled out: another image digest, another cluster ID, another type.
func TestEventLogDataIsBound(t *testing.T) {
	f := newFlipEvidence(t)
	for name, tc := range map[string]struct{ old, new string }{
		"image digest": {"node image sha256:1111", "node image sha256:2222"},
		"cluster ID":   {"constellation cluster id c1c1", "constellation cluster id d1c1"},
	} {
		log := bytes.Replace(f.log, []byte(tc.old), []byte(tc.new), 1)
		if bytes.Equal(log, f.log) {
			t.Fatalf("%s: %q not in the log", name, tc.old)
		}
		ev := mutate(t, f.evidence, func(d *attestation.Document) { d.TPM.EventLog = log })
		_, err := f.accept.Validate(context.Background(), ev, nonce(flipNonce))
		if !errors.Is(err, eventlog.ErrData) || strings.Contains(err.Error(), tc.new) {
			t.Errorf("%s changed: Validate = %v, want ErrData without the altered text", name, err)
		}
		if lines, ok := f.explanation(ev); ok {
			t.Errorf("%s changed: explained as %q", name, lines)
		}
	}
	// Removing events, so that the cluster ID or everything disappears from the explanation: refused.
	events, err := eventlog.Parse(f.log)
	if err != nil {
		t.Fatal(err)
	}
	b := eventlog.NewBuilder()
	for _, e := range events[:len(events)-1] {
		b.AppendDigest(e.PCR, e.Type, e.Digest, e.Data)
	}
	for name, log := range map[string][]byte{"cluster ID event removed": b.Bytes(), "no log": nil} {
		ev := mutate(t, f.evidence, func(d *attestation.Document) { d.TPM.EventLog = log })
		if _, err := f.accept.Validate(context.Background(), ev, nonce(flipNonce)); err == nil || !strings.Contains(err.Error(), "event log does not explain quoted PCR") {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
}

// FuzzEventLog replaces the event log of genuine evidence of the reference TPM: whatever the log, the evidence
// is refused, or everything shown as verified is what the genuine log shows.
func FuzzEventLog(f *testing.F) {
	fe := newFlipEvidence(f)
	f.Add(fe.log)
	for _, i := range []int{60, len(fe.log) / 2, len(fe.log) - 5} {
		log := bytes.Clone(fe.log)
		log[i] ^= 0xff
		f.Add(log)
	}
	f.Add(bytes.Replace(fe.log, []byte("sha256:1111"), []byte("sha256:2222"), 1))
	f.Fuzz(func(t *testing.T, log []byte) {
		fe.check(t, log, "fuzzed log")
	})
}
