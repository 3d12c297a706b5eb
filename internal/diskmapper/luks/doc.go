// Package luks is the production path for a node's state disk: LUKS2 with authenticated encryption
// (aes-xts-plain64 with dm-integrity, hmac-sha256 per 4096-byte sector), through libcryptsetup.
//
// Where the kernel has device-mapper, the state disk is one LUKS2 volume. Its volume key never leaves the
// header unencrypted; the node holds a 64-byte key (kms.DiskKeySize, derived from the master secret for the
// disk's UUID) that opens one keyslot. A node's life with its disk:
//
//   - First boot, blank disk: Format writes the header with a random first-boot key (in memory only) and
//     wipes the data area through dm-integrity, so that every sector carries a valid tag. The header is
//     labelled "constellation-new".
//   - The node is initialised or joins and gets its disk key: SetKey adds a keyslot for it, checks that it
//     opens the disk, labels the header "constellation-initialised", and only then destroys the first-boot
//     keyslot. A power loss at any point leaves a disk that the key the node will have opens (see SetKey).
//   - Every boot: Open maps the disk at /dev/mapper/<name>; a wrong key is refused before anything is written.
//
// ReadUUID and ReadHeader parse the binary header in Go (no libcryptsetup, no cgo), so a CGO_ENABLED=0 binary
// can read a disk's UUID and state. Everything that writes the disk or maps it needs libcryptsetup and cgo;
// without cgo those functions return ErrNotSupported.
//
// # Reset rule
//
// A disk carries a reset mark when someone asked for the node to start over (MarkReset: the operator, or the
// node itself when its first boot was cut short and its first-boot key is lost). ResetIfMarked wipes a marked
// disk only if its header still says "constellation-new", that is: no derived key was ever set on it. Open
// refuses such a disk, so no node state was ever written to it, and wiping it loses nothing. A marked disk
// labelled "constellation-initialised" is never wiped by the mark (it may hold an etcd member's data); the
// mark is reported and left alone, and discarding such a disk takes replacing it with a blank one. An unmarked
// disk is never wiped.
package luks
