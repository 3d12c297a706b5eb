package bootimage

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/nodeinit"
)

// CPIO builds a cpio archive in the "newc" format the kernel unpacks as its initramfs, reproducibly: owner
// root, time zero, inode numbers in order of addition. The zero value is an empty archive.
type CPIO struct {
	buf bytes.Buffer
	ino int
}

func (c *CPIO) entry(name string, mode uint32, data []byte) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *CPIO) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

// Dir adds a directory (mode 0755).
func (c *CPIO) Dir(name string) { c.entry(name, 0o040755, nil) }

// File adds an executable file (mode 0755) with data.
func (c *CPIO) File(name string, data []byte) { c.entry(name, 0o100755, data) }

// Bytes ends the archive and returns it; nothing may be added afterwards.
func (c *CPIO) Bytes() []byte {
	c.entry("TRAILER!!!", 0, nil)
	return c.buf.Bytes()
}

// BootModules are the kernel modules the initramfs needs to open the root: the virtio disk, device-mapper
// with dm-verity, and squashfs.
var BootModules = []string{"virtio_pci", "virtio_blk", "dm_mod", "dm_verity", "squashfs"}

// NodeModules are the kernel modules a Kubernetes node needs besides those of the root, for Debian's cloud
// kernel (what it has built in, such as ext4, IPv6, hmac, sha256, aes and AF_PACKET, is not listed). The node's
// root has no modprobe, so the kernel cannot load a module on demand: everything a node uses is loaded in
// advance.
var NodeModules = []string{
	// The node network: the virtio NIC (the node configures its network from the card's MAC address), the
	// kernel's WireGuard, TUN for the userspace fallback.
	"virtio_net", "wireguard", "tun",
	// The state disk: dm-crypt with dm-integrity (LUKS2, aes-xts-plain64 with hmac-sha256), the crypto
	// templates dm-crypt would otherwise ask for on demand, and the kernel's crypto API for user space, which
	// libcryptsetup uses for the keyslots.
	"dm_crypt", "dm_integrity", "ecb", "xts", "authenc", "af_alg", "algif_skcipher", "algif_hash",
	// containerd's snapshotter.
	"overlay",
	// The CNI bridge plugin's bridge and veth pairs, and bridged traffic through the packet filter.
	"bridge", "veth", "br_netfilter",
	// The packet filter, through the image's iptables (the nf_tables variant, xtables-nft-multi; the legacy
	// iptable_* tables are not used): nf_tables with the x_tables compatibility layer and its NAT chains,
	// connection tracking and NAT, and the matches and targets that kube-proxy (iptables mode), the portmap
	// plugin and the mesh's filter chains use.
	"nf_tables", "nft_compat", "nft_chain_nat", "nf_conntrack", "nf_nat",
	"xt_conntrack", "xt_addrtype", "xt_mark", "xt_comment", "xt_tcpudp", "xt_multiport", "xt_statistic",
	"xt_recent", "xt_nat", "xt_MASQUERADE", "ipt_REJECT", "ip6t_REJECT",
}

// InitrdModules are the kernel modules the initramfs loads (with their dependencies, each after what it
// needs) before it switches to the root: BootModules, then NodeModules. They are part of the unified kernel
// image, so measured with it.
var InitrdModules = append(slices.Clone(BootModules), NodeModules...)

// ModulesDir is where the initramfs holds its modules, with "order" listing them in load order.
const ModulesDir = "lib/modules"

// Initramfs returns an initramfs with init as /init, the kernel command line the image boots with as
// nodeinit.CmdlineFile, and the wanted modules of the kernel's module tree modDir (with their dependencies,
// each after what it needs; built-in modules are skipped) in ModulesDir.
func Initramfs(init []byte, cmdline string, modDir string, wanted []string) ([]byte, error) {
	order, err := ModulesInOrder(modDir, wanted)
	if err != nil {
		return nil, err
	}
	c := &CPIO{}
	for _, d := range []string{"dev", "proc", "sys", "run", "sysroot", "etc", "lib", ModulesDir} {
		c.Dir(d)
	}
	c.File(strings.TrimPrefix(nodeinit.CmdlineFile, "/"), []byte(cmdline))
	var names []string
	for _, m := range order {
		data, err := os.ReadFile(m)
		if err != nil {
			return nil, err
		}
		names = append(names, filepath.Base(m))
		c.File(ModulesDir+"/"+filepath.Base(m), data)
	}
	c.File(ModulesDir+"/order", []byte(strings.Join(names, "\n")+"\n"))
	c.File("init", init)
	return c.Bytes(), nil
}

func moduleName(file string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(file), ".ko"), "-", "_")
}

// moduleDeps returns the dependencies a module's .modinfo section names (what depmod reads).
func moduleDeps(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s has no .modinfo section", path)
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			deps := strings.Split(string(v), ",")
			slices.Sort(deps)
			return deps, nil
		}
	}
	return nil, nil
}

// ModulesInOrder returns the module files of the wanted modules and everything they depend on, each after its
// dependencies. Wanted modules built into the kernel (no file) are skipped.
func ModulesInOrder(modDir string, wanted []string) ([]string, error) {
	index := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[moduleName(p)] = p
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the kernel modules: %w", err)
	}
	var order []string
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = strings.ReplaceAll(name, "-", "_")
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle: %v", append(chain, name))
		case 2:
			return nil
		}
		path, ok := index[name]
		if !ok {
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) not found under %s", name, chain[len(chain)-1], modDir)
			}
			state[name] = 2 // built in
			return nil
		}
		state[name] = 1
		deps, err := moduleDeps(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, path)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
