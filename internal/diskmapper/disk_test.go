package diskmapper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a state disk needs root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices on this machine")
	}
}

func newImage(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomKey(t *testing.T) []byte {
	k := make([]byte, MinKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// What the node writes through its state directory is encrypted on the disk: a known marker, in a file's
// contents and in its name, appears nowhere in the backing file. The right key opens the disk again; a wrong
// key is refused and changes nothing.
func TestStateDiskHoldsNoPlaintext(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	image := newImage(t, 64<<20)
	if _, err := ReadUUID(image); !errors.Is(err, ErrNoFilesystem) {
		t.Fatalf("ReadUUID of a new disk = %v, want ErrNoFilesystem", err)
	}
	uuid, err := Format(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Format(ctx, image); err == nil || !strings.Contains(err.Error(), "refusing to format") {
		t.Fatalf("second Format = %v, want a refusal", err)
	}
	key := randomKey(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if has, err := HasState(image, mnt); err != nil || has {
		t.Fatalf("HasState of a new disk = %v, %v", has, err)
	}
	d, err := Open(image, mnt, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if d.UUID != uuid {
		t.Fatalf("opened disk %s, formatted %s", d.UUID, uuid)
	}
	marker := []byte("CONSTELLATION-MARKER-0123456789-")
	content := bytes.Repeat(marker, (1<<20)/len(marker))
	name := filepath.Join(d.StateDir, "etcd-secret-MARKERNAME.db")
	if err := os.WriteFile(name, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.StateDir, "var", "lib"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The control: the same marker outside the encrypted directory is found, so the search below can fail.
	control := []byte("PLAINTEXT-CONTROL-")
	if err := os.WriteFile(filepath.Join(mnt, "control"), bytes.Repeat(append(control, marker...), 64), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, append(control, marker...)) {
		t.Fatal("the unencrypted control file is not found in the backing file: the search cannot work")
	}
	if n := bytes.Count(raw, marker[:16]); n != 64 {
		t.Fatalf("the marker occurs %d times in the backing file, want exactly the 64 of the unencrypted control", n)
	}
	if bytes.Contains(raw, []byte("MARKERNAME")) {
		t.Fatal("the backing file holds the file's name in plain text")
	}

	if has, err := HasState(image, mnt); err != nil || !has {
		t.Fatalf("HasState of a used disk = %v, %v", has, err)
	}
	// A wrong key: refused, nothing changed.
	if _, err := Open(image, mnt, randomKey(t)); err == nil || !strings.Contains(err.Error(), "is not the key of disk "+uuid) {
		t.Fatalf("Open with a wrong key = %v", err)
	}
	if _, err := Open(image, mnt, key[:32]); err == nil {
		t.Fatal("Open with a short key succeeded")
	}
	after, _ := os.ReadFile(image)
	if !bytes.Equal(raw, after) {
		t.Fatal("a refused open changed the disk")
	}

	// The right key again (a reboot): the state is there.
	d, err = Open(image, mnt, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("state after reopening: %v", err)
	}
}

func TestReadUUIDRefusesOtherDisks(t *testing.T) {
	requireRoot(t)
	image := newImage(t, 16<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", image).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if _, err := ReadUUID(image); err == nil || !strings.Contains(err.Error(), "does not support encryption") {
		t.Fatalf("ReadUUID of a plain ext4 = %v", err)
	}
	if _, err := Format(context.Background(), image); err == nil || !strings.Contains(err.Error(), "another filesystem") {
		t.Fatalf("Format of a disk with another filesystem = %v", err)
	}
}

func superblock(uuid []byte, features uint32) []byte {
	sb := make([]byte, superblockSize)
	binary.LittleEndian.PutUint16(sb[magicOffset:], ext4Magic)
	copy(sb[uuidOffset:], uuid)
	binary.LittleEndian.PutUint32(sb[featureIncompat:], features)
	return sb
}

func TestParseSuperblock(t *testing.T) {
	u := []byte{0x0b, 0x6c, 0x3a, 0x2e, 0x6a, 0x64, 0x4a, 0x6f, 0x9d, 0x4e, 0x3f, 0x1f, 0x3e, 0x6e, 0x2f, 0x11}
	uuid, enc, err := ParseSuperblock(superblock(u, incompatEncrypt|0x2))
	if err != nil || uuid != "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11" || !enc {
		t.Fatalf("ParseSuperblock = %q, %v, %v", uuid, enc, err)
	}
	if _, enc, _ := ParseSuperblock(superblock(u, 0x2)); enc {
		t.Fatal("encryption reported without the feature")
	}
	if _, _, err := ParseSuperblock(superblock(make([]byte, 16), incompatEncrypt)); err == nil {
		t.Fatal("a superblock without UUID accepted")
	}
	if _, _, err := ParseSuperblock(make([]byte, superblockSize)); !errors.Is(err, ErrNoFilesystem) {
		t.Fatalf("no magic: %v", err)
	}
	if _, _, err := ParseSuperblock(superblock(u, 0)[:100]); err == nil {
		t.Fatal("a truncated superblock accepted")
	}
}

func FuzzParseSuperblock(f *testing.F) {
	f.Add(superblock([]byte("0123456789abcdef"), incompatEncrypt))
	f.Add(make([]byte, superblockSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, sb []byte) {
		uuid, _, err := ParseSuperblock(sb)
		if err == nil && (len(sb) != superblockSize || len(uuid) != 36) {
			t.Fatalf("accepted %d bytes as a superblock with UUID %q", len(sb), uuid)
		}
	})
}
