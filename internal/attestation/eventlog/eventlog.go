// Package eventlog parses, replays and builds TCG PC Client crypto-agile
// event logs (the format of /sys/kernel/security/tpm0/binary_bios_measurements,
// TCG PC Client Platform Firmware Profile, "Spec ID Event03").
//
// A log is untrusted input: [Parse] validates it strictly and bounds every
// length and count before using it, and it never panics. Only the SHA-256
// digest of each event is kept; [Replay] recomputes the SHA-256 PCR values the
// events produce so that they can be compared with PCR values covered by a
// verified TPM quote. Parsing a log proves nothing by itself: only a replay
// that matches quoted PCR values ties the events to the TPM.
//
// Truncation at an event boundary cannot be detected from the log alone (the
// format has no trailer); such a log parses to the events before the cut, and
// the mismatch shows up when the replay is compared with the quote.
//
// The replay binds only each event's PCR and digest. An event's type and data
// are descriptive, and bound only where the measurement scheme that wrote the
// log defines the digest as the hash of the data: [CheckData] checks that for
// every event a [Scheme] says so and records in [Event.Binding] what is bound.
// [Event.Explain] renders an event for an operator and marks everything that
// is not bound as unverified. Show only Explain's text as verified, and only
// for events of a log whose replay matched a verified quote.
package eventlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Limits enforced by [Parse].
const (
	MaxLogSize       = 16 << 20 // total size of a log in bytes
	MaxEventDataSize = 1 << 20  // size of one event's data in bytes
	MaxEvents        = 100_000  // number of events after the Spec ID header
	MaxAlgorithms    = 8        // digest algorithms declared in the header
	MaxDigestSize    = 64       // digest size of an algorithm unknown to this package
	NumPCRs          = 24       // PCR indices must be below this (except for EV_NO_ACTION)
)

// ErrTruncated is wrapped by errors reporting that the log ended in the middle
// of a structure.
var ErrTruncated = errors.New("log truncated")

// TPM algorithm identifiers (TPM_ALG_ID) with a standard digest size.
const (
	algSHA1   = 0x0004
	algSHA256 = 0x000B
	algSHA384 = 0x000C
	algSHA512 = 0x000D
	algSM3    = 0x0012
)

var algSizes = map[uint16]int{algSHA1: 20, algSHA256: 32, algSHA384: 48, algSHA512: 64, algSM3: 32}

var algNames = map[uint16]string{algSHA1: "SHA1", algSHA256: "SHA256", algSHA384: "SHA384", algSHA512: "SHA512", algSM3: "SM3_256"}

func algName(id uint16) string {
	if n, ok := algNames[id]; ok {
		return fmt.Sprintf("%s (0x%04x)", n, id)
	}
	return fmt.Sprintf("0x%04x", id)
}

// EventType is the type of a log event (TCG PC Client PFP, section 10.4.1).
type EventType uint32

// Event types defined by the TCG PC Client Platform Firmware Profile.
const (
	PrebootCert          EventType = 0x00
	PostCode             EventType = 0x01
	NoAction             EventType = 0x03 // informational, never extended into a PCR
	Separator            EventType = 0x04
	Action               EventType = 0x05
	EventTag             EventType = 0x06
	SCRTMContents        EventType = 0x07
	SCRTMVersion         EventType = 0x08
	CPUMicrocode         EventType = 0x09
	PlatformConfigFlags  EventType = 0x0A
	TableOfDevices       EventType = 0x0B
	CompactHash          EventType = 0x0C
	IPL                  EventType = 0x0D
	IPLPartitionData     EventType = 0x0E
	NonhostCode          EventType = 0x0F
	NonhostConfig        EventType = 0x10
	NonhostInfo          EventType = 0x11
	OmitBootDeviceEvents EventType = 0x12

	EFIVariableDriverConfig    EventType = 0x80000001
	EFIVariableBoot            EventType = 0x80000002
	EFIBootServicesApplication EventType = 0x80000003
	EFIBootServicesDriver      EventType = 0x80000004
	EFIRuntimeServicesDriver   EventType = 0x80000005
	EFIGPTEvent                EventType = 0x80000006
	EFIAction                  EventType = 0x80000007
	EFIPlatformFirmwareBlob    EventType = 0x80000008
	EFIHandoffTables           EventType = 0x80000009
	EFIPlatformFirmwareBlob2   EventType = 0x8000000A
	EFIHandoffTables2          EventType = 0x8000000B
	EFIVariableBoot2           EventType = 0x8000000C
	EFIHCRTMEvent              EventType = 0x80000010
	EFIVariableAuthority       EventType = 0x800000E0
	EFISPDMFirmwareBlob        EventType = 0x800000E1
	EFISPDMFirmwareConfig      EventType = 0x800000E2
)

var typeNames = map[EventType]string{
	PrebootCert:          "EV_PREBOOT_CERT",
	PostCode:             "EV_POST_CODE",
	NoAction:             "EV_NO_ACTION",
	Separator:            "EV_SEPARATOR",
	Action:               "EV_ACTION",
	EventTag:             "EV_EVENT_TAG",
	SCRTMContents:        "EV_S_CRTM_CONTENTS",
	SCRTMVersion:         "EV_S_CRTM_VERSION",
	CPUMicrocode:         "EV_CPU_MICROCODE",
	PlatformConfigFlags:  "EV_PLATFORM_CONFIG_FLAGS",
	TableOfDevices:       "EV_TABLE_OF_DEVICES",
	CompactHash:          "EV_COMPACT_HASH",
	IPL:                  "EV_IPL",
	IPLPartitionData:     "EV_IPL_PARTITION_DATA",
	NonhostCode:          "EV_NONHOST_CODE",
	NonhostConfig:        "EV_NONHOST_CONFIG",
	NonhostInfo:          "EV_NONHOST_INFO",
	OmitBootDeviceEvents: "EV_OMIT_BOOT_DEVICE_EVENTS",

	EFIVariableDriverConfig:    "EV_EFI_VARIABLE_DRIVER_CONFIG",
	EFIVariableBoot:            "EV_EFI_VARIABLE_BOOT",
	EFIBootServicesApplication: "EV_EFI_BOOT_SERVICES_APPLICATION",
	EFIBootServicesDriver:      "EV_EFI_BOOT_SERVICES_DRIVER",
	EFIRuntimeServicesDriver:   "EV_EFI_RUNTIME_SERVICES_DRIVER",
	EFIGPTEvent:                "EV_EFI_GPT_EVENT",
	EFIAction:                  "EV_EFI_ACTION",
	EFIPlatformFirmwareBlob:    "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	EFIHandoffTables:           "EV_EFI_HANDOFF_TABLES",
	EFIPlatformFirmwareBlob2:   "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	EFIHandoffTables2:          "EV_EFI_HANDOFF_TABLES2",
	EFIVariableBoot2:           "EV_EFI_VARIABLE_BOOT2",
	EFIHCRTMEvent:              "EV_EFI_HCRTM_EVENT",
	EFIVariableAuthority:       "EV_EFI_VARIABLE_AUTHORITY",
	EFISPDMFirmwareBlob:        "EV_EFI_SPDM_FIRMWARE_BLOB",
	EFISPDMFirmwareConfig:      "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

// String returns the TCG name of the type, e.g. "EV_IPL", or
// "EV_UNKNOWN(0x...)" for a type this package does not know.
func (t EventType) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("EV_UNKNOWN(0x%x)", uint32(t))
}

// Event is one measurement of the log. Only the SHA-256 digest is kept.
type Event struct {
	Seq    int       // position in the log (0 = first event after the Spec ID header)
	PCR    uint32    // PCR index
	Type   EventType // event type
	Digest [32]byte  // SHA-256 digest extended into PCR (unless Type is NoAction)
	Data   []byte    // event data; not necessarily what Digest is a hash of
	// Binding says what of Type and Data the digest binds; set by CheckData, Unbound until then.
	Binding Binding
}

// Binding says which descriptive parts of an event its digest binds, under a measurement scheme.
type Binding int

const (
	// Unbound: neither type nor data is bound; only the digest is (through the replay).
	Unbound Binding = iota
	// DataBound: the digest is the SHA-256 of the data; the type is not bound.
	DataBound
	// TypeAndDataBound: the digest is the SHA-256 of the data, and the scheme allows only one type for
	// that data.
	TypeAndDataBound
)

// Scheme is a measurement scheme's definition of its events.
type Scheme interface {
	// Bind returns what of an extending event (not NoAction) the scheme binds to its digest, without
	// checking the digest. An error says the scheme does not allow the event (for example a type that
	// does not fit its data).
	Bind(e Event) (Binding, error)
}

// ErrData is wrapped by the errors of [CheckData].
var ErrData = errors.New("event log: event data not as the measurement scheme defines")

// CheckData checks the events against scheme and sets each event's Binding: for an event whose digest the
// scheme defines as the SHA-256 of its data, the digest must be exactly that; an event the scheme does not
// allow is an error. NoAction events are never extended, so nothing of them is bound; the scheme decides
// whether it allows them (Bind is called with them, too). On error, no event's Binding is changed.
func CheckData(events []Event, scheme Scheme) error {
	bindings := make([]Binding, len(events))
	for i, e := range events {
		b, err := scheme.Bind(e)
		if err != nil {
			return fmt.Errorf("%w: event %d (PCR %d, %v): %w", ErrData, e.Seq, e.PCR, e.Type, err)
		}
		if e.Type == NoAction {
			b = Unbound
		}
		if b != Unbound && !e.DigestMatchesData() {
			return fmt.Errorf("%w: event %d (PCR %d, %v): the digest is not the SHA-256 of the data, as the scheme defines it (the data was altered)", ErrData, e.Seq, e.PCR, e.Type)
		}
		bindings[i] = b
	}
	for i := range events {
		events[i].Binding = bindings[i]
	}
	return nil
}

// TCGScheme is the TCG PC Client Platform Firmware Profile's definition: the digests of EV_SEPARATOR,
// EV_S_CRTM_VERSION, EV_ACTION, EV_EFI_ACTION and EV_OMIT_BOOT_DEVICE_EVENTS are the hash of their data;
// every other event's digest covers something else (a PE image, a variable's content, a table). It allows
// every event and binds no type.
var TCGScheme Scheme = tcgScheme{}

type tcgScheme struct{}

func (tcgScheme) Bind(e Event) (Binding, error) {
	switch e.Type {
	case Separator, SCRTMVersion, Action, EFIAction, OmitBootDeviceEvents:
		return DataBound, nil
	}
	return Unbound, nil
}

// Explain renders the event for an operator as "<type>: <description>", and says what is not verified: the
// type where the digest does not bind it, and the data where the digest does not bind it. It is at most
// about 250 bytes and contains no control characters.
func (e Event) Explain() string {
	switch e.Binding {
	case TypeAndDataBound:
		return fmt.Sprintf("%v: %s", e.Type, e.Description())
	case DataBound:
		return fmt.Sprintf("%v (type unverified): %s", e.Type, e.Description())
	default:
		return fmt.Sprintf("%v (unverified): %s", e.Type, e.Description())
	}
}

// maxDescription bounds the length in bytes of [Event.Description].
const maxDescription = 200

// Description returns a short, single-line, human-readable rendering of the
// event data for display to an operator: the text itself (without leading
// or trailing NULs) if it is printable UTF-8, otherwise the size and a hex
// dump (short data) or SHA-256 (long data). The result is at most 200 bytes
// and contains no control or formatting characters.
func (e Event) Description() string {
	text := bytes.Trim(e.Data, "\x00")
	switch {
	case len(e.Data) == 0:
		return "<empty>"
	case len(text) > 0 && isPrintable(text):
		if len(text) <= maxDescription {
			return string(text)
		}
		const ellipsis = "..."
		cut := maxDescription - len(ellipsis)
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		return string(text[:cut]) + ellipsis
	case len(e.Data) <= 32:
		return fmt.Sprintf("<%d bytes: %x>", len(e.Data), e.Data)
	default:
		sum := sha256.Sum256(e.Data)
		return fmt.Sprintf("<%d bytes, sha256:%x>", len(e.Data), sum)
	}
}

func isPrintable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// DigestMatchesData reports whether Digest is the SHA-256 hash of Data. Many
// firmware events legitimately do not satisfy this (the digest covers data
// that is not in the log), so [Parse] does not require it.
func (e Event) DigestMatchesData() bool {
	return sha256.Sum256(e.Data) == e.Digest
}

const startupLocalitySignature = "StartupLocality\x00"

// startupLocality returns the locality of a well-formed StartupLocality event.
func startupLocality(e Event) (byte, bool) {
	if e.Type != NoAction || e.PCR != 0 || len(e.Data) != len(startupLocalitySignature)+1 ||
		!bytes.HasPrefix(e.Data, []byte(startupLocalitySignature)) {
		return 0, false
	}
	return e.Data[len(startupLocalitySignature)], true
}

// Replay computes the SHA-256 PCR values the events produce
// (new = SHA-256(old || digest), starting from all zeros), for every PCR that
// has at least one extending event. NoAction events are not extended; a
// StartupLocality event for PCR 0 that precedes PCR 0's first extension sets
// PCR 0's initial value to 31 zero bytes followed by the locality.
func Replay(events []Event) map[uint32][32]byte {
	pcrs := make(map[uint32][32]byte)
	var pcr0Init [32]byte
	for _, e := range events {
		if e.Type == NoAction {
			if loc, ok := startupLocality(e); ok {
				if _, extended := pcrs[0]; !extended {
					pcr0Init[31] = loc
				}
			}
			continue
		}
		old, ok := pcrs[e.PCR]
		if !ok && e.PCR == 0 {
			old = pcr0Init
		}
		h := sha256.New()
		h.Write(old[:])
		h.Write(e.Digest[:])
		h.Sum(old[:0])
		pcrs[e.PCR] = old
	}
	return pcrs
}

// ResetValue is the SHA-256 value of a PCR after TPM2_Startup, before anything is extended into it (TCG PC
// Client Platform TPM Profile): all ones for the dynamic-launch PCRs 17 to 22, zero for the others.
func ResetValue(pcr uint32) [32]byte {
	var v [32]byte
	if pcr >= 17 && pcr <= 22 {
		for i := range v {
			v[i] = 0xff
		}
	}
	return v
}

// reader consumes a byte slice with bounds checks.
type reader struct {
	buf []byte
	off int
	eof error // wrapped when reading past the end
}

func (r *reader) take(n int, what string) ([]byte, error) {
	if n < 0 || n > len(r.buf)-r.off {
		return nil, fmt.Errorf("reading %s: %w (need %d bytes at offset %d, %d left)", what, r.eof, n, r.off, len(r.buf)-r.off)
	}
	b := r.buf[r.off : r.off+n : r.off+n]
	r.off += n
	return b, nil
}

func (r *reader) u8(what string) (uint8, error) {
	b, err := r.take(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (r *reader) u16(what string) (uint16, error) {
	b, err := r.take(2, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

func (r *reader) u32(what string) (uint32, error) {
	b, err := r.take(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

// algorithm is a digest algorithm declared in the Spec ID header.
type algorithm struct {
	id   uint16
	size int
}

const specIDSignature = "Spec ID Event03\x00"

var errSpecIDShort = errors.New("declared event size too small for Spec ID event")

// Parse parses a crypto-agile TCG event log and returns its events after the
// Spec ID header, keeping the SHA-256 digest of each. It validates the log
// strictly (see the package documentation and the Max* limits): every event
// must carry exactly one digest for each algorithm declared in the header,
// SHA-256 must be declared, PCR indices must be below [NumPCRs] except for
// NoAction events, and a StartupLocality event must be well-formed, for PCR 0,
// unique and precede PCR 0's first extension. The returned events do not
// alias raw.
func Parse(raw []byte) ([]Event, error) {
	if len(raw) == 0 {
		return nil, errors.New("empty log")
	}
	if len(raw) > MaxLogSize {
		return nil, fmt.Errorf("log size %d exceeds limit %d", len(raw), MaxLogSize)
	}
	r := &reader{buf: bytes.Clone(raw), eof: ErrTruncated}
	algs, err := parseHeader(r)
	if err != nil {
		return nil, fmt.Errorf("spec ID event: %w", err)
	}
	var events []Event
	localitySeen, pcr0Extended := false, false
	for i := 0; r.off < len(r.buf); i++ {
		if i >= MaxEvents {
			return nil, fmt.Errorf("event %d: more than %d events", i, MaxEvents)
		}
		e, err := parseEvent(r, algs)
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		e.Seq = i
		if e.Type == NoAction && bytes.HasPrefix(e.Data, []byte(startupLocalitySignature)) {
			loc, ok := startupLocality(e)
			switch {
			case !ok:
				return nil, fmt.Errorf("event %d: malformed StartupLocality event (PCR %d, %d data bytes; want PCR 0, %d bytes)", i, e.PCR, len(e.Data), len(startupLocalitySignature)+1)
			case loc > 4:
				return nil, fmt.Errorf("event %d: StartupLocality %d out of range [0, 4]", i, loc)
			case localitySeen:
				return nil, fmt.Errorf("event %d: duplicate StartupLocality event", i)
			case pcr0Extended:
				return nil, fmt.Errorf("event %d: StartupLocality event after PCR 0 was extended", i)
			}
			localitySeen = true
		}
		if e.Type != NoAction && e.PCR == 0 {
			pcr0Extended = true
		}
		events = append(events, e)
	}
	return events, nil
}

// parseHeader parses the TCG_PCClientPCREvent carrying the TCG_EfiSpecIDEvent
// and returns the declared digest algorithms.
func parseHeader(r *reader) ([]algorithm, error) {
	pcr, err := r.u32("PCR index")
	if err != nil {
		return nil, err
	}
	if pcr != 0 {
		return nil, fmt.Errorf("PCR index %d, want 0", pcr)
	}
	typ, err := r.u32("event type")
	if err != nil {
		return nil, err
	}
	if EventType(typ) != NoAction {
		return nil, fmt.Errorf("event type %v, want %v", EventType(typ), NoAction)
	}
	digest, err := r.take(20, "SHA-1 digest")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(digest, make([]byte, 20)) {
		return nil, errors.New("header digest is not zero")
	}
	size, err := r.u32("event size")
	if err != nil {
		return nil, err
	}
	if size > MaxEventDataSize {
		return nil, fmt.Errorf("event size %d exceeds limit %d", size, MaxEventDataSize)
	}
	data, err := r.take(int(size), "event data")
	if err != nil {
		return nil, err
	}

	d := &reader{buf: data, eof: errSpecIDShort}
	short := func(err error) error { return fmt.Errorf("event size %d: %w", size, err) }
	sig, err := d.take(len(specIDSignature), "signature")
	if err != nil {
		return nil, short(err)
	}
	if string(sig) != specIDSignature {
		return nil, fmt.Errorf("signature %q, want %q", sig, specIDSignature)
	}
	if _, err := d.take(4+1, "platformClass and specVersionMinor"); err != nil {
		return nil, short(err)
	}
	major, err := d.u8("specVersionMajor")
	if err != nil {
		return nil, short(err)
	}
	if major != 2 {
		return nil, fmt.Errorf("specVersionMajor %d, want 2", major)
	}
	if _, err := d.u8("specErrata"); err != nil {
		return nil, short(err)
	}
	uintnSize, err := d.u8("uintnSize")
	if err != nil {
		return nil, short(err)
	}
	if uintnSize != 1 && uintnSize != 2 {
		return nil, fmt.Errorf("uintnSize %d, want 1 or 2", uintnSize)
	}
	n, err := d.u32("numberOfAlgorithms")
	if err != nil {
		return nil, short(err)
	}
	if n < 1 || n > MaxAlgorithms {
		return nil, fmt.Errorf("numberOfAlgorithms %d out of range [1, %d]", n, MaxAlgorithms)
	}
	algs := make([]algorithm, 0, n)
	hasSHA256 := false
	for j := range int(n) {
		id, err := d.u16(fmt.Sprintf("algorithm %d ID", j))
		if err != nil {
			return nil, short(err)
		}
		sz, err := d.u16(fmt.Sprintf("algorithm %d digest size", j))
		if err != nil {
			return nil, short(err)
		}
		if want, ok := algSizes[id]; ok && int(sz) != want {
			return nil, fmt.Errorf("algorithm %s declared with digest size %d, want %d", algName(id), sz, want)
		}
		if sz == 0 || sz > MaxDigestSize {
			return nil, fmt.Errorf("algorithm %s declared with digest size %d, want 1 to %d", algName(id), sz, MaxDigestSize)
		}
		if findAlg(algs, id) >= 0 {
			return nil, fmt.Errorf("algorithm %s declared twice", algName(id))
		}
		hasSHA256 = hasSHA256 || id == algSHA256
		algs = append(algs, algorithm{id: id, size: int(sz)})
	}
	if !hasSHA256 {
		return nil, fmt.Errorf("SHA-256 (0x%04x) not declared", algSHA256)
	}
	vendorSize, err := d.u8("vendorInfoSize")
	if err != nil {
		return nil, short(err)
	}
	if _, err := d.take(int(vendorSize), "vendorInfo"); err != nil {
		return nil, short(err)
	}
	if d.off != len(d.buf) {
		return nil, fmt.Errorf("event size %d does not match Spec ID event structure (%d bytes)", size, d.off)
	}
	return algs, nil
}

func findAlg(algs []algorithm, id uint16) int {
	for i, a := range algs {
		if a.id == id {
			return i
		}
	}
	return -1
}

// parseEvent parses one TCG_PCR_EVENT2.
func parseEvent(r *reader, algs []algorithm) (Event, error) {
	var e Event
	pcr, err := r.u32("PCR index")
	if err != nil {
		return e, err
	}
	typ, err := r.u32("event type")
	if err != nil {
		return e, err
	}
	e.PCR, e.Type = pcr, EventType(typ)
	if e.Type != NoAction && e.PCR >= NumPCRs {
		return e, fmt.Errorf("PCR index %d out of range [0, %d) for %v", e.PCR, NumPCRs, e.Type)
	}
	count, err := r.u32("digest count")
	if err != nil {
		return e, err
	}
	if count != uint32(len(algs)) {
		return e, fmt.Errorf("digest count %d, header declares %d algorithms", count, len(algs))
	}
	seen := make([]bool, len(algs))
	for j := range len(algs) {
		id, err := r.u16(fmt.Sprintf("digest %d algorithm", j))
		if err != nil {
			return e, err
		}
		k := findAlg(algs, id)
		if k < 0 {
			return e, fmt.Errorf("digest %d: algorithm %s not declared in header", j, algName(id))
		}
		if seen[k] {
			return e, fmt.Errorf("digest %d: algorithm %s appears twice", j, algName(id))
		}
		seen[k] = true
		d, err := r.take(algs[k].size, fmt.Sprintf("digest %d (%s)", j, algName(id)))
		if err != nil {
			return e, err
		}
		if id == algSHA256 {
			copy(e.Digest[:], d)
		}
	}
	size, err := r.u32("event size")
	if err != nil {
		return e, err
	}
	if size > MaxEventDataSize {
		return e, fmt.Errorf("event size %d exceeds limit %d", size, MaxEventDataSize)
	}
	data, err := r.take(int(size), "event data")
	if err != nil {
		return e, err
	}
	if len(data) > 0 {
		e.Data = data
	}
	return e, nil
}

// Builder writes a log in the format [Parse] reads, declaring only SHA-256 in
// the Spec ID header. It does not validate its input: appending an event that
// Parse rejects (e.g. PCR index 24) yields a log that Parse rejects.
// The zero value is ready to use.
type Builder struct {
	events []Event
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder { return &Builder{} }

// Append appends an event whose digest is SHA-256(data) and returns it.
func (b *Builder) Append(pcr uint32, typ EventType, data []byte) Event {
	return b.AppendDigest(pcr, typ, sha256.Sum256(data), data)
}

// AppendDigest appends an event with the given digest and returns it. The
// data is copied.
func (b *Builder) AppendDigest(pcr uint32, typ EventType, digest [32]byte, data []byte) Event {
	e := Event{Seq: len(b.events), PCR: pcr, Type: typ, Digest: digest}
	if len(data) > 0 {
		e.Data = bytes.Clone(data)
	}
	b.events = append(b.events, e)
	return cloneEvent(e)
}

// Events returns a copy of the events appended so far.
func (b *Builder) Events() []Event {
	out := make([]Event, len(b.events))
	for i, e := range b.events {
		out[i] = cloneEvent(e)
	}
	return out
}

func cloneEvent(e Event) Event {
	e.Data = bytes.Clone(e.Data)
	return e
}

// Bytes returns the encoded log: the Spec ID header followed by the events.
func (b *Builder) Bytes() []byte {
	var spec []byte
	spec = append(spec, specIDSignature...)
	spec = binary.LittleEndian.AppendUint32(spec, 0) // platformClass
	spec = append(spec, 0, 2, 0, 2)                  // specVersionMinor, specVersionMajor, specErrata, uintnSize
	spec = binary.LittleEndian.AppendUint32(spec, 1) // numberOfAlgorithms
	spec = binary.LittleEndian.AppendUint16(spec, algSHA256)
	spec = binary.LittleEndian.AppendUint16(spec, sha256.Size)
	spec = append(spec, 0) // vendorInfoSize

	var out []byte
	out = binary.LittleEndian.AppendUint32(out, 0)
	out = binary.LittleEndian.AppendUint32(out, uint32(NoAction))
	out = append(out, make([]byte, 20)...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(spec)))
	out = append(out, spec...)
	for _, e := range b.events {
		out = binary.LittleEndian.AppendUint32(out, e.PCR)
		out = binary.LittleEndian.AppendUint32(out, uint32(e.Type))
		out = binary.LittleEndian.AppendUint32(out, 1)
		out = binary.LittleEndian.AppendUint16(out, algSHA256)
		out = append(out, e.Digest[:]...)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(e.Data)))
		out = append(out, e.Data...)
	}
	return out
}

// String returns a one-line rendering of the event for logs and operators.
func (e Event) String() string {
	return fmt.Sprintf("#%d PCR[%d] %v sha256:%x %s", e.Seq, e.PCR, e.Type, e.Digest, e.Description())
}
