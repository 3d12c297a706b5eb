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
// # The header is the host's: checked, then authenticated
//
// The host can rewrite both copies of a LUKS2 header (their checksum is a plain SHA-256, not keyed), for
// instance to a segment that uses cipher_null without integrity while keeping the genuine keyslot: the node's
// key would still open it, the node would mount whatever the host put at the data offset, and everything it
// writes would land in plaintext. So before a header is used for anything (Open, SetKey, MarkReset,
// ResetIfMarked), the metadata libcryptsetup loaded, which is what it then acts on, is taken from
// libcryptsetup (crypt_dump_json) and checked by ParseMetadata: exactly what Format writes (one crypt segment,
// aes-xts-plain64 with 4096-byte sectors and dm-integrity hmac(sha256) without journal encryption or
// integrity, starting right after the keyslots area; one or two PBKDF2-SHA256 keyslots of the 96-byte volume
// key in aes-xts-plain64 areas with 64-byte keys; one PBKDF2-SHA256 digest; no token but the parameter token;
// no flags, no requirements; no unknown or duplicate JSON keys); libcryptsetup's own getters (cipher, data
// offset, volume key size, persistent and requirement flags) must agree. Anything else is refused with an
// error wrapping ErrBadParameters, and nothing is written.
//
// On top of that, the parameters are authenticated with a key only the node has: SetKey stores, in a LUKS2
// token of type "constellation-params" (token 0, bound to no keyslot), an HMAC-SHA256 under
// HKDF-SHA256(disk key, info "constellation luks2 header parameters v1") over a canonical text of the disk's
// UUID, the segment's parameters and offset, the metadata and keyslots area sizes, the keyslot parameters and
// the volume key's digest (salt, iterations, value: it binds the volume key). Open verifies it with the disk
// key, after the key was found to open a keyslot and before anything is mapped; a disk labelled initialised
// without a valid MAC is refused. After mapping, Open checks that libcryptsetup still holds the same
// metadata, and removes the mapping otherwise.
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
