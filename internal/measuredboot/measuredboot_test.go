package measuredboot

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

var boot = Boot{ImageDigest: sha256.Sum256([]byte("image")), Cmdline: "bootstrapper --provider mini"}

// TestFirmwareAndBuildAgree measures a boot into the reference TPM, as the provider does, and checks that the
// values the build computes are exactly what the TPM then holds, and that the log replays to them.
func TestFirmwareAndBuildAgree(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	rawLog, err := Measure(sim, boot)
	if err != nil {
		t.Fatal(err)
	}
	expected, err := Expected(boot)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := client.ReadPCRs(sim, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	for idx, m := range expected {
		if !bytes.Equal(pcrs.GetPcrs()[idx], m.Expected[:]) {
			t.Errorf("PCR %d: TPM has %x, the build expects %s", idx, pcrs.GetPcrs()[idx], m.Expected)
		}
	}
	events, err := eventlog.Parse(rawLog)
	if err != nil {
		t.Fatal(err)
	}
	for idx, v := range eventlog.Replay(events) {
		if !bytes.Equal(pcrs.GetPcrs()[idx], v[:]) {
			t.Errorf("PCR %d: log replays to %x, TPM has %x", idx, v, pcrs.GetPcrs()[idx])
		}
	}
	if len(expected) != 3 {
		t.Fatalf("expected policy covers %d PCRs, want 3", len(expected))
	}
}

func TestOneByteChangesTheImagePCR(t *testing.T) {
	dir := t.TempDir()
	img := bytes.Repeat([]byte("node image "), 1000)
	path := filepath.Join(dir, "a.img")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	d1, err := DigestFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img[len(img)/2] ^= 1
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	d2, _ := DigestFile(path)
	e1, _ := Expected(Boot{ImageDigest: d1, Cmdline: boot.Cmdline})
	e2, _ := Expected(Boot{ImageDigest: d2, Cmdline: boot.Cmdline})
	if e1[PCRNodeImage] == e2[PCRNodeImage] {
		t.Fatal("changing one byte of the image does not change PCR 4")
	}
	if e1[PCRBootParams] != e2[PCRBootParams] || e1[PCRFirmware] != e2[PCRFirmware] {
		t.Fatal("the image changed other PCRs")
	}
	e3, _ := Expected(Boot{ImageDigest: d1, Cmdline: boot.Cmdline + " --debug"})
	if e3[PCRBootParams] == e1[PCRBootParams] {
		t.Fatal("the command line does not change PCR 8")
	}
}

func TestRejectsBadCmdline(t *testing.T) {
	for _, c := range []string{"a\nb", "a\x00b", string(bytes.Repeat([]byte("a"), MaxCmdline+1))} {
		if _, err := Events(Boot{Cmdline: c}); err == nil {
			t.Errorf("command line %.20q accepted", c)
		}
	}
	if _, err := DigestFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing image hashed")
	}
}

// Everything the firmware and the bootstrapper log fits the scheme a verifier checks, which binds every
// event's type and data; a changed type or data does not.
func TestSchemeBindsEveryEvent(t *testing.T) {
	_, events, err := Log(boot)
	if err != nil {
		t.Fatal(err)
	}
	id := measurements.ClusterIDEvent(bytes.Repeat([]byte{1}, 32))
	b := eventlog.NewBuilder()
	events = append(events, b.Append(id.PCR, id.Type, id.Data))
	// The peer policy a joining node measures (policyupdate.PeerHint.Event).
	events = append(events, b.Append(measurements.PCRPeerPolicy, eventlog.EventTag, []byte(measurements.PeerPolicyEventPrefix+`{"version":1,"sets":[]}`)))
	if err := eventlog.CheckData(events, Scheme); err != nil {
		t.Fatalf("the scheme refuses its own events: %v", err)
	}
	for _, e := range events {
		if e.Binding != eventlog.TypeAndDataBound {
			t.Errorf("event %v: binding %d", e, e.Binding)
		}
	}
	for i := range events {
		for _, typ := range []eventlog.EventType{eventlog.SCRTMVersion, eventlog.Separator, eventlog.IPL, eventlog.EventTag, eventlog.NoAction, eventlog.PostCode} {
			if typ == events[i].Type {
				continue
			}
			changed := slices.Clone(events)
			changed[i].Type = typ
			if err := eventlog.CheckData(changed, Scheme); !errors.Is(err, eventlog.ErrData) {
				t.Errorf("event %d as %v: %v, want ErrData", i, typ, err)
			}
		}
		changed := slices.Clone(events)
		changed[i].Data = append(bytes.Clone(changed[i].Data), '0')
		if err := eventlog.CheckData(changed, Scheme); !errors.Is(err, eventlog.ErrData) {
			t.Errorf("event %d with other data: %v, want ErrData", i, err)
		}
	}
}
