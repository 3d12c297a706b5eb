// Package nodeinit is the init of a node's initramfs in the UEFI boot scheme (see package bootimage): it loads
// the kernel modules the initramfs carries in the order its list gives (those that open the root: virtio,
// device-mapper with dm-verity, squashfs; and those the node needs later, bootimage.NodeModules: WireGuard,
// dm-crypt and dm-integrity, overlayfs, bridge and veth, nf_tables with the matches kube-proxy and the mesh
// use; the root has no modprobe, so nothing is loaded on demand), checks that the
// kernel runs with the command line the initramfs carries (CmdlineFile, the image's own: systemd-stub replaces
// the UKI's command line with one the host's boot option passes when Secure Boot is off), opens the root
// partition named on that command line with dm-verity under the root hash it carries (the command line is
// part of the unified kernel image and measured into PCR 11), reads the whole root once so that a partition
// that does not match its root hash is refused before anything runs from it (later reads of a block changed on
// disk fail too: dm-verity checks every read), mounts it read-only and switches into it, running the node's
// first process (the arguments after "--" on the command line). On any failure it refuses to boot: it says
// why on the console and powers the machine off.
//
// Left for the first process and its provider (package internal/provider/qemu/guest): networking (the
// address derived from the MAC address the provider assigns, the metadata service at a fixed address), the TPM
// (the kernel's /dev/tpmrm0 instead of the mini provider's swtpm socket), the firmware's event log
// (securityfs), and the state disk (the root is read-only; /etc/kubernetes, /var need the encrypted state disk
// or a tmpfs).
package nodeinit
