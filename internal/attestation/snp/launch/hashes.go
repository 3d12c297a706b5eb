package launch

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
)

// GUIDs of QEMU's kernel hashes table (QEMU target/i386/sev.c; edk2 OvmfPkg BlobVerifierLibSevHashes).
var (
	guidHashTableHeader = mustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	guidHashKernel      = mustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
	guidHashInitrd      = mustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	guidHashCmdline     = mustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

const (
	hashEntrySize = 16 + 2 + sha256.Size       // GUID, length, SHA-256
	hashTableSize = 16 + 2 + 3*hashEntrySize   // GUID, length, command line, initrd, kernel
	paddedTable   = (hashTableSize + 15) &^ 15 // QEMU pads the table to 16 bytes
)

// KernelHashes are the SHA-256 digests of a directly booted kernel (-kernel), initrd (-initrd, the digest of
// no bytes without one) and command line (-append, with its terminating NUL) that QEMU writes into the
// firmware's kernel hashes table with kernel-hashes=on, and that the firmware checks before it runs them.
type KernelHashes struct {
	Kernel, Initrd, Cmdline [sha256.Size]byte
}

// NewKernelHashes computes the digests QEMU computes for kernel, initrd (nil or empty for none) and cmdline.
// A command line cannot contain a NUL byte.
func NewKernelHashes(kernel, initrd []byte, cmdline string) (*KernelHashes, error) {
	if strings.IndexByte(cmdline, 0) >= 0 {
		return nil, fmt.Errorf("the kernel command line contains a NUL byte")
	}
	return &KernelHashes{
		Kernel:  sha256.Sum256(kernel),
		Initrd:  sha256.Sum256(initrd),
		Cmdline: sha256.Sum256(append([]byte(cmdline), 0)),
	}, nil
}

// table returns QEMU's padded table: header GUID and length, then the entries of the command line, the
// initrd and the kernel, each GUID, length and digest.
func (h *KernelHashes) table() []byte {
	t := make([]byte, 0, paddedTable)
	t = append(t, guidHashTableHeader[:]...)
	t = binary.LittleEndian.AppendUint16(t, hashTableSize)
	for _, e := range []struct {
		g guid
		d [sha256.Size]byte
	}{{guidHashCmdline, h.Cmdline}, {guidHashInitrd, h.Initrd}, {guidHashKernel, h.Kernel}} {
		t = append(t, e.g[:]...)
		t = binary.LittleEndian.AppendUint16(t, hashEntrySize)
		t = append(t, e.d[:]...)
	}
	return t[:paddedTable]
}
