// Package strictjson decodes JSON that must have exactly one meaning.
//
// encoding/json is lenient in ways that let two readers of the same bytes disagree: it keeps the last of
// two equal keys, matches a key to a struct field case-insensitively (so "Version" and "version" in one
// object set the same field, the later one winning), ignores keys that name no field and stops at the end
// of the first value. [Decode] refuses all of these: it decodes exactly one JSON value of at most a given
// size, and refuses
//
//   - data after the value (white space aside), and input larger than the bound;
//   - keys that name no field of the struct they are decoded into (encoding/json's DisallowUnknownFields,
//     whose error names the key);
//   - keys that name a field only case-insensitively: a key must be spelled as the field's JSON name;
//   - the same key twice in one object; for objects decoded into a struct, or by a type's own method, also
//     when the two spellings differ only in case (map keys are exact: "k" and "K" are two entries);
//   - nesting deeper than [MaxDepth].
//
// Types with their own UnmarshalJSON or UnmarshalText decide about their content themselves; Decode still
// refuses duplicate keys and excess nesting inside them.
package strictjson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode"
)

// MaxDepth bounds the nesting of objects and arrays.
const MaxDepth = 32

// Decode decodes data, which must be exactly one JSON value of at most maxSize bytes, into v, a non-nil
// pointer. See the package documentation for what it refuses besides what encoding/json refuses.
func Decode(data []byte, v any, maxSize int) error {
	if len(data) > maxSize {
		return fmt.Errorf("%d bytes of JSON exceed the limit of %d", len(data), maxSize)
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("decoding JSON into %T: want a non-nil pointer", v)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walk(dec, rv.Type(), 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

var (
	unmarshalerType     = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// target returns the type whose fields or elements the JSON at hand is decoded into, or nil when the JSON
// is decoded by a type's own method or into an interface, where field names are not known.
func target(t reflect.Type) reflect.Type {
	for t != nil {
		if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) ||
			t.Implements(textUnmarshalerType) || reflect.PointerTo(t).Implements(textUnmarshalerType) {
			return nil
		}
		if t.Kind() != reflect.Pointer {
			break
		}
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface {
		return nil
	}
	return t
}

// walk reads one JSON value from dec and checks its keys against t (nil: no type known).
func walk(dec *json.Decoder, t reflect.Type, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return errors.New("no JSON value")
		}
		return err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if depth >= MaxDepth {
		return fmt.Errorf("JSON nests deeper than %d levels", MaxDepth)
	}
	t = target(t)
	switch delim {
	case '{':
		var fields map[string]reflect.Type
		var folded map[string]string
		var elem reflect.Type
		switch {
		case t == nil:
		case t.Kind() == reflect.Struct:
			fields, folded = structFields(t)
		case t.Kind() == reflect.Map:
			elem = t.Elem()
		}
		seen := map[string]string{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := k.(string)
			f := key
			if elem == nil {
				// Struct fields, and whatever a type decodes by its own rules, may match keys regardless
				// of case; the keys of a map are its entries, exactly as spelled.
				f = fold(key)
			}
			if prev, dup := seen[f]; dup {
				if prev == key {
					return fmt.Errorf("JSON object has the key %q twice", key)
				}
				return fmt.Errorf("JSON object has the keys %q and %q, which differ only in case", prev, key)
			}
			seen[f] = key
			next := elem
			if fields != nil {
				var known bool
				if next, known = fields[key]; !known {
					if name, ok := folded[f]; ok {
						return fmt.Errorf("JSON key %q must be spelled %q", key, name)
					}
					// A key that names no field: the decoder refuses it with its own error.
				}
			}
			if err := walk(dec, next, depth+1); err != nil {
				return err
			}
		}
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := walk(dec, elem, depth+1); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// structFields returns the JSON names of t's fields (with the type of each) and, by folded name, the
// spelling of each, following encoding/json's rules for tags and embedded structs.
func structFields(t reflect.Type) (map[string]reflect.Type, map[string]string) {
	fields, folded, depth := map[string]reflect.Type{}, map[string]string{}, map[string]int{}
	for _, f := range reflect.VisibleFields(t) {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				continue // its fields are promoted and listed by VisibleFields
			}
		}
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if d, ok := depth[name]; ok && d <= len(f.Index) {
			continue // the shallower field wins, as in encoding/json
		}
		fields[name], depth[name] = f.Type, len(f.Index)
		folded[fold(name)] = name
	}
	return fields, folded
}

// fold maps s to a string that is equal for two strings exactly when strings.EqualFold says they are, the
// rule by which encoding/json matches keys to field names.
func fold(s string) string {
	var b strings.Builder
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}
