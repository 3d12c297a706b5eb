package signed_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/rekor-tiles/v2/pkg/note"
	"github.com/sigstore/sigstore/pkg/signature"
	sumnote "golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
)

// tiledLog writes a c2sp.org/tlog-tiles log of leaves to a new directory (the tiles of its tree, and its
// checkpoint signed by key for origin) and returns the directory and the checkpoint.
func tiledLog(t *testing.T, origin string, key *ecdsa.PrivateKey, leaves []string) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	var stored []tlog.Hash
	hr := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, leaf := range leaves {
		hs, err := tlog.StoredHashes(int64(i), []byte(leaf), hr)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
	}
	n := int64(len(leaves))
	root, err := tlog.TreeHash(n, hr)
	if err != nil {
		t.Fatal(err)
	}
	for _, tile := range tlog.NewTiles(8, 0, n) {
		data, err := tlog.ReadTileData(tile, hr)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "tile", strings.TrimPrefix(tile.Path(), "tile/8/"))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cp := signCheckpoint(t, origin, key, fmt.Sprintf("%s\n%d\n%s\n", origin, n, base64.StdEncoding.EncodeToString(root[:])))
	if err := os.WriteFile(filepath.Join(dir, "checkpoint"), cp, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, cp
}

// signCheckpoint signs a checkpoint's text as a Rekor v2 log does.
func signCheckpoint(t testing.TB, origin string, key *ecdsa.PrivateKey, text string) []byte {
	t.Helper()
	sv, err := signature.LoadECDSASigner(key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := note.NewNoteSigner(context.Background(), origin, sv)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := sumnote.Sign(&sumnote.Note{Text: text}, ns)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func leaves(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s entry %d", prefix, i)
	}
	return out
}

// check verifies two checkpoints of log l and their consistency from the tiles in dir.
func check(l signed.Log, older, newer []byte, dir string) error {
	o, err := signed.ParseCheckpoint(l, older)
	if err != nil {
		return err
	}
	n, err := signed.ParseCheckpoint(l, newer)
	if err != nil {
		return err
	}
	return signed.Consistent(o, n, signed.DirLog(dir))
}

// The consistency check of kept checkpoints against a log's tiles, with trees of several tile levels, and
// the logs that must fail it.
func TestConsistency(t *testing.T) {
	key := signtest.NewKey()
	l := signed.Log{Origin: origin, PublicKey: &key.PublicKey}
	genuine := leaves("genuine", 70000) // three levels of tiles, partial tiles at each
	_, cp1 := tiledLog(t, origin, key, genuine[:300])
	_, cp2 := tiledLog(t, origin, key, genuine[:300])
	dir3, cp3 := tiledLog(t, origin, key, genuine)

	t.Run("a log that grew", func(t *testing.T) {
		if err := check(l, cp1, cp3, dir3); err != nil {
			t.Fatal(err)
		}
		if err := check(l, cp1, cp2, dir3); err != nil {
			t.Fatal(err)
		}
		_, cpOne := tiledLog(t, origin, key, genuine[:1])
		if err := check(l, cpOne, cp3, dir3); err != nil {
			t.Fatal(err)
		}
	})

	// The log's operator rewrote one entry of the kept tree and re-signed everything with the genuine key.
	rewritten := append([]string(nil), genuine...)
	rewritten[123] = "rewritten entry"
	dirRewritten, cpRewritten := tiledLog(t, origin, key, rewritten)
	// A log forked at the kept size: the same size, another tree.
	forked := append([]string(nil), genuine[:300]...)
	forked[299] = "forked entry"
	_, cpForked := tiledLog(t, origin, key, forked)
	// The tiles of the genuine log served with the checkpoint of the rewritten one.
	other := signtest.NewKey()
	_, cpOtherKey := tiledLog(t, origin, other, genuine)
	smallDir, cpSmall := tiledLog(t, origin, key, genuine[:200])
	edited := strings.Replace(string(cp1), "\n300\n", "\n301\n", 1)

	tests := map[string]struct {
		older, newer []byte
		dir, wantErr string
	}{
		"a rewritten log, same key":                 {cp1, cpRewritten, dirRewritten, "rewritten or forked"},
		"a rewritten checkpoint over genuine tiles": {cp1, cpRewritten, dir3, "tile"},
		"a fork at the kept size":                   {cp1, cpForked, dir3, "forked"},
		"an edited kept checkpoint":                 {[]byte(edited), cp3, dir3, "not signed by the log"},
		"a current checkpoint by another key":       {cp1, cpOtherKey, dir3, "not signed by the log"},
		"a current tree smaller than the kept one":  {cp1, cpSmall, smallDir, "shrank"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := check(l, tc.older, tc.newer, tc.dir)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("check = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// bundleCheckpoint returns the checkpoint a bundle carries: what a user who verified it may keep.
func bundleCheckpoint(t *testing.T, bundle []byte) []byte {
	t.Helper()
	b, err := signed.ParseBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(b.GetVerificationMaterial().GetTlogEntries()[0].GetInclusionProof().GetCheckpoint().GetEnvelope())
}

// The same against the tiles a Rekor v2 log wrote (the log is stopped): the checkpoint of the first bundle
// against the log's final tree, and against a second log instance with the same key and other entries.
func TestConsistencyOfARekorLog(t *testing.T) {
	fixtures(t)
	kept := bundleCheckpoint(t, fx.good)
	current, err := signed.DirLog(fx.tilesDir).ReadFile(signed.CheckpointPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(fx.root.Log, kept, current, fx.tilesDir); err != nil {
		t.Fatalf("the genuine log: %v", err)
	}
	rewritten, err := signed.DirLog(fx.rewrittenTilesDir).ReadFile(signed.CheckpointPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(fx.root.Log, kept, rewritten, fx.rewrittenTilesDir); err == nil || !strings.Contains(err.Error(), "rewritten or forked") {
		t.Fatalf("a second log with the same key and other entries: %v", err)
	}
}
