// Package diskmapper opens a node's state disk so that what the node stores is encrypted with a key only an
// attested node gets.
//
// The state disk holds everything a node writes (etcd data, kubelet and containerd state). The cloud operator
// can read the disk, so its content must be encrypted with the disk's key: derived from the master secret for
// the disk's UUID and handed out only to an attested node (by the join service, or by the first node from the
// master secret it received over aTLS). A node asks for the key by the disk's UUID, which the disk carries in
// plain text.
//
// Where the kernel has no device-mapper (the mini provider's host), the state disk is an ext4 filesystem on a
// loop device with native encryption (fscrypt, policy v2, AES-256-XTS for contents, AES-256-CTS for names): the
// state directory is encrypted under the disk key; the filesystem's metadata (sizes, times, the UUID) is not.
// A wrong key is detected by its key identifier before anything is written, and nothing is destroyed.
//
// Where the kernel has device-mapper and the binary has libcryptsetup (cgo), the state disk is a LUKS2 volume
// with authenticated encryption instead (package luks), whose header parameters are checked and authenticated
// before use. [Prepare] picks the path from the node's own kernel and binary (luks.Supported), never from
// what the disk holds (the host writes the disk): where LUKS2 works, a disk that is neither LUKS2 nor blank,
// an ext4 filesystem included, is refused and never mounted. It formats a blank disk; [StateDisk.Unlock] opens it with the derived key (for a LUKS2 disk formatted at this boot, after
// replacing its random first-boot key); [StateDisk.HasState] tells a node that was initialised or joined
// before. The bootstrapper uses only these three. State disks are mounted nodev and nosuid (StateMountFlags),
// not noexec: containerd's snapshots live in /var on the disk.
package diskmapper
