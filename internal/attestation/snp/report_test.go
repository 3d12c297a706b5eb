package snp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	sevabi "github.com/google/go-sev-guest/abi"
)

func TestParseGenuineReport(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	r, err := ParseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != 2 || r.VMPL != 0 || r.SigningKey != SignedByVCEK || r.SignatureAlgo != 1 {
		t.Errorf("version %d, VMPL %d, signer %v, algo %d", r.Version, r.VMPL, r.SigningKey, r.SignatureAlgo)
	}
	if !r.Policy.Debug() || !r.Policy.SMT() || r.Policy.MigrateMA() || !r.PlatformInfo.SMTEnabled() {
		t.Errorf("guest policy 0x%x, platform info 0x%x", uint64(r.Policy), uint64(r.PlatformInfo))
	}
	if !bytes.Equal(r.ReportData[:5], []byte{1, 2, 3, 4, 5}) || !isZero(r.ReportData[5:]) {
		t.Errorf("REPORT_DATA %x", r.ReportData)
	}
	if got := hex.EncodeToString(r.Measurement[:4]); got != "b07af962" {
		t.Errorf("measurement starts with %s", got)
	}
	tcb, err := DecodeTCB(Milan, r.ReportedTCB)
	if err != nil {
		t.Fatal(err)
	}
	if want := (TCB{Bootloader: 2, TEE: 0, SNP: 5, Microcode: 68}); tcb != want {
		t.Errorf("reported TCB %v, want %v", tcb, want)
	}
	if !bytes.Equal(r.Raw(), raw) {
		t.Error("Raw does not return the parsed bytes")
	}
}

// TestParseReportAgreesWithGoSevGuest compares every field with the parser of the go-sev-guest project, on
// the genuine report and on reports of every version this package builds.
func TestParseReportAgreesWithGoSevGuest(t *testing.T) {
	inputs := map[string][]byte{"genuine": readTestdata(t, "attestation.bin")}
	for _, v := range []uint32{2, 3, 5} {
		o := reportOptions{version: v, product: Genoa, tcb: defaultTestTCB, measurement: [48]byte{1, 2, 3}, reportData: [64]byte{9}}
		inputs["v"+string(rune('0'+v))] = signReport(t, buildReport(t, o), mustP384(t))
	}
	for name, raw := range inputs {
		t.Run(name, func(t *testing.T) {
			ours, err := ParseReport(raw)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := sevabi.ReportToProto(raw)
			if err != nil {
				t.Fatal(err)
			}
			checkEqual(t, "version", ours.Version, theirs.Version)
			checkEqual(t, "guest SVN", ours.GuestSVN, theirs.GuestSvn)
			checkEqual(t, "policy", uint64(ours.Policy), theirs.Policy)
			checkEqual(t, "VMPL", ours.VMPL, theirs.Vmpl)
			checkEqual(t, "current TCB", uint64(ours.CurrentTCB), theirs.CurrentTcb)
			checkEqual(t, "reported TCB", uint64(ours.ReportedTCB), theirs.ReportedTcb)
			checkEqual(t, "committed TCB", uint64(ours.CommittedTCB), theirs.CommittedTcb)
			checkEqual(t, "launch TCB", uint64(ours.LaunchTCB), theirs.LaunchTcb)
			checkEqual(t, "platform info", uint64(ours.PlatformInfo), theirs.PlatformInfo)
			checkEqual(t, "current build", uint32(ours.CurrentBuild), theirs.CurrentBuild)
			checkEqual(t, "committed major", uint32(ours.CommittedMajor), theirs.CommittedMajor)
			for _, f := range []struct {
				name        string
				ours, their []byte
			}{
				{"report data", ours.ReportData[:], theirs.ReportData},
				{"measurement", ours.Measurement[:], theirs.Measurement},
				{"host data", ours.HostData[:], theirs.HostData},
				{"ID key digest", ours.IDKeyDigest[:], theirs.IdKeyDigest},
				{"author key digest", ours.AuthorKeyDigest[:], theirs.AuthorKeyDigest},
				{"report ID", ours.ReportID[:], theirs.ReportId},
				{"chip ID", ours.ChipID[:], theirs.ChipId},
				{"family ID", ours.FamilyID[:], theirs.FamilyId},
			} {
				if !bytes.Equal(f.ours, f.their) {
					t.Errorf("%s: %x, go-sev-guest %x", f.name, f.ours, f.their)
				}
			}
			der, err := sevabi.ReportToSignatureDER(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(der, bytes.TrimLeft(ours.SignatureR[:], "\x00")) || !bytes.Contains(der, bytes.TrimLeft(ours.SignatureS[:], "\x00")) {
				t.Error("signature components differ from go-sev-guest's")
			}
		})
	}
}

func checkEqual[T comparable](t *testing.T, name string, ours, theirs T) {
	t.Helper()
	if ours != theirs {
		t.Errorf("%s: %v, go-sev-guest %v", name, ours, theirs)
	}
}

func TestParseReportTruncatedAndTrailing(t *testing.T) {
	raw := readTestdata(t, "attestation.bin")
	for _, n := range []int{0, 1, 4, 0x50, 0x2a0, ReportSize - 1} {
		_, err := ParseReport(raw[:n])
		if !errors.Is(err, ErrMalformedReport) || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("%d bytes: %v, want a truncation error", n, err)
		}
	}
	for _, extra := range [][]byte{{0}, bytes.Repeat([]byte{0xff}, 100)} {
		_, err := ParseReport(append(append([]byte(nil), raw...), extra...))
		if !errors.Is(err, ErrMalformedReport) || !strings.Contains(err.Error(), "trailing") {
			t.Errorf("%d extra bytes: %v, want a trailing-data error", len(extra), err)
		}
	}
}

func TestParseReportRejectsMalformedFields(t *testing.T) {
	genuine := readTestdata(t, "attestation.bin")
	le := binary.LittleEndian
	tests := map[string]struct {
		mutate func(b []byte)
		want   string
	}{
		"version 1":              {func(b []byte) { le.PutUint32(b, 1) }, "version 1"},
		"version 6":              {func(b []byte) { le.PutUint32(b, 6) }, "version 6"},
		"policy reserved bit":    {func(b []byte) { b[0x0a] &^= 0x02 }, "reserved bit 17"},
		"policy unknown bit":     {func(b []byte) { b[0x0f] = 0x80 }, "reserved bits above"},
		"VMPL 4":                 {func(b []byte) { le.PutUint32(b[0x30:], 4) }, "VMPL 4"},
		"signature algorithm":    {func(b []byte) { le.PutUint32(b[0x34:], 2) }, "signature algorithm 2"},
		"signer info reserved":   {func(b []byte) { b[0x48] = 0x20 }, "signer info"},
		"signing key reserved":   {func(b []byte) { b[0x48] = 3 << 2 }, "signing key 3"},
		"reserved after signer":  {func(b []byte) { b[0x4d] = 1 }, "0x4c-0x4f"},
		"reserved v2 CPUID":      {func(b []byte) { b[0x188] = 0x19 }, "0x188-0x19f"},
		"reserved after current": {func(b []byte) { b[0x1eb] = 1 }, "0x1eb"},
		"reserved after commit":  {func(b []byte) { b[0x1ef] = 1 }, "0x1ef"},
		"reserved v2 mitigation": {func(b []byte) { b[0x1f8] = 1 }, "0x1f8-0x29f"},
		"reserved before sig":    {func(b []byte) { b[0x29f] = 1 }, "0x29f"},
		"signature R too large":  {func(b []byte) { b[0x2a0+50] = 1 }, "signature R"},
		"signature S too large":  {func(b []byte) { b[0x2a0+72+71] = 1 }, "signature S"},
		"reserved after sig":     {func(b []byte) { b[ReportSize-1] = 1 }, "0x330-0x49f"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := append([]byte(nil), genuine...)
			tc.mutate(b)
			_, err := ParseReport(b)
			if !errors.Is(err, ErrMalformedReport) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an ErrMalformedReport naming %q", err, tc.want)
			}
		})
	}
}

func TestParseReportVersion5(t *testing.T) {
	o := reportOptions{version: 5, product: Turin, tcb: TCB{FMC: 1, Bootloader: 2, TEE: 3, SNP: 4, Microcode: 5}}
	b := buildReport(t, o)
	binary.LittleEndian.PutUint64(b[0x1f8:], 0x11)
	binary.LittleEndian.PutUint64(b[0x200:], 0x22)
	r, err := ParseReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.LaunchMitVector != 0x11 || r.CurrentMitVector != 0x22 || r.CPUIDFamily != 0x1a {
		t.Errorf("mitigation vectors %x %x, family %x", r.LaunchMitVector, r.CurrentMitVector, r.CPUIDFamily)
	}
	tcb, err := DecodeTCB(Turin, r.ReportedTCB)
	if err != nil || tcb != o.tcb {
		t.Errorf("Turin TCB %v (%v), want %v", tcb, err, o.tcb)
	}
}

func TestTCBLayouts(t *testing.T) {
	// Byte i of the raw value is i+1.
	raw := RawTCB(0x0807060504030201)
	milan, _ := DecodeTCB(Milan, raw)
	if want := (TCB{Bootloader: 1, TEE: 2, SNP: 7, Microcode: 8}); milan != want {
		t.Errorf("Milan layout %v, want %v", milan, want)
	}
	turin, _ := DecodeTCB(Turin, raw)
	if want := (TCB{FMC: 1, Bootloader: 2, TEE: 3, SNP: 4, Microcode: 8}); turin != want {
		t.Errorf("Turin layout %v, want %v", turin, want)
	}
	if _, err := DecodeTCB(ProductUnknown, raw); !errors.Is(err, ErrUnknownProduct) {
		t.Errorf("unknown product: %v", err)
	}
	if _, err := EncodeTCB(Genoa, TCB{FMC: 1}); err == nil {
		t.Error("Genoa TCB with FMC encoded")
	}
	for _, p := range Products() {
		tcb := TCB{Bootloader: 9, TEE: 8, SNP: 7, Microcode: 6}
		if p == Turin {
			tcb.FMC = 5
		}
		enc, err := EncodeTCB(p, tcb)
		if err != nil {
			t.Fatal(err)
		}
		if dec, _ := DecodeTCB(p, enc); dec != tcb {
			t.Errorf("%v: round trip %v, want %v", p, dec, tcb)
		}
	}
}

func TestProductFromCPUID(t *testing.T) {
	for _, tc := range []struct {
		family, model uint8
		want          Product
	}{{0x19, 0x01, Milan}, {0x19, 0x11, Genoa}, {0x19, 0xa0, Genoa}, {0x1a, 0x02, Turin}, {0x1a, 0x11, Turin}} {
		if got, err := productFromCPUID(tc.family, tc.model); err != nil || got != tc.want {
			t.Errorf("family %x model %x: %v %v, want %v", tc.family, tc.model, got, err, tc.want)
		}
	}
	for _, tc := range [][2]uint8{{0x17, 0x31}, {0x19, 0x21}, {0x1a, 0x44}, {0, 0}} {
		if _, err := productFromCPUID(tc[0], tc[1]); !errors.Is(err, ErrUnknownProduct) {
			t.Errorf("family %x model %x: %v, want ErrUnknownProduct", tc[0], tc[1], err)
		}
	}
}
