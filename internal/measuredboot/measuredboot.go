// Package measuredboot is the one definition of what a mini node's "firmware" measures before the node's
// first process starts: which events go into which PCR. The mini provider replays it into each node's TPM and
// keeps the TCG event log; the node image build replays it in software to compute the PCR values a node
// booted from that image presents. Both call Events, so they cannot drift apart.
//
// The scheme, all events SHA-256 of their data:
//
//	PCR 0  EV_S_CRTM_VERSION  "constellation mini firmware <FirmwareVersion>"
//	PCR 0  EV_SEPARATOR       00000000
//	PCR 4  EV_IPL             "constellation node image sha256:<image digest>"
//	PCR 4  EV_SEPARATOR       00000000
//	PCR 8  EV_IPL             "constellation boot parameters: <command line>"
//
// PCR 15 stays zero until the node is initialised or joins a cluster; then the bootstrapper extends the
// cluster ID into it (measurements.ClusterIDEvent, the membership rule of every provider):
//
//	PCR 15 EV_EVENT_TAG       "constellation cluster id <hex>"
//
// Before a joining node trusts any peer, it extends the peer policy it was given, if any, into PCR 14
// (measurements.PCRPeerPolicy, policyupdate.PeerHint): the measurement sets of the peers it trusts besides
// its own image's. No event of the firmware touches PCR 14; it stays zero on a node given no peer policy.
//
//	PCR 14 EV_EVENT_TAG       "constellation peer policy {"version":1,"sets":[...]}"
//
// [Scheme] is this definition for a verifier: every event's digest is the SHA-256 of its data, and the data
// decides the type (00000000 is EV_SEPARATOR, the firmware version EV_S_CRTM_VERSION, the cluster ID
// EV_EVENT_TAG, as is the peer policy, anything else EV_IPL), so neither the data nor the type of an event can be changed without
// the validator noticing.
package measuredboot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

// FirmwareVersion identifies this scheme; a change to the scheme changes it.
const FirmwareVersion = "v1"

// PCRs the scheme defines.
const (
	PCRFirmware   = 0
	PCRNodeImage  = measurements.PCRNodeImage
	PCRBootParams = measurements.PCRBootParams
)

// BootPCRs are the PCRs the scheme's boot measures: a node that presents the same values booted the same
// firmware, image and parameters. A node's own values of these PCRs are the policy it trusts its peers with.
var BootPCRs = []uint32{PCRFirmware, PCRNodeImage, PCRBootParams}

// MaxCmdline bounds the boot command line.
const MaxCmdline = 4096

// Boot is what the firmware measures for one node boot.
type Boot struct {
	// ImageDigest is the SHA-256 of the node image file.
	ImageDigest [32]byte
	// Cmdline is the command line of the node's first process (the bootstrapper), as the kernel command line
	// of a VM. It must be the same for every node of a cluster; per-node data comes from instance metadata.
	Cmdline string
}

// Prefixes of the scheme's event data.
const (
	firmwarePrefix = "constellation mini firmware "
)

var separatorData = []byte{0, 0, 0, 0}

// Scheme is the mini firmware's measurement scheme for a verifier (see the package documentation): every
// extending event's digest is the SHA-256 of its data, and its type is the one the scheme gives its data;
// the scheme logs no EV_NO_ACTION events.
var Scheme eventlog.Scheme = scheme{}

type scheme struct{}

func (scheme) Bind(e eventlog.Event) (eventlog.Binding, error) {
	if e.Type == eventlog.NoAction {
		return eventlog.Unbound, errors.New("the mini firmware logs no EV_NO_ACTION events")
	}
	if want := typeOf(e.Data); e.Type != want {
		return eventlog.Unbound, fmt.Errorf("type %v does not fit its data, for which the mini firmware's scheme logs %v", e.Type, want)
	}
	return eventlog.TypeAndDataBound, nil
}

// typeOf is the type the scheme logs data with.
func typeOf(data []byte) eventlog.EventType {
	switch {
	case bytes.Equal(data, separatorData):
		return eventlog.Separator
	case bytes.HasPrefix(data, []byte(firmwarePrefix)):
		return eventlog.SCRTMVersion
	case bytes.HasPrefix(data, []byte(measurements.ClusterIDEventPrefix)), bytes.HasPrefix(data, []byte(measurements.PeerPolicyEventPrefix)):
		return eventlog.EventTag
	}
	return eventlog.IPL
}

// Event is one measurement.
type Event struct {
	PCR  uint32
	Type eventlog.EventType
	Data []byte
}

// Events returns the measurements of a boot, in order.
func Events(b Boot) ([]Event, error) {
	if len(b.Cmdline) > MaxCmdline || strings.ContainsAny(b.Cmdline, "\x00\n") {
		return nil, fmt.Errorf("boot command line must be at most %d bytes without NUL or newline", MaxCmdline)
	}
	sep := bytes.Clone(separatorData)
	return []Event{
		{PCRFirmware, eventlog.SCRTMVersion, []byte(firmwarePrefix + FirmwareVersion)},
		{PCRFirmware, eventlog.Separator, sep},
		{PCRNodeImage, eventlog.IPL, []byte("constellation node image sha256:" + hex.EncodeToString(b.ImageDigest[:]))},
		{PCRNodeImage, eventlog.Separator, sep},
		{PCRBootParams, eventlog.IPL, []byte("constellation boot parameters: " + b.Cmdline)},
	}, nil
}

// Log builds the TCG event log of a boot and returns it with the events' SHA-256 digests, in order, for the
// caller to extend into the TPM.
func Log(b Boot) (*eventlog.Builder, []eventlog.Event, error) {
	events, err := Events(b)
	if err != nil {
		return nil, nil, err
	}
	log := eventlog.NewBuilder()
	out := make([]eventlog.Event, len(events))
	for i, e := range events {
		out[i] = log.Append(e.PCR, e.Type, e.Data)
	}
	return log, out, nil
}

// Expected computes the PCR values a node presents after this boot, before it joins a cluster, as a
// measurement policy: PCRs 0, 4 and 8 as the scheme measures them.
func Expected(b Boot) (measurements.M, error) {
	_, events, err := Log(b)
	if err != nil {
		return nil, err
	}
	replayed := eventlog.Replay(events)
	return measurements.FromPCRs(func(pcr uint32) []byte { v := replayed[pcr]; return v[:] }, BootPCRs...)
}

// DigestFile returns the SHA-256 of a node image file.
func DigestFile(path string) ([32]byte, error) {
	var d [32]byte
	f, err := os.Open(path)
	if err != nil {
		return d, fmt.Errorf("hashing node image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return d, fmt.Errorf("hashing node image %s: %w", path, err)
	}
	h.Sum(d[:0])
	return d, nil
}

// Measure is the firmware: it extends the boot's events into the TPM behind rw and returns the TCG event
// log. Call it once per boot, on a TPM whose PCRs were just reset.
func Measure(rw io.ReadWriter, b Boot) ([]byte, error) {
	log, events, err := Log(b)
	if err != nil {
		return nil, err
	}
	for _, e := range events {
		if err := tpm2.PCRExtend(rw, tpmutil.Handle(e.PCR), tpm2.AlgSHA256, e.Digest[:], ""); err != nil {
			return nil, fmt.Errorf("measuring %s into PCR %d: %w", e.Type, e.PCR, err)
		}
	}
	return log.Bytes(), nil
}
