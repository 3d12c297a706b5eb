package kmip_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/kms/kmip"
)

const validWrapped = `{"version":1,"algorithm":"AES-256-GCM","keyID":"42","iv":"AAECAwQFBgcICQoL","ciphertext":"c2VjcmV0","tag":"AAECAwQFBgcICQoLDA0ODw=="}`

func TestParseWrapped(t *testing.T) {
	w, err := kmip.ParseWrapped([]byte(validWrapped))
	if err != nil {
		t.Fatal(err)
	}
	if w.KeyID != "42" || len(w.IV) != 12 || len(w.Tag) != 16 || string(w.Ciphertext) != "secret" {
		t.Fatalf("parsed %+v", w)
	}
	raw, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != validWrapped {
		t.Fatalf("re-encoded as %s", raw)
	}

	for name, raw := range map[string]string{
		"empty":              ``,
		"not an object":      `[]`,
		"null":               `null`,
		"unknown field":      strings.Replace(validWrapped, `"version":1`, `"version":1,"kek":"x"`, 1),
		"duplicate field":    strings.Replace(validWrapped, `"version":1`, `"version":1,"version":1`, 1),
		"wrong case":         strings.Replace(validWrapped, `"keyID"`, `"KeyID"`, 1),
		"trailing data":      validWrapped + `{}`,
		"trailing garbage":   validWrapped + `x`,
		"truncated":          validWrapped[:len(validWrapped)-1],
		"version 0":          strings.Replace(validWrapped, `"version":1`, `"version":0`, 1),
		"version 2":          strings.Replace(validWrapped, `"version":1`, `"version":2`, 1),
		"version string":     strings.Replace(validWrapped, `"version":1`, `"version":"1"`, 1),
		"missing version":    strings.Replace(validWrapped, `"version":1,`, ``, 1),
		"other algorithm":    strings.Replace(validWrapped, `AES-256-GCM`, `AES-128-GCM`, 1),
		"empty key ID":       strings.Replace(validWrapped, `"keyID":"42"`, `"keyID":""`, 1),
		"null key ID":        strings.Replace(validWrapped, `"keyID":"42"`, `"keyID":null`, 1),
		"short IV":           strings.Replace(validWrapped, `AAECAwQFBgcICQoL`, `AAECAwQFBgcICQo=`, 1),
		"long IV":            strings.Replace(validWrapped, `AAECAwQFBgcICQoL"`, `AAECAwQFBgcICQoLDA0ODw=="`, 1),
		"IV not base64":      strings.Replace(validWrapped, `AAECAwQFBgcICQoL`, `AAECAwQFBgcICQo!`, 1),
		"truncated tag":      strings.Replace(validWrapped, `AAECAwQFBgcICQoLDA0ODw==`, `AAECAwQFBgcICQoL`, 1),
		"empty ciphertext":   strings.Replace(validWrapped, `"c2VjcmV0"`, `""`, 1),
		"missing ciphertext": strings.Replace(validWrapped, `"ciphertext":"c2VjcmV0",`, ``, 1),
	} {
		t.Run(name, func(t *testing.T) {
			if w, err := kmip.ParseWrapped([]byte(raw)); err == nil {
				t.Fatalf("accepted %q as %+v", raw, w)
			}
		})
	}
}

func FuzzParseWrapped(f *testing.F) {
	f.Add([]byte(validWrapped))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":1,"version":1}`))
	f.Add([]byte(`{"Version":1,"algorithm":"AES-256-GCM","keyID":"1","iv":"AAECAwQFBgcICQoL","ciphertext":"AA==","tag":"AAECAwQFBgcICQoLDA0ODw=="}`))
	f.Add([]byte(validWrapped + ` `))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		w, err := kmip.ParseWrapped(raw)
		if err != nil {
			return
		}
		if w.Version != 1 || w.Algorithm != "AES-256-GCM" || w.KeyID == "" || len(w.IV) != 12 || len(w.Tag) != 16 || len(w.Ciphertext) == 0 {
			t.Fatalf("accepted invalid %+v", w)
		}
		again, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		w2, err := kmip.ParseWrapped(again)
		if err != nil {
			t.Fatalf("re-encoded form rejected: %v", err)
		}
		if w2.KeyID != w.KeyID || !bytes.Equal(w2.IV, w.IV) || !bytes.Equal(w2.Ciphertext, w.Ciphertext) || !bytes.Equal(w2.Tag, w.Tag) {
			t.Fatal("round trip changed the wrapped secret")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	valid := kmip.Config{Endpoint: "127.0.0.1:5696", ServerCA: []byte("x"), ClientCert: []byte("x"), ClientKey: []byte("x")}
	for name, tc := range map[string]struct {
		mutate func(*kmip.Config)
		want   string
	}{
		"missing endpoint":  {func(c *kmip.Config) { c.Endpoint = "" }, "missing Endpoint"},
		"endpoint w/o port": {func(c *kmip.Config) { c.Endpoint = "127.0.0.1" }, "malformed Endpoint"},
		"endpoint bad port": {func(c *kmip.Config) { c.Endpoint = "127.0.0.1:99999" }, "malformed Endpoint"},
		"missing CA":        {func(c *kmip.Config) { c.ServerCA = nil }, "missing ServerCA"},
		"CA not PEM":        {func(c *kmip.Config) { c.ServerCA = []byte("x") }, "invalid ServerCA: no PEM certificate"},
		"missing cert":      {func(c *kmip.Config) { c.ClientCert = nil }, "missing ClientCert"},
		"missing key":       {func(c *kmip.Config) { c.ClientKey = nil }, "missing ClientKey"},
		"cert/key not PEM":  {func(c *kmip.Config) {}, "invalid ClientCert/ClientKey"},
		"negative timeout":  {func(c *kmip.Config) { c.Timeout = -1 }, "negative Timeout"},
		"negative retries":  {func(c *kmip.Config) { c.Retries = -1 }, "negative Retries"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := valid
			tc.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, err := kmip.New(cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}
