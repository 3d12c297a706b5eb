package strictjson

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

type inner struct {
	Name string `json:"name"`
}

type embedded struct {
	Level int `json:"level"`
}

type doc struct {
	embedded
	Version int               `json:"version"`
	Inner   *inner            `json:"inner,omitempty"`
	List    []inner           `json:"list,omitempty"`
	Map     map[string]inner  `json:"map,omitempty"`
	Raw     json.RawMessage   `json:"raw,omitempty"`
	Any     any               `json:"any,omitempty"`
	Untag   string            // JSON name "Untag"
	Skip    string            `json:"-"`
	Hex     hexish            `json:"hex,omitempty"`
	Nums    map[string]uint32 `json:"nums,omitempty"`
}

// hexish decodes itself; its content is its own business.
type hexish []byte

func (h *hexish) UnmarshalJSON(b []byte) error { *h = append((*h)[:0], b...); return nil }

func TestDecode(t *testing.T) {
	in := `{"level":2,"version":1,"inner":{"name":"a"},"list":[{"name":"b"}],"map":{"k":{"name":"c"},"K":{"name":"d"}},` +
		`"raw":{"X":1,"y":[1]},"any":{"y":1},"Untag":"u","hex":"00ff","nums":{"1":1,"2":2}}`
	var d doc
	if err := Decode([]byte(in), &d, 1<<10); err != nil {
		t.Fatal(err)
	}
	if d.Level != 2 || d.Version != 1 || d.Inner.Name != "a" || d.List[0].Name != "b" || d.Map["K"].Name != "d" || d.Untag != "u" || string(d.Hex) != `"00ff"` {
		t.Fatalf("decoded %+v", d)
	}
}

// Each input is accepted by encoding/json with DisallowUnknownFields and a trailing-data check, but means
// something else to a reader that takes the first of two keys or matches keys exactly: Decode refuses it.
func TestDecodeRefuses(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"duplicate key":                {`{"version":1,"version":2}`, `key "version" twice`},
		"duplicate key in case":        {`{"version":1,"Version":2}`, `differ only in case`},
		"duplicate in nested object":   {`{"inner":{"name":"a","name":"b"}}`, `key "name" twice`},
		"duplicate in array element":   {`{"list":[{"name":"a"},{"name":"a","NAME":"b"}]}`, `differ only in case`},
		"duplicate map key":            {`{"nums":{"1":1,"1":2}}`, `key "1" twice`},
		"map keys differing in case":   {`{"map":{"k":{},"K":{},"k":{}}}`, `key "k" twice`},
		"duplicate in RawMessage":      {`{"raw":{"a":1,"a":2}}`, `key "a" twice`},
		"duplicate in interface":       {`{"any":{"a":1,"A":2}}`, `differ only in case`},
		"field in another case":        {`{"Version":1}`, `"Version" must be spelled "version"`},
		"nested field in another case": {`{"inner":{"Name":"a"}}`, `"Name" must be spelled "name"`},
		"Kelvin sign":                  {`{"leve\u006c":1,"inner":{"na\u006de":"a"},"list":[{"\u212aey":1}]}`, `unknown field`},
		"embedded field in case":       {`{"LEVEL":1}`, `must be spelled "level"`},
		"unknown field":                {`{"version":1,"extra":1}`, `unknown field "extra"`},
		"ignored field":                {`{"Skip":"x"}`, `unknown field "Skip"`},
		"trailing value":               {`{"version":1}{}`, "trailing data"},
		"trailing garbage":             {`{"version":1} x`, "trailing data"},
		"empty":                        {``, "no JSON value"},
		"truncated":                    {`{"version":1`, "EOF"},
		"too large":                    {`{"untag":"` + strings.Repeat("a", 2000) + `"}`, "exceed the limit"},
		"too deep":                     {strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1), "deeper than"},
		"too deep in RawMessage":       {`{"raw":` + strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth) + `}`, "deeper than"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var d doc
			err := Decode([]byte(tc.in), &d, 1<<10)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode(%s) = %v, want an error with %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestDecodeNotPointer(t *testing.T) {
	var d doc
	if err := Decode([]byte(`{}`), d, 10); err == nil {
		t.Fatal("Decode into a non-pointer succeeded")
	}
	if err := Decode([]byte(`{}`), (*doc)(nil), 10); err == nil {
		t.Fatal("Decode into a nil pointer succeeded")
	}
}

func TestFold(t *testing.T) {
	for _, pair := range [][2]string{{"version", "VERSION"}, {"key", "\u212aey"}, {"s", "\u017f"}, {"", ""}} {
		if fold(pair[0]) != fold(pair[1]) {
			t.Errorf("fold(%q) != fold(%q)", pair[0], pair[1])
		}
	}
	if fold("a") == fold("b") {
		t.Error("fold(a) == fold(b)")
	}
}

// FuzzDecode checks on arbitrary input that Decode never panics, and that whatever it accepts
// encoding/json accepts too and decodes to the same value.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"version":1,"inner":{"name":"a"},"list":[{"name":"b"}],"map":{"k":{}}}`, `{"version":1,"version":2}`, `{"Version":1}`, `[]`, `{"raw":{"a":[1,{"b":null}]}}`, `{"nums":{"1":1}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got doc
		if err := Decode(data, &got, 1<<12); err != nil {
			return
		}
		var want doc
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("Decode accepted what encoding/json refuses: %v", err)
		}
		a, _ := json.Marshal(got)
		b, _ := json.Marshal(want)
		if !bytes.Equal(a, b) {
			t.Fatalf("Decode gave %s, encoding/json %s", a, b)
		}
	})
}
