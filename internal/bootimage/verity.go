package bootimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// VerityBlock is the data and hash block size of the root's dm-verity tree.
const VerityBlock = 4096

// Verity are the dm-verity parameters of a partition holding the data, then (from HashStart) its hash tree.
type Verity struct {
	DataBlocks uint64 // data blocks of VerityBlock bytes
	HashStart  uint64 // the hash tree's first block, in VerityBlock units
	RootHash   [32]byte
	Salt       [32]byte
}

// AppendVerity pads the file at path to whole blocks and appends a dm-verity hash tree (SHA-256, format 1, no
// superblock) made by veritysetup. The salt is the SHA-256 of the padded data, so the result depends on the
// data only.
func AppendVerity(ctx context.Context, path string) (Verity, error) {
	var v Verity
	if _, err := exec.LookPath("veritysetup"); err != nil {
		return v, fmt.Errorf("veritysetup not found; install the Debian package cryptsetup-bin (scripts/setup.sh does)")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return v, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return v, err
	}
	size := (info.Size() + VerityBlock - 1) / VerityBlock * VerityBlock
	if size == 0 {
		return v, fmt.Errorf("%s is empty", path)
	}
	if err := f.Truncate(size); err != nil {
		return v, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return v, err
	}
	h.Sum(v.Salt[:0])
	if err := f.Close(); err != nil {
		return v, err
	}
	v.DataBlocks, v.HashStart = uint64(size/VerityBlock), uint64(size/VerityBlock)
	cmd := exec.CommandContext(ctx, "veritysetup", "format", "--no-superblock", "--format=1", "--hash=sha256",
		fmt.Sprintf("--data-block-size=%d", VerityBlock), fmt.Sprintf("--hash-block-size=%d", VerityBlock),
		fmt.Sprintf("--data-blocks=%d", v.DataBlocks), fmt.Sprintf("--hash-offset=%d", size),
		"--salt="+hex.EncodeToString(v.Salt[:]), path, path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return v, fmt.Errorf("veritysetup format: %w: %s", err, out)
	}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if val, ok := strings.CutPrefix(sc.Text(), "Root hash:"); ok {
			raw, err := hex.DecodeString(strings.TrimSpace(val))
			if err != nil || len(raw) != 32 {
				return v, fmt.Errorf("veritysetup printed a root hash %q that is not 32 bytes of hex", val)
			}
			copy(v.RootHash[:], raw)
			found = true
		}
	}
	if !found {
		return v, fmt.Errorf("veritysetup printed no root hash:\n%s", out)
	}
	return v, nil
}
