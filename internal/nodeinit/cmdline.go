package nodeinit

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kernel command line parameters the init reads.
const (
	// ParamRoot names the GPT partition (its partition name) that holds the root filesystem and its hash tree.
	ParamRoot = "constellation.root"
	// ParamVerity carries the dm-verity parameters: <data blocks>,<hash start block>,<root hash>,<salt>
	// (4096-byte blocks, SHA-256, hex).
	ParamVerity = "constellation.verity"
)

// CmdlineFile is where the initramfs carries the kernel command line the image boots with.
const CmdlineFile = "/etc/cmdline"

// MaxCmdline bounds the kernel command line the init parses.
const MaxCmdline = 4096

// Root is what the init needs to open the root filesystem.
type Root struct {
	Partition  string
	DataBlocks uint64
	HashStart  uint64
	RootHash   [32]byte
	Salt       [32]byte
}

// Param returns the command line parameters naming r.
func (r Root) Param() string {
	return fmt.Sprintf("%s=%s %s=%d,%d,%x,%x", ParamRoot, r.Partition, ParamVerity, r.DataBlocks, r.HashStart, r.RootHash, r.Salt)
}

// ParseCmdline reads the root's parameters from a kernel command line (/proc/cmdline). Each must be there
// exactly once and well-formed; the partition name is 1-36 characters of [a-z0-9-]. Everything after "--"
// belongs to the init's arguments and is ignored.
func ParseCmdline(cmdline string) (Root, error) {
	var r Root
	if len(cmdline) > MaxCmdline {
		return r, fmt.Errorf("kernel command line of %d bytes is longer than %d", len(cmdline), MaxCmdline)
	}
	var root, verity []string
	for _, f := range strings.Fields(cmdline) {
		if f == "--" {
			break
		}
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case ParamRoot:
			root = append(root, v)
		case ParamVerity:
			verity = append(verity, v)
		}
	}
	if len(root) != 1 || len(verity) != 1 {
		return r, fmt.Errorf("the kernel command line must name %s and %s exactly once each (found %d and %d)", ParamRoot, ParamVerity, len(root), len(verity))
	}
	r.Partition = root[0]
	if len(r.Partition) == 0 || len(r.Partition) > 36 || strings.Trim(r.Partition, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return r, fmt.Errorf("%s=%q is not a partition name of 1-36 characters [a-z0-9-]", ParamRoot, r.Partition)
	}
	parts := strings.Split(verity[0], ",")
	if len(parts) != 4 {
		return r, fmt.Errorf("%s must be <data blocks>,<hash start>,<root hash>,<salt>", ParamVerity)
	}
	var err error
	if r.DataBlocks, err = strconv.ParseUint(parts[0], 10, 40); err != nil || r.DataBlocks == 0 {
		return r, fmt.Errorf("%s: data blocks %q: not a positive number", ParamVerity, parts[0])
	}
	if r.HashStart, err = strconv.ParseUint(parts[1], 10, 40); err != nil || r.HashStart < r.DataBlocks {
		return r, fmt.Errorf("%s: hash start %q: not a number at or past the data", ParamVerity, parts[1])
	}
	for i, dst := range [][]byte{r.RootHash[:], r.Salt[:]} {
		raw, err := hex.DecodeString(parts[2+i])
		if err != nil || len(raw) != len(dst) || parts[2+i] != hex.EncodeToString(raw) {
			return r, errors.New(ParamVerity + ": the root hash and salt must be 64 lower-case hex digits each")
		}
		copy(dst, raw)
	}
	return r, nil
}
