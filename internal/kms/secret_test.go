package kms

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecretFileRoundTrip(t *testing.T) {
	ms, err := GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), MasterSecretFileName)
	if err := WriteSecretFile(path, &SecretFile{Plain: ms}, false); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, %v; want 0600", info.Mode(), err)
	}
	f, err := ReadSecretFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.IsWrapped() || !bytes.Equal(f.Plain.Key, ms.Key) || !bytes.Equal(f.Plain.Salt, ms.Salt) {
		t.Fatal("read another secret than was written")
	}
	// Never overwritten without being asked to, never printed.
	other, _ := GenerateMasterSecret()
	if err := WriteSecretFile(path, &SecretFile{Plain: other}, false); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("overwrite: %v", err)
	}
	if again, _ := ReadSecretFile(path); !bytes.Equal(again.Plain.Key, ms.Key) {
		t.Fatal("the refused write changed the file")
	}
	for _, s := range []string{ms.String(), ms.GoString()} {
		if strings.Contains(s, string(ms.Key)) || !strings.Contains(s, "redacted") {
			t.Fatalf("String() = %q", s)
		}
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecretFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable secret accepted: %v", err)
	}
}

func TestParseSecretFileRejects(t *testing.T) {
	key := strings.Repeat("A", 43) + "="
	tests := map[string]string{
		"empty":           ``,
		"unknown field":   `{"version":1,"key":"` + key + `","salt":"` + key + `","extra":1}`,
		"wrong version":   `{"version":2,"key":"` + key + `","salt":"` + key + `"}`,
		"short key":       `{"version":1,"key":"AAAA","salt":"` + key + `"}`,
		"no salt":         `{"version":1,"key":"` + key + `"}`,
		"neither":         `{"version":1,"salt":"` + key + `"}`,
		"both":            `{"version":1,"key":"` + key + `","salt":"` + key + `","wrapped":{"version":1}}`,
		"bad wrapped":     `{"version":1,"salt":"` + key + `","wrapped":{"version":1,"algorithm":"AES-256-GCM","keyID":"1"}}`,
		"trailing":        `{"version":1,"key":"` + key + `","salt":"` + key + `"} {}`,
		"key twice":       `{"version":1,"key":"` + key + `","salt":"` + key + `","key":"` + key + `"}`,
		"key in capitals": `{"version":1,"KEY":"` + key + `","salt":"` + key + `"}`,
		"not json":        `key: value`,
		"key not base64":  `{"version":1,"key":"!!","salt":"` + key + `"}`,
	}
	for name, in := range tests {
		if _, err := ParseSecretFile([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	valid := `{"version":1,"key":"` + key + `","salt":"` + key + `"}`
	if _, err := ParseSecretFile([]byte(valid)); err != nil {
		t.Fatalf("valid file rejected: %v", err)
	}
}

func FuzzParseSecretFile(f *testing.F) {
	key := strings.Repeat("A", 43) + "="
	f.Add([]byte(`{"version":1,"key":"` + key + `","salt":"` + key + `"}`))
	f.Add([]byte(`{"version":1,"salt":"` + key + `","wrapped":{"version":1,"algorithm":"AES-256-GCM","keyID":"1","iv":"AAAAAAAAAAAAAAAA","ciphertext":"AA==","tag":"AAAAAAAAAAAAAAAAAAAAAA=="}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		sf, err := ParseSecretFile(raw)
		if err != nil {
			return
		}
		out, err := sf.Marshal()
		if err != nil {
			t.Fatalf("marshal of a parsed file: %v", err)
		}
		if _, err := ParseSecretFile(out); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}
