package kmip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Wrapped is a secret encrypted under a KEK on the KMS. It is what gets stored; it is JSON-serializable.
type Wrapped struct {
	Version    int    `json:"version"`   // WrappedVersion
	Algorithm  string `json:"algorithm"` // AlgorithmAES256GCM
	KeyID      string `json:"keyID"`     // KMIP unique identifier of the KEK
	IV         []byte `json:"iv"`        // 12 bytes
	Ciphertext []byte `json:"ciphertext"`
	Tag        []byte `json:"tag"` // 16 bytes
}

// Format of Wrapped.
const (
	WrappedVersion     = 1
	AlgorithmAES256GCM = "AES-256-GCM"
	IVSize             = 12
	TagSize            = 16
)

var wrappedFields = map[string]bool{"version": true, "algorithm": true, "keyID": true, "iv": true, "ciphertext": true, "tag": true}

// ParseWrapped decodes and validates a serialized Wrapped. It is strict: member names must match exactly (Go's
// encoding/json alone would match them case-insensitively) and appear once; unknown members, trailing data, an
// unknown version or algorithm, an IV other than 12 bytes, a tag other than 16 bytes, and an empty key ID or
// ciphertext are errors.
func ParseWrapped(raw []byte) (*Wrapped, error) {
	if err := checkMembers(raw); err != nil {
		return nil, fmt.Errorf("kmip: parse wrapped secret: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var w Wrapped
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("kmip: parse wrapped secret: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("kmip: parse wrapped secret: trailing data after the JSON object")
	}
	if err := w.validate(); err != nil {
		return nil, fmt.Errorf("kmip: parse wrapped secret: %w", err)
	}
	return &w, nil
}

// checkMembers checks that raw is a JSON object whose member names are all known and unique.
func checkMembers(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	seen := make(map[string]bool, len(wrappedFields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := tok.(string)
		if !wrappedFields[name] {
			return fmt.Errorf("unknown field %q", name)
		}
		if seen[name] {
			return fmt.Errorf("duplicate field %q", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

func (w *Wrapped) validate() error {
	switch {
	case w == nil:
		return errors.New("no wrapped secret")
	case w.Version != WrappedVersion:
		return fmt.Errorf("unsupported version %d (want %d)", w.Version, WrappedVersion)
	case w.Algorithm != AlgorithmAES256GCM:
		return fmt.Errorf("unsupported algorithm %q (want %q)", w.Algorithm, AlgorithmAES256GCM)
	case w.KeyID == "":
		return errors.New("empty key ID")
	case len(w.IV) != IVSize:
		return fmt.Errorf("IV is %d bytes (want %d)", len(w.IV), IVSize)
	case len(w.Tag) != TagSize:
		return fmt.Errorf("tag is %d bytes (want %d)", len(w.Tag), TagSize)
	case len(w.Ciphertext) == 0:
		return errors.New("empty ciphertext")
	}
	return nil
}
