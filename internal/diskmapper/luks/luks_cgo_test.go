//go:build linux && cgo

package luks

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/diskmapper/luks/testhook"
)

// These tests run libcryptsetup on plain files: everything but mapping (which needs device-mapper, see
// qemu_test.go) works there. They format without integrity, since formatting with dm-integrity maps the disk,
// and so check headers against the parameters of such a disk (plainProfile).
func init() { diskProfile = plainProfile }

func newKey(t *testing.T) []byte {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// opens reports which keyslot key opens (-1: none), without mapping anything.
func opens(t *testing.T, path string, key []byte) int {
	t.Helper()
	d, err := openDevice(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.free()
	s, err := d.slotOf(-1, key)
	if err != nil {
		t.Fatal(err)
	}
	return int(s)
}

func formatFile(t *testing.T) (path, uuid string, firstKey []byte) {
	t.Helper()
	path = writeImage(t, nil, 20<<20)
	uuid, firstKey, err := format(path, false)
	if err != nil {
		t.Fatal(err)
	}
	return path, uuid, firstKey
}

func TestFormatAndSetKey(t *testing.T) {
	path, uuid, first := formatFile(t)
	h, err := ReadHeader(path)
	if err != nil || h.UUID != uuid || h.State() != StateNew || h.ResetMarked() {
		t.Fatalf("after Format: %+v, %v", h, err)
	}
	if len(first) != KeySize || opens(t, path, first) < 0 {
		t.Fatal("the first-boot key does not open the disk")
	}
	if _, _, err := format(path, false); err == nil || !strings.Contains(err.Error(), "already holds a LUKS2 header") {
		t.Fatalf("second Format = %v", err)
	}
	derived := newKey(t)
	if _, err := Open(path, "x", derived); err == nil || !strings.Contains(err.Error(), "never given its key") {
		t.Fatalf("Open of a new disk = %v", err)
	}
	before, _ := os.ReadFile(path)
	if err := SetKey(path, newKey(t), derived); !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("SetKey with a wrong old key = %v", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a refused SetKey changed the disk")
	}
	if err := SetKey(path, first, derived[:32]); err == nil {
		t.Fatal("SetKey took a 32-byte key")
	}
	if err := SetKey(path, first, derived); err != nil {
		t.Fatal(err)
	}
	if opens(t, path, first) >= 0 || opens(t, path, derived) < 0 {
		t.Fatal("after SetKey the first-boot key still opens the disk, or the derived key does not")
	}
	if h, _ := ReadHeader(path); h.State() != StateInitialised {
		t.Fatalf("after SetKey: %v", h.State())
	}
	// Again with the same keys (a repeated call): done already, nothing to do.
	if err := SetKey(path, first, derived); err != nil {
		t.Fatal(err)
	}
	// A later re-key from the derived key to another one.
	next := newKey(t)
	if err := SetKey(path, derived, next); err != nil {
		t.Fatal(err)
	}
	if opens(t, path, derived) >= 0 || opens(t, path, next) < 0 {
		t.Fatal("re-keying did not replace the key")
	}
	if u, _ := ReadUUID(path); u != uuid {
		t.Fatalf("the UUID changed: %s, was %s", u, uuid)
	}
}

type crash struct{}

// A power loss between adding the new keyslot and destroying the old one: both keys open the disk, and a node
// that has only the new key finishes the job.
func TestSetKeyInterrupted(t *testing.T) {
	for _, keepOld := range []bool{false, true} {
		path, _, first := formatFile(t)
		derived := newKey(t)
		testhook.BeforeDestroyOldKeyslot = func() { panic(crash{}) }
		func() {
			defer func() {
				if r := recover(); r != (crash{}) {
					t.Fatalf("SetKey did not reach the hook: %v", r)
				}
			}()
			SetKey(path, first, derived)
		}()
		testhook.BeforeDestroyOldKeyslot = nil
		if opens(t, path, first) < 0 || opens(t, path, derived) < 0 {
			t.Fatal("after the interruption not both keys open the disk")
		}
		if h, _ := ReadHeader(path); h.State() != StateInitialised {
			t.Fatalf("after the interruption: %v", h.State())
		}
		old := first
		if !keepOld {
			old = nil // the node rebooted: the first-boot key is gone
		}
		if err := SetKey(path, old, derived); err != nil {
			t.Fatal(err)
		}
		if opens(t, path, first) >= 0 || opens(t, path, derived) < 0 {
			t.Fatal("finishing the re-key left the old key or lost the new one")
		}
	}
}

// A power loss right after the new keyslot was added, before the header was labelled: the disk still says
// "new", both keys open it, and the node (which has only the derived key now) finishes the re-key.
func TestSetKeyInterruptedBeforeLabel(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("cryptsetup not installed (Debian package cryptsetup-bin; scripts/setup.sh installs it)")
	}
	path, _, first := formatFile(t)
	derived := newKey(t)
	dir := t.TempDir()
	oldFile, newFile := filepath.Join(dir, "old"), filepath.Join(dir, "new")
	os.WriteFile(oldFile, first, 0o600)
	os.WriteFile(newFile, derived, 0o600)
	// What SetKey's first step does, done by cryptsetup, without the steps after it.
	if out, err := exec.Command("cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--key-file", oldFile, path, newFile).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup luksAddKey: %v %s", err, out)
	}
	if h, _ := ReadHeader(path); h.State() != StateNew || opens(t, path, first) < 0 || opens(t, path, derived) < 0 {
		t.Fatalf("before finishing: %v", h.State())
	}
	if err := SetKey(path, nil, derived); err != nil {
		t.Fatal(err)
	}
	if h, _ := ReadHeader(path); h.State() != StateInitialised || opens(t, path, first) >= 0 || opens(t, path, derived) < 0 {
		t.Fatalf("after finishing: %v", h.State())
	}
}

func TestResetRule(t *testing.T) {
	t.Run("unmarked disks are left alone", func(t *testing.T) {
		path, _, _ := formatFile(t)
		before, _ := os.ReadFile(path)
		if wiped, err := ResetIfMarked(path); wiped || err != nil {
			t.Fatalf("%v, %v", wiped, err)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Fatal("changed")
		}
	})
	t.Run("a marked new disk is wiped and can be formatted again", func(t *testing.T) {
		path, uuid, _ := formatFile(t)
		if err := MarkReset(path); err != nil {
			t.Fatal(err)
		}
		if h, _ := ReadHeader(path); !h.ResetMarked() || h.State() != StateNew {
			t.Fatalf("%+v", h)
		}
		wiped, err := ResetIfMarked(path)
		if !wiped || err != nil {
			t.Fatalf("%v, %v", wiped, err)
		}
		if _, err := ReadUUID(path); !errors.Is(err, ErrNoHeader) {
			t.Fatalf("after the wipe: %v", err)
		}
		raw, _ := os.ReadFile(path)
		if bytes.Contains(raw, []byte(uuid)) || bytes.Contains(raw, []byte(`"keyslots"`)) {
			t.Fatal("the wiped disk still holds header data")
		}
		if u, _, err := format(path, false); err != nil || u == uuid {
			t.Fatalf("formatting again: %s, %v", u, err)
		}
	})
	t.Run("a marked initialised disk is not wiped", func(t *testing.T) {
		path, _, first := formatFile(t)
		derived := newKey(t)
		if err := SetKey(path, first, derived); err != nil {
			t.Fatal(err)
		}
		if err := MarkReset(path); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(path)
		wiped, err := ResetIfMarked(path)
		if wiped || !errors.Is(err, ErrResetRefused) {
			t.Fatalf("%v, %v", wiped, err)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Fatal("a refused reset changed the disk")
		}
		if opens(t, path, derived) < 0 {
			t.Fatal("the key no longer opens the disk")
		}
	})
	t.Run("Format refuses data", func(t *testing.T) {
		path := writeImage(t, []byte("\x00\x00\x00\x00\x00\x00\x00\x00EFI PART"), 20<<20)
		if _, _, err := format(path, false); err == nil || !strings.Contains(err.Error(), "not blank") {
			t.Fatalf("%v", err)
		}
	})
}

func TestOpenRefusesBadArguments(t *testing.T) {
	path, _, _ := formatFile(t)
	for _, tc := range []struct {
		name string
		key  []byte
		want string
	}{
		{"x", make([]byte, 32), "has 32 bytes, want 64"},
		{"a/b", make([]byte, KeySize), "want a plain name"},
		{"", make([]byte, KeySize), "want a plain name"},
	} {
		if _, err := Open(path, tc.name, tc.key); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q, %d-byte key) = %v", tc.name, len(tc.key), err)
		}
	}
}

// The check runs on what libcryptsetup loaded: a header Format wrote (with dm-integrity, in the QEMU test's
// guest) loads; the same header rewritten by the host to a cipher_null segment without integrity (both copies,
// checksums recomputed) is refused by every operation, and the disk is not changed.
func TestLoadedHeaderIsChecked(t *testing.T) {
	diskProfile = integrityProfile
	t.Cleanup(func() { diskProfile = plainProfile })
	b := readFixture(t, initialisedFixture)
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	key, err := testDeriver(t).DiskKey(h.UUID)
	if err != nil {
		t.Fatal(err)
	}
	d, err := openDevice(writeImage(t, b, 20<<20), true)
	if err != nil {
		t.Fatalf("loading a header Format wrote: %v", err)
	}
	if err := d.meta.VerifyMAC(h.UUID, key); err != nil {
		t.Fatal(err)
	}
	d.free()

	js, _ := jsonArea(t, b)
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	seg := m["segments"].(map[string]any)["0"].(map[string]any)
	seg["encryption"] = "cipher_null-ecb"
	delete(seg, "integrity")
	js, _ = json.Marshal(m)
	path := writeImage(t, sealCopies(t, b, js), 20<<20)
	if _, err := ReadHeader(path); err != nil {
		t.Fatalf("the rewritten header is a valid LUKS2 header: %v", err)
	}
	before, _ := os.ReadFile(path)
	for name, op := range map[string]func() error{
		"Open":          func() error { _, err := Open(path, "x", key); return err },
		"SetKey":        func() error { return SetKey(path, nil, key) },
		"MarkReset":     func() error { return MarkReset(path) },
		"ResetIfMarked": func() error { _, err := ResetIfMarked(path); return err },
	} {
		err := op()
		if name == "ResetIfMarked" && err == nil {
			continue // not marked: nothing to do, nothing loaded
		}
		if !errors.Is(err, ErrBadParameters) || !strings.Contains(err.Error(), "cipher_null-ecb") {
			t.Errorf("%s of the rewritten disk: %v", name, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a refused header was changed")
	}
}
