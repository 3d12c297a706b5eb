package measurements

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

var (
	hexA = strings.Repeat("aa", 32)
	hexB = strings.Repeat("bb", 32)
)

func TestParseJSONAndYAML(t *testing.T) {
	jsonIn := `{"4": {"expected": "` + hexA + `", "warnOnly": false}, "8": {"expected": "` + hexA + `"}, "9": {"expected": "` + hexB + `", "warnOnly": true}}`
	yamlIn := "4:\n  expected: " + hexA + "\n  warnOnly: false\n8:\n  expected: " + hexA + "\n9:\n  expected: \"" + hexB + "\"\n  warnOnly: true\n"
	for name, in := range map[string]string{"json": jsonIn, "yaml": yamlIn} {
		t.Run(name, func(t *testing.T) {
			m, err := Parse([]byte(in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(m) != 3 || m[4].Expected[0] != 0xaa || m[4].WarnOnly || m[8].WarnOnly || !m[9].WarnOnly || m[9].Expected[31] != 0xbb {
				t.Fatalf("unexpected policy %+v", m)
			}
			out, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse(out)
			if err != nil || len(again) != 3 || again[9] != m[9] {
				t.Fatalf("round trip: %v %+v", err, again)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := map[string]struct{ in, wantErr string }{
		"empty object":   {`{}`, "empty"},
		"empty input":    {``, "empty"},
		"short value":    {`{"4": {"expected": "aabb"}}`, "2 bytes"},
		"not hex":        {`{"4": {"expected": "` + strings.Repeat("zz", 32) + `"}}`, "not hex"},
		"missing value":  {`{"4": {"warnOnly": true}}`, "no expected value"},
		"unknown field":  {`{"4": {"expected": "` + hexA + `", "warn": true}}`, "unknown field"},
		"index range":    {`{"24": {"expected": "` + hexA + `"}}`, "out of range"},
		"index negative": {`{"-1": {"expected": "` + hexA + `"}}`, "not a decimal"},
		"leading zero":   {`{"04": {"expected": "` + hexA + `"}}`, "not a decimal"},
		"duplicate":      {`{"4": {"expected": "` + hexA + `"}, "4": {"expected": "` + hexB + `"}}`, "already set"},
		"not an object":  {`[1,2]`, "parsing measurements"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

// A policy that accepts any node image, or the genuine image booted with any boot parameters, is invalid, and
// Parse, Validate and Check refuse it with a reason.
func TestValidateRefusesAcceptAnyImage(t *testing.T) {
	var a Digest
	a[0] = 0xaa
	for name, tc := range map[string]struct {
		m    M
		want string
	}{
		"all warn-only":             {M{0: {Expected: a, WarnOnly: true}, 4: {Expected: a, WarnOnly: true}, 8: {Expected: a, WarnOnly: true}, 15: {WarnOnly: true}}, "every PCR is warn-only"},
		"image PCR missing":         {M{0: {Expected: a}, 8: {Expected: a}, 15: {}}, "PCR 4 missing"},
		"image PCR warn-only":       {M{0: {Expected: a}, 4: {Expected: a, WarnOnly: true}, 8: {Expected: a}}, "PCR 4 warn-only"},
		"boot-params PCR missing":   {M{0: {Expected: a}, 4: {Expected: a}, 15: {}}, "PCR 8 missing"},
		"boot-params PCR warn-only": {M{0: {Expected: a}, 4: {Expected: a}, 8: {Expected: a, WarnOnly: true}}, "PCR 8 warn-only"},
		"only PCR 4 enforced":       {M{4: {Expected: a}, 8: {Expected: a, WarnOnly: true}}, "PCR 8 warn-only"},
		"only PCR 8 enforced":       {M{4: {Expected: a, WarnOnly: true}, 8: {Expected: a}}, "PCR 4 warn-only"},
		"both missing":              {M{0: {Expected: a}, 15: {}}, "PCRs 4, 8 missing"},
		"both warn-only":            {M{0: {Expected: a}, 4: {Expected: a, WarnOnly: true}, 8: {Expected: a, WarnOnly: true}}, "PCRs 4, 8 warn-only"},
		"one missing one warn-only": {M{0: {Expected: a}, 8: {Expected: a, WarnOnly: true}}, "PCR 4 missing (add the expected value the node image presents); PCR 8 warn-only"},
		// The UEFI scheme: PCRs 4, 11, 12 and 13.
		"UEFI: UKI PCR missing":   {M{0: {Expected: a}, 4: {Expected: a}, 12: {}, 13: {}}, "PCR 11 missing"},
		"UEFI: UKI PCR warn-only": {M{4: {Expected: a}, 11: {Expected: a, WarnOnly: true}, 12: {}, 13: {}}, "PCR 11 warn-only"},
		"UEFI: ESP PCRs missing":  {M{4: {Expected: a}, 11: {Expected: a}}, "PCRs 12, 13 missing"},
		"UEFI: ESP PCR warn-only": {M{4: {Expected: a}, 11: {Expected: a}, 12: {}, 13: {WarnOnly: true}}, "PCR 13 warn-only"},
		"UEFI: image PCR missing": {M{0: {Expected: a}, 11: {Expected: a}, 12: {}, 13: {}}, "PCR 4 missing"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.m.Validate()
			if !errors.Is(err, ErrAcceptsAnyImage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrAcceptsAnyImage naming %q", err, tc.want)
			}
			raw, _ := json.Marshal(tc.m)
			if _, err := Parse(raw); !errors.Is(err, ErrAcceptsAnyImage) {
				t.Errorf("Parse = %v, want ErrAcceptsAnyImage", err)
			}
			// Evidence of any image and boot parameters: the policy must not even be checked.
			if _, err := tc.m.Check(map[uint32][]byte{4: make([]byte, 32), 8: make([]byte, 32)}); !errors.Is(err, ErrAcceptsAnyImage) {
				t.Errorf("Check = %v, want ErrAcceptsAnyImage", err)
			}
		})
	}
	uefi := M{0: {Expected: a}, 4: {Expected: a}, 11: {Expected: a}, 12: {}, 13: {}}
	if err := uefi.Validate(); err != nil {
		t.Errorf("a policy enforcing PCRs 4, 11, 12 and 13: %v", err)
	}
	// A policy of one scheme is not one of the other: the variant's entry points check its own scheme.
	if err := uefi.ValidateScheme(MiniScheme); !errors.Is(err, ErrAcceptsAnyImage) || !strings.Contains(err.Error(), "PCR 8 missing") {
		t.Errorf("a UEFI policy under the mini scheme: %v", err)
	}
	if err := (M{4: {Expected: a}, 8: {Expected: a}}).ValidateScheme(UEFIScheme); !errors.Is(err, ErrAcceptsAnyImage) || !strings.Contains(err.Error(), "PCRs 11, 12, 13 missing") {
		t.Errorf("a mini policy under the UEFI scheme: %v", err)
	}
	if err := (M{4: {Expected: a}, 8: {Expected: a}, 9: {Expected: a, WarnOnly: true}}).Validate(); err != nil {
		t.Errorf("a policy enforcing PCRs 4 and 8: %v", err)
	}
}

func TestCheck(t *testing.T) {
	var a, b Digest
	a[0], b[0] = 0xaa, 0xbb
	m := M{4: {Expected: a}, 8: {Expected: a}, 9: {Expected: a, WarnOnly: true}, 15: {Expected: b}}
	verified := map[uint32][]byte{4: a[:], 8: a[:], 9: b[:]} // 15 not covered
	mms, err := m.Check(verified)
	if err != nil {
		t.Fatal(err)
	}
	if len(mms) != 2 || mms[0].PCR != 9 || mms[1].PCR != 15 {
		t.Fatalf("mismatches = %+v, want PCRs 9 and 15", mms)
	}
	if mms[1].Covered() || !bytes.Equal(mms[0].Actual, b[:]) {
		t.Fatalf("unexpected mismatch details %+v", mms)
	}
	fatal := Fatal(mms)
	if len(fatal) != 1 || fatal[0].PCR != 15 {
		t.Fatalf("fatal = %+v, want only PCR 15", fatal)
	}
	if got := Summary(mms); got != "PCRs 9, 15" {
		t.Fatalf("Summary = %q", got)
	}
	if _, err := (M{}).Check(verified); !errors.Is(err, ErrEmptyPolicy) {
		t.Fatalf("empty policy: %v, want ErrEmptyPolicy", err)
	}
	if mms, _ := (M{4: {Expected: a}, 8: {Expected: a}}).Check(verified); len(mms) != 0 {
		t.Fatalf("matching policy reported %+v", mms)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"4": {"expected": "` + hexA + `", "warnOnly": false}, "8": {"expected": "` + hexA + `"}}`))
	f.Add([]byte("4:\n  expected: " + hexB + "\n8:\n  expected: " + hexB + "\n15:\n  expected: " + hexB + "\n"))
	f.Add([]byte(`{"4": {"expected": "` + hexA + `", "warnOnly": true}, "8": {"expected": "` + hexA + `"}}`))
	f.Add([]byte(`{"4": {"expected": "` + hexA + `"}, "8": {"expected": "` + hexA + `", "warnOnly": true}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := Parse(raw)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed policy does not validate: %v", err)
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse(out)
		if err != nil || len(again) != len(m) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

// In JSON (the wire form of the attestation policy), a PCR index or a field given twice would leave the
// choice of value to the decoder (encoding/json keeps the last); UnmarshalJSON refuses it.
func TestUnmarshalJSONRefusesRepeats(t *testing.T) {
	for name, in := range map[string]string{
		"index twice":         `{"4": {"expected": "` + hexA + `"}, "4": {"expected": "` + hexB + `"}}`,
		"field twice":         `{"4": {"expected": "` + hexA + `", "expected": "` + hexB + `"}}`,
		"field in other case": `{"4": {"expected": "` + hexA + `", "Expected": "` + hexB + `"}}`,
		"misspelled field":    `{"4": {"EXPECTED": "` + hexA + `"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			var m M
			if err := json.Unmarshal([]byte(in), &m); err == nil {
				t.Fatalf("json.Unmarshal accepted %s as %v", in, m)
			}
		})
	}
}
