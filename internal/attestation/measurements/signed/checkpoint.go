package signed

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"strings"

	"github.com/sigstore/rekor-tiles/v2/pkg/note"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/tlog"
)

// MaxCheckpointSize bounds a checkpoint a verifier reads: three lines and a few signature lines.
const MaxCheckpointSize = 16 << 10

// tileHeight is the height of the tiles of a c2sp.org/tlog-tiles log: 256 hashes per tile.
const tileHeight = 8

// Checkpoint is a log's signed statement of its size and root hash (c2sp.org/tlog-checkpoint), verified.
type Checkpoint struct {
	Origin string
	Size   int64
	Hash   tlog.Hash
	// Raw is the signed note as read: what a user keeps to check the log's next checkpoints against.
	Raw []byte
}

// ParseCheckpoint verifies a checkpoint's signature by l's key and its origin, then reads it. Nothing of
// the checkpoint is read before its signature verifies.
func ParseCheckpoint(l Log, raw []byte) (*Checkpoint, error) {
	if len(raw) > MaxCheckpointSize {
		return nil, fmt.Errorf("the checkpoint is %d bytes, more than the %d a checkpoint can be", len(raw), MaxCheckpointSize)
	}
	if l.PublicKey == nil || l.Origin == "" {
		return nil, errors.New("the trusted root names no transparency log")
	}
	sv, err := signature.LoadECDSAVerifier(l.PublicKey, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("the log key: %w", err)
	}
	nv, err := note.NewNoteVerifier(l.Origin, sv)
	if err != nil {
		return nil, fmt.Errorf("the log key: %w", err)
	}
	cp, _, _, err := log.ParseCheckpoint(raw, l.Origin, nv)
	if err != nil {
		return nil, fmt.Errorf("the checkpoint is not signed by the log %s with the trusted key: %w", l.Origin, err)
	}
	if len(cp.Hash) != tlog.HashSize {
		return nil, fmt.Errorf("the checkpoint's root hash is %d bytes, want %d", len(cp.Hash), tlog.HashSize)
	}
	if cp.Size > math.MaxInt64 {
		return nil, fmt.Errorf("the checkpoint's tree size %d is out of range", cp.Size)
	}
	c := &Checkpoint{Origin: cp.Origin, Size: int64(cp.Size), Raw: bytes.Clone(raw)}
	copy(c.Hash[:], cp.Hash)
	return c, nil
}

// CheckpointOrigin returns the first line of a checkpoint, unverified: which log it claims to be from, to
// choose the trusted log to verify it with.
func CheckpointOrigin(raw []byte) string {
	origin, _, _ := strings.Cut(string(raw[:min(len(raw), 256)]), "\n")
	return origin
}

// LogReader reads the files of a c2sp.org/tlog-tiles log by their path relative to the log's base:
// "checkpoint", or a tile such as "tile/0/x001/234.p/17". A file it does not have is an error wrapping
// [fs.ErrNotExist]. Its answers are untrusted: [ParseCheckpoint] verifies a checkpoint, [Consistent] checks
// every hash it uses against the signed checkpoints.
type LogReader interface {
	ReadFile(path string) ([]byte, error)
}

// CheckpointPath is where a tiled log serves its latest checkpoint.
const CheckpointPath = "checkpoint"

// maxTileSize bounds a tile a verifier reads: 256 hashes.
const maxTileSize = (1 << tileHeight) * tlog.HashSize

// DirLog reads a log's files from a directory (the storage of a POSIX log, or a copy of it), without
// following a path out of it.
func DirLog(dir string) LogReader { return dirLog(dir) }

type dirLog string

func (d dirLog) ReadFile(path string) ([]byte, error) {
	r, err := os.OpenRoot(string(d))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	f, err := r.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAtMost(f, max(MaxCheckpointSize, maxTileSize))
}

// readAtMost reads r to its end, refusing more than limit bytes.
func readAtMost(r io.Reader, limit int) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(data) > limit {
		return nil, fmt.Errorf("more than %d bytes", limit)
	}
	return data, nil
}

// Consistent proves that the tree of the checkpoint older is a prefix of the tree of newer, both verified by
// [ParseCheckpoint] against the same log: it computes the consistency proof from newer's tiles (each
// checked against newer's root hash) and checks it against both root hashes. A log that rewrote, removed or
// reordered any entry of older's tree, or whose tree shrank, fails.
func Consistent(older, newer *Checkpoint, lr LogReader) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("the checkpoints are of two logs, %s and %s", older.Origin, newer.Origin)
	}
	if newer.Size < older.Size {
		return fmt.Errorf("the log's tree shrank from %d to %d entries: it is not the log of the older checkpoint, or it was rolled back", older.Size, newer.Size)
	}
	if newer.Size == older.Size {
		if newer.Hash != older.Hash {
			return fmt.Errorf("the log signed two different trees of %d entries: it forked", newer.Size)
		}
		return nil
	}
	if older.Size == 0 {
		return nil // the empty tree is a prefix of every tree
	}
	hr := tlog.TileHashReader(tlog.Tree{N: newer.Size, Hash: newer.Hash}, tileReader{lr})
	proof, err := tlog.ProveTree(newer.Size, older.Size, hr)
	if err != nil {
		return fmt.Errorf("computing the consistency proof from the log's tiles: %w", err)
	}
	if err := tlog.CheckTree(proof, newer.Size, newer.Hash, older.Size, older.Hash); err != nil {
		return fmt.Errorf("the log's tree of %d entries does not extend the older tree of %d entries: the log was rewritten or forked: %w",
			newer.Size, older.Size, err)
	}
	return nil
}

// tileReader adapts a [LogReader] to the tiles of x/mod's tlog, whose paths carry the tile height
// ("tile/8/0/...") where c2sp.org/tlog-tiles has none ("tile/0/...").
type tileReader struct{ r LogReader }

func (t tileReader) Height() int { return tileHeight }

func (t tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, tile := range tiles {
		if tile.H != tileHeight || tile.L < 0 {
			return nil, fmt.Errorf("tile %v is not a hash tile of height %d", tile, tileHeight)
		}
		path, ok := strings.CutPrefix(tile.Path(), fmt.Sprintf("tile/%d/", tileHeight))
		if !ok {
			return nil, fmt.Errorf("unexpected tile path %s", tile.Path())
		}
		want := tile.W * tlog.HashSize
		data, err := t.r.ReadFile("tile/" + path)
		if full, _, partial := strings.Cut(path, ".p/"); partial && errors.Is(err, fs.ErrNotExist) {
			// A log may drop a partial tile once it has the full one, whose prefix it is (c2sp.org/tlog-tiles).
			if data, err = t.r.ReadFile("tile/" + full); err == nil && len(data) >= want {
				data = data[:want]
			}
		}
		if err != nil {
			return nil, fmt.Errorf("reading tile %s: %w", "tile/"+path, err)
		}
		if len(data) != want {
			return nil, fmt.Errorf("tile %s is %d bytes, want %d", "tile/"+path, len(data), want)
		}
		out[i] = data
	}
	return out, nil
}

func (t tileReader) SaveTiles([]tlog.Tile, [][]byte) {}
