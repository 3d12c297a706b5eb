package eventlog

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// alg is a digest algorithm declaration of a hand-built Spec ID header.
type alg struct{ id, size uint16 }

// hdr describes a hand-built Spec ID header; the zero value plus algs is valid.
type hdr struct {
	pcr, typ  uint32
	digest    [20]byte
	sig       string
	major     uint8
	uintn     uint8
	nalgs     *uint32 // overrides len(algs)
	algs      []alg
	vendor    []byte
	sizeDelta int // added to the declared event size (positive: that many extra bytes)
}

func (h hdr) bytes() []byte {
	if h.sig == "" {
		h.sig = specIDSignature
	}
	if h.major == 0 {
		h.major = 2
	}
	if h.uintn == 0 {
		h.uintn = 2
	}
	if h.typ == 0 {
		h.typ = uint32(NoAction)
	}
	n := uint32(len(h.algs))
	if h.nalgs != nil {
		n = *h.nalgs
	}
	le := binary.LittleEndian
	spec := []byte(h.sig)
	spec = le.AppendUint32(spec, 0)
	spec = append(spec, 0, h.major, 0, h.uintn)
	spec = le.AppendUint32(spec, n)
	for _, a := range h.algs {
		spec = le.AppendUint16(spec, a.id)
		spec = le.AppendUint16(spec, a.size)
	}
	spec = append(spec, byte(len(h.vendor)))
	spec = append(spec, h.vendor...)
	out := le.AppendUint32(nil, h.pcr)
	out = le.AppendUint32(out, h.typ)
	out = append(out, h.digest[:]...)
	out = le.AppendUint32(out, uint32(len(spec)+h.sizeDelta))
	out = append(out, spec...)
	return append(out, make([]byte, max(h.sizeDelta, 0))...) // the extra bytes are inside the declared size
}

// digest is one entry of a hand-built TPML_DIGEST_VALUES.
type digest struct {
	alg uint16
	sum []byte
}

func event2(pcr uint32, typ EventType, digests []digest, data []byte) []byte {
	le := binary.LittleEndian
	out := le.AppendUint32(nil, pcr)
	out = le.AppendUint32(out, uint32(typ))
	out = le.AppendUint32(out, uint32(len(digests)))
	for _, d := range digests {
		out = le.AppendUint16(out, d.alg)
		out = append(out, d.sum...)
	}
	out = le.AppendUint32(out, uint32(len(data)))
	return append(out, data...)
}

var (
	sha256Only = []alg{{algSHA256, 32}}
	sha1And256 = []alg{{algSHA1, 20}, {algSHA256, 32}}
)

func sha256Digest(data []byte) []digest {
	s := sha256.Sum256(data)
	return []digest{{algSHA256, s[:]}}
}

func bothDigests(data []byte) []digest {
	s1, s256 := sha1.Sum(data), sha256.Sum256(data)
	return []digest{{algSHA1, s1[:]}, {algSHA256, s256[:]}}
}

func startupLocalityData(loc byte) []byte { return append([]byte(startupLocalitySignature), loc) }

// multiBankLog returns a SHA-1 + SHA-256 log with vendor info and the events
// it should parse to.
func multiBankLog() ([]byte, []Event) {
	raw := hdr{algs: sha1And256, vendor: []byte("vendor"), uintn: 1}.bytes()
	var want []Event
	add := func(pcr uint32, typ EventType, ds []digest, data []byte) {
		raw = append(raw, event2(pcr, typ, ds, data)...)
		e := Event{Seq: len(want), PCR: pcr, Type: typ, Data: data}
		for _, d := range ds {
			if d.alg == algSHA256 {
				copy(e.Digest[:], d.sum)
			}
		}
		want = append(want, e)
	}
	add(0, NoAction, bothDigests(nil), startupLocalityData(3))
	add(0, SCRTMVersion, bothDigests([]byte("firmware 1.0\x00")), []byte("firmware 1.0\x00"))
	// Digests in reverse order of declaration are allowed.
	d := bothDigests([]byte{0, 0, 0, 0})
	add(7, Separator, []digest{d[1], d[0]}, []byte{0, 0, 0, 0})
	add(4, EFIBootServicesApplication, bothDigests([]byte("image")), bytes.Repeat([]byte{0xAB}, 40))
	add(0xFFFFFFFF, NoAction, bothDigests(nil), nil)
	return raw, want
}

// sampleBuilder returns a Builder with a few events, including a
// StartupLocality event of locality 3.
func sampleBuilder() *Builder {
	b := NewBuilder()
	b.Append(0, NoAction, startupLocalityData(3))
	b.Append(0, SCRTMVersion, []byte("constellation-local\x00"))
	b.AppendDigest(4, IPL, sha256.Sum256([]byte("node image")), []byte("image"))
	b.Append(9, EventTag, []byte("console=ttyS0 root=/dev/vda"))
	b.Append(0, Separator, []byte{0, 0, 0, 0})
	b.Append(8, CompactHash, nil)
	return b
}

func TestRoundTrip(t *testing.T) {
	for _, b := range []*Builder{NewBuilder(), sampleBuilder()} {
		events, err := Parse(b.Bytes())
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		if want := b.Events(); !reflect.DeepEqual(events, want) && len(want)+len(events) > 0 {
			t.Fatalf("Parse(Builder.Bytes()) = %v, want %v", events, want)
		}
	}
}

func TestBuilderCopies(t *testing.T) {
	b := NewBuilder()
	data := []byte("abc")
	e := b.Append(1, Action, data)
	data[0], e.Data[1] = 'x', 'y'
	if got := b.Events()[0].Data; string(got) != "abc" {
		t.Fatalf("builder data aliased: %q", got)
	}
	if e.Seq != 0 || b.Append(1, Action, nil).Seq != 1 {
		t.Fatal("wrong Seq")
	}
}

func TestParseDoesNotAlias(t *testing.T) {
	raw := sampleBuilder().Bytes()
	events, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := string(events[1].Data)
	for i := range raw {
		raw[i] = 0xFF
	}
	if string(events[1].Data) != want {
		t.Fatal("parsed event data aliases the input")
	}
}

func TestReplay(t *testing.T) {
	extend := func(pcr [32]byte, d [32]byte) [32]byte { return sha256.Sum256(append(pcr[:], d[:]...)) }
	d1, d2, d3 := sha256.Sum256([]byte("crtm")), sha256.Sum256([]byte{0, 0, 0, 0}), sha256.Sum256([]byte("kernel"))

	b := NewBuilder()
	b.Append(0, NoAction, startupLocalityData(3))
	b.AppendDigest(0, SCRTMContents, d1, nil)
	b.AppendDigest(0, Separator, d2, []byte{0, 0, 0, 0})
	b.AppendDigest(4, IPL, d3, []byte("kernel"))
	b.Append(7, NoAction, []byte("ignored"))
	events, err := Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}

	var pcr0, pcr4 [32]byte
	pcr0[31] = 3
	pcr0 = extend(extend(pcr0, d1), d2)
	pcr4 = extend(pcr4, d3)
	want := map[uint32][32]byte{0: pcr0, 4: pcr4}
	if got := Replay(events); !reflect.DeepEqual(got, want) {
		t.Fatalf("Replay = %x, want %x", got, want)
	}

	// Without StartupLocality PCR 0 starts at zero.
	var zero [32]byte
	if got := Replay(events[1:2])[0]; got != extend(zero, d1) {
		t.Fatalf("Replay without StartupLocality: PCR 0 = %x", got)
	}
	// A StartupLocality event after PCR 0 was extended is ignored.
	late := []Event{events[1], events[0]}
	if got := Replay(late)[0]; got != extend(zero, d1) {
		t.Fatalf("Replay with late StartupLocality: PCR 0 = %x", got)
	}
	if got := Replay(nil); len(got) != 0 {
		t.Fatalf("Replay(nil) = %v", got)
	}
}

func TestMultiBank(t *testing.T) {
	raw, want := multiBankLog()
	events, err := Parse(raw)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !reflect.DeepEqual(events, want) {
		t.Fatalf("Parse = %v, want %v", events, want)
	}
	var init [32]byte
	init[31] = 3
	pcr0 := sha256.Sum256(append(init[:], want[1].Digest[:]...))
	if got := Replay(events)[0]; got != pcr0 {
		t.Fatalf("PCR 0 = %x, want %x", got, pcr0)
	}
}

// boundaries returns the offsets at which a log may end: after the header and
// after each event.
func boundaries(t *testing.T, raw []byte) map[int]int {
	t.Helper()
	r := &reader{buf: raw, eof: ErrTruncated}
	algs, err := parseHeader(r)
	if err != nil {
		t.Fatal(err)
	}
	ends := map[int]int{r.off: 0}
	for i := 1; r.off < len(raw); i++ {
		if _, err := parseEvent(r, algs); err != nil {
			t.Fatal(err)
		}
		ends[r.off] = i
	}
	return ends
}

func TestTruncation(t *testing.T) {
	multi, _ := multiBankLog()
	for name, raw := range map[string][]byte{"builder": sampleBuilder().Bytes(), "multi-bank": multi} {
		t.Run(name, func(t *testing.T) {
			ends := boundaries(t, raw)
			full, err := Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			headerEnd, cur := len(raw), 0
			for off := range ends {
				headerEnd = min(headerEnd, off)
			}
			for n := range len(raw) {
				events, err := Parse(raw[:n])
				if k, ok := ends[n]; ok {
					// A cut at an event boundary is a shorter valid log.
					if err != nil || !reflect.DeepEqual(events, full[:k]) && k > 0 {
						t.Fatalf("prefix %d (end of event %d): %v, %v", n, k-1, events, err)
					}
					cur = k
					continue
				}
				if err == nil {
					t.Fatalf("prefix %d of %d: no error", n, len(raw))
				}
				switch {
				case n == 0:
					if !strings.Contains(err.Error(), "empty log") {
						t.Fatalf("prefix 0: %v", err)
					}
				case !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "reading "):
					t.Fatalf("prefix %d: %v, want truncation", n, err)
				case n < headerEnd && !strings.HasPrefix(err.Error(), "spec ID event: "),
					n > headerEnd && !strings.HasPrefix(err.Error(), fmt.Sprintf("event %d: ", cur)):
					t.Fatalf("prefix %d: %v, want error locating event %d", n, err, cur)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	valid := hdr{algs: sha256Only}.bytes()
	ev := func(raw []byte, events ...[]byte) []byte { return append(bytes.Clone(raw), bytes.Join(events, nil)...) }
	sep := []byte{0, 0, 0, 0}
	hugeSize := event2(1, IPL, sha256Digest(nil), nil)
	binary.LittleEndian.PutUint32(hugeSize[len(hugeSize)-4:], 0xFFFFFFFF)
	overLimit := event2(1, IPL, sha256Digest(nil), nil)
	binary.LittleEndian.PutUint32(overLimit[len(overLimit)-4:], MaxEventDataSize+1)
	overLimit = append(overLimit, make([]byte, MaxEventDataSize+1)...)
	var nonzero [20]byte
	nonzero[19] = 1
	one := event2(1, IPL, sha256Digest(nil), nil)
	tooMany := ev(valid, bytes.Repeat(one, MaxEvents+1))

	tests := []struct {
		name, want string
		raw        []byte
	}{
		{"empty", "empty log", nil},
		{"too large", "log size 16777217 exceeds limit", make([]byte, MaxLogSize+1)},
		{"header PCR", "spec ID event: PCR index 1, want 0", hdr{pcr: 1, algs: sha256Only}.bytes()},
		{"header type", "event type EV_IPL, want EV_NO_ACTION", hdr{typ: uint32(IPL), algs: sha256Only}.bytes()},
		{"header digest", "header digest is not zero", hdr{digest: nonzero, algs: sha256Only}.bytes()},
		{"signature", `signature "Spec ID Event02\x00"`, hdr{sig: "Spec ID Event02\x00", algs: sha256Only}.bytes()},
		{"spec version", "specVersionMajor 1, want 2", hdr{major: 1, algs: sha256Only}.bytes()},
		{"uintnSize", "uintnSize 3", hdr{uintn: 3, algs: sha256Only}.bytes()},
		{"no algorithms", "numberOfAlgorithms 0 out of range", hdr{nalgs: u32(0)}.bytes()},
		{"huge numberOfAlgorithms", "numberOfAlgorithms 4294967295 out of range", hdr{nalgs: u32(0xFFFFFFFF), algs: sha256Only}.bytes()},
		{"9 algorithms", "numberOfAlgorithms 9 out of range", hdr{nalgs: u32(9), algs: sha256Only}.bytes()},
		{"numberOfAlgorithms beyond event", "declared event size too small", hdr{nalgs: u32(2), algs: sha256Only}.bytes()},
		{"SHA-256 not declared", "SHA-256 (0x000b) not declared", hdr{algs: []alg{{algSHA1, 20}}}.bytes()},
		{"SHA-256 wrong size", "SHA256 (0x000b) declared with digest size 20, want 32", hdr{algs: []alg{{algSHA256, 20}}}.bytes()},
		{"SHA-1 wrong size", "SHA1 (0x0004) declared with digest size 32, want 20", hdr{algs: []alg{{algSHA1, 32}, {algSHA256, 32}}}.bytes()},
		{"unknown alg huge size", "0x0099 declared with digest size 65535", hdr{algs: []alg{{0x99, 0xFFFF}, {algSHA256, 32}}}.bytes()},
		{"duplicate algorithm", "SHA256 (0x000b) declared twice", hdr{algs: []alg{{algSHA256, 32}, {algSHA256, 32}}}.bytes()},
		{"header size too big", "does not match Spec ID event structure", hdr{algs: sha256Only, sizeDelta: 1}.bytes()},
		{"header size too small", "declared event size too small", hdr{algs: sha256Only, vendor: []byte("v"), sizeDelta: -1}.bytes()},
		{"digest count", "event 1: digest count 1, header declares 2 algorithms",
			ev(hdr{algs: sha1And256}.bytes(), event2(0, Separator, bothDigests(sep), sep), event2(0, Separator, sha256Digest(sep), sep))},
		{"digest count huge", "event 0: digest count 4294967295",
			ev(valid, binary.LittleEndian.AppendUint32(make([]byte, 8), 0xFFFFFFFF))},
		{"undeclared algorithm", "event 0: digest 0: algorithm SHA1 (0x0004) not declared in header",
			ev(valid, event2(0, Separator, bothDigests(sep)[:1], sep))},
		{"duplicate digest", "event 0: digest 1: algorithm SHA256 (0x000b) appears twice",
			ev(hdr{algs: sha1And256}.bytes(), event2(0, Separator, append(sha256Digest(sep), sha256Digest(sep)...), sep))},
		{"PCR 24", "event 0: PCR index 24 out of range", ev(valid, event2(24, IPL, sha256Digest(nil), nil))},
		{"event size 0xFFFFFFFF", "event 0: event size 4294967295 exceeds limit", ev(valid, hugeSize)},
		{"event size over limit", "event 0: event size 1048577 exceeds limit", ev(valid, overLimit)},
		{"event data truncated", "event 1: reading event data: log truncated",
			ev(valid, one, event2(1, IPL, sha256Digest(nil), []byte("abc"))[:50])},
		{"too many events", "event 100000: more than 100000 events", tooMany},
		{"StartupLocality PCR", "event 0: malformed StartupLocality event (PCR 1",
			ev(valid, event2(1, NoAction, sha256Digest(nil), startupLocalityData(0)))},
		{"StartupLocality size", "event 0: malformed StartupLocality event (PCR 0, 18 data bytes",
			ev(valid, event2(0, NoAction, sha256Digest(nil), append(startupLocalityData(0), 0)))},
		{"StartupLocality value", "event 0: StartupLocality 5 out of range",
			ev(valid, event2(0, NoAction, sha256Digest(nil), startupLocalityData(5)))},
		{"StartupLocality twice", "event 1: duplicate StartupLocality event",
			ev(valid, event2(0, NoAction, sha256Digest(nil), startupLocalityData(3)), event2(0, NoAction, sha256Digest(nil), startupLocalityData(3)))},
		{"StartupLocality late", "event 1: StartupLocality event after PCR 0 was extended",
			ev(valid, event2(0, Separator, sha256Digest(sep), sep), event2(0, NoAction, sha256Digest(nil), startupLocalityData(3)))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			events, err := Parse(tc.raw)
			if err == nil {
				t.Fatalf("Parse succeeded with %d events, want error containing %q", len(events), tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestHugeEventSizeDoesNotAllocate(t *testing.T) {
	raw := append(hdr{algs: sha256Only}.bytes(), event2(1, IPL, sha256Digest(nil), nil)...)
	binary.LittleEndian.PutUint32(raw[len(raw)-4:], 0xFFFFFFF0)
	raw = append(raw, make([]byte, 100)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := Parse(raw); err == nil {
		t.Fatal("no error")
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Fatalf("Parse allocated %d bytes", n)
	}
}

func TestNoActionAnyPCR(t *testing.T) {
	raw := append(hdr{algs: sha256Only}.bytes(), event2(0xFFFFFFFF, NoAction, sha256Digest(nil), []byte("info"))...)
	events, err := Parse(raw)
	if err != nil || len(events) != 1 || events[0].PCR != 0xFFFFFFFF {
		t.Fatalf("Parse = %v, %v", events, err)
	}
	if got := Replay(events); len(got) != 0 {
		t.Fatalf("NoAction event was extended: %v", got)
	}
}

func TestEventTypeString(t *testing.T) {
	for typ, want := range map[EventType]string{
		IPL: "EV_IPL", NoAction: "EV_NO_ACTION", PrebootCert: "EV_PREBOOT_CERT", EFIVariableAuthority: "EV_EFI_VARIABLE_AUTHORITY",
		0x2: "EV_UNKNOWN(0x2)", 0x80001234: "EV_UNKNOWN(0x80001234)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("EventType(0x%x).String() = %q, want %q", uint32(typ), got, want)
		}
	}
}

func TestDescription(t *testing.T) {
	long := sha256.Sum256(bytes.Repeat([]byte{1}, 33))
	tests := []struct {
		data []byte
		want string
	}{
		{nil, "<empty>"},
		{[]byte("grub_cmd: linux /vmlinuz\x00"), "grub_cmd: linux /vmlinuz"},
		{[]byte("\x00\x00"), "<2 bytes: 0000>"},
		{[]byte("\x1b[31mred"), "<8 bytes: 1b5b33316d726564>"},
		{[]byte("a\u202eb"), "<5 bytes: 61e280ae62>"},
		{bytes.Repeat([]byte{1}, 33), fmt.Sprintf("<33 bytes, sha256:%x>", long)},
	}
	for _, tc := range tests {
		if got := (Event{Data: tc.data}).Description(); got != tc.want {
			t.Errorf("Description(%q) = %q, want %q", tc.data, got, tc.want)
		}
	}
	text := strings.Repeat("ä", 300)
	got := Event{Data: []byte(text)}.Description()
	if len(got) > maxDescription || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("long text description: %d bytes, %q", len(got), got)
	}
}

func TestDigestMatchesData(t *testing.T) {
	b := NewBuilder()
	if !b.Append(1, IPL, []byte("x")).DigestMatchesData() {
		t.Error("Append digest does not match data")
	}
	if b.AppendDigest(1, IPL, [32]byte{1}, []byte("x")).DigestMatchesData() {
		t.Error("arbitrary digest matches data")
	}
}

// TestRealLog parses this machine's firmware log, if there is one.
func TestRealLog(t *testing.T) {
	raw, err := os.ReadFile("/sys/kernel/security/tpm0/binary_bios_measurements")
	if err != nil {
		t.Skipf("no firmware event log: %v", err)
	}
	events, err := Parse(raw)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(events) == 0 {
		t.Fatal("no events")
	}
	for pcr, v := range Replay(events) {
		t.Logf("PCR[%d] = %x", pcr, v)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(NewBuilder().Bytes())
	f.Add(sampleBuilder().Bytes())
	multi, _ := multiBankLog()
	f.Add(multi)
	f.Fuzz(func(t *testing.T, raw []byte) {
		events, err := Parse(raw)
		if err != nil {
			return
		}
		for _, e := range events {
			_ = e.Description()
		}
		_ = Replay(events)
		b := NewBuilder()
		for _, e := range events {
			b.AppendDigest(e.PCR, e.Type, e.Digest, e.Data)
		}
		again, err := Parse(b.Bytes())
		if err != nil {
			t.Fatalf("re-encoded log does not parse: %v", err)
		}
		if len(again) != len(events) {
			t.Fatalf("re-encoded log has %d events, want %d", len(again), len(events))
		}
		for i := range events {
			if !reflect.DeepEqual(again[i], events[i]) {
				t.Fatalf("event %d: re-encoded %v, want %v", i, again[i], events[i])
			}
		}
		if err := CheckData(events, TCGScheme); err != nil {
			if !errors.Is(err, ErrData) {
				t.Fatalf("CheckData error %v does not wrap ErrData", err)
			}
			return
		}
		for _, e := range events {
			if e.Binding != Unbound && !e.DigestMatchesData() {
				t.Fatalf("event %d bound with a digest that is not its data's hash", e.Seq)
			}
			if x := e.Explain(); strings.ContainsFunc(x, func(r rune) bool { return !unicode.IsPrint(r) }) || (e.Binding == Unbound && !strings.Contains(x, "(unverified)")) {
				t.Fatalf("Explain = %q", x)
			}
		}
	})
}

// The TCG scheme binds the data of the events the firmware profile defines as hashes of their data, and
// nothing of the others; CheckData refuses altered data of the first and Explain marks the second.
func TestCheckDataTCG(t *testing.T) {
	b := NewBuilder()
	b.Append(0, SCRTMVersion, []byte("firmware 1.0"))
	b.AppendDigest(4, EFIBootServicesApplication, sha256.Sum256([]byte("the PE image")), []byte("\\EFI\\BOOT\\BOOTX64.EFI"))
	b.Append(4, Separator, []byte{0, 0, 0, 0})
	events := b.Events()
	if err := CheckData(events, TCGScheme); err != nil {
		t.Fatal(err)
	}
	want := []string{"EV_S_CRTM_VERSION (type unverified): firmware 1.0", "EV_EFI_BOOT_SERVICES_APPLICATION (unverified): \\EFI\\BOOT\\BOOTX64.EFI", "EV_SEPARATOR (type unverified): <4 bytes: 00000000>"}
	for i, e := range events {
		if got := e.Explain(); got != want[i] {
			t.Errorf("event %d: Explain = %q, want %q", i, got, want[i])
		}
	}
	// Another version string with the genuine digest: refused, and no binding changes.
	altered := b.Events()
	altered[0].Data = []byte("firmware 2.0")
	if err := CheckData(altered, TCGScheme); !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "event 0") {
		t.Fatalf("altered version: %v", err)
	}
	if altered[2].Binding != Unbound {
		t.Error("a refused log got bindings")
	}
	// Another file name of the boot application is not bound, so it is accepted but unverified.
	other := b.Events()
	other[1].Data = []byte("\\EFI\\OTHER.EFI")
	if err := CheckData(other, TCGScheme); err != nil || !strings.Contains(other[1].Explain(), "(unverified)") {
		t.Fatalf("unbound data: %v, %q", err, other[1].Explain())
	}
}

func TestResetValue(t *testing.T) {
	for pcr := uint32(0); pcr < NumPCRs; pcr++ {
		v := ResetValue(pcr)
		want := byte(0)
		if pcr >= 17 && pcr <= 22 {
			want = 0xff
		}
		if v[0] != want || v[31] != want {
			t.Errorf("PCR %d: reset value %x", pcr, v)
		}
	}
}
