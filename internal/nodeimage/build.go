package nodeimage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/measuredboot"
)

// Versions are the component versions of an image; kubeadm expects exactly these image tags.
type Versions struct {
	Kubernetes string `json:"kubernetes"`
	Etcd       string `json:"etcd"`
	CoreDNS    string `json:"coredns"`
	Pause      string `json:"pause"`
}

// Inputs are the built binaries an image is made of.
type Inputs struct {
	Versions Versions
	// KubernetesBin holds kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet, kubeadm,
	// kubectl.
	KubernetesBin string
	// ComponentsBin holds etcd, coredns, pause, containerd, containerd-shim-runc-v2, ctr, runc.
	ComponentsBin string
	// CNIDir holds the CNI plugins.
	CNIDir string
	// Extra are further files of the node root filesystem (for example the bootstrapper).
	Extra []File
	// Services are the container images of this project's in-cluster services (for example the join service).
	Services []ContainerImage
	// Version is the version of this product the image is built from (the build's version.Version); the
	// manifest names it, and the signed measurements carry it.
	Version string
}

// Paths inside the node image.
const (
	ImagesDir = "/usr/share/constellation/images"
	// VersionsFile tells the bootstrapper the versions of the Kubernetes components in the image.
	VersionsFile = "/usr/share/constellation/versions.json"
	CNIBinDir    = "/usr/lib/cni"
	// DefaultCmdline is the command line of a node's first process; it is measured into PCR 8.
	DefaultCmdline = "/usr/bin/bootstrapper --provider=mini"
)

// ReadVersions reads the versions file of a running node image.
func ReadVersions() (Versions, error) {
	var v Versions
	raw, err := os.ReadFile(VersionsFile)
	if err != nil {
		return v, fmt.Errorf("reading the node image's versions: %w", err)
	}
	return v, json.Unmarshal(raw, &v)
}

// Manifest describes a built node image.
type Manifest struct {
	Digest   string            `json:"digest"`
	Size     int64             `json:"size"`
	Cmdline  string            `json:"cmdline"`
	Versions Versions          `json:"versions"`
	Images   map[string]string `json:"images"` // reference → image digest
	// Version is the version of this product the image is built from (empty in manifests of older builds).
	Version string `json:"version,omitempty"`
}

// iptablesCommands are the iptables front ends, all links to xtables-nft-multi.
var iptablesCommands = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// busyboxApplets are the basic tools the kubelet, kubeadm and the CNI plugins call.
var busyboxApplets = []string{"sh", "mount", "umount", "nsenter", "touch", "losetup", "ip", "tc", "cat", "ls", "mkdir", "rm", "cp", "sleep"}

// IptablesFiles returns xtables-nft-multi, its front-end links, its extensions and all their libraries,
// installed at /usr/sbin, so that kube-proxy and the CNI plugins can program the kernel.
func IptablesFiles() ([]File, error) {
	const multi = "/usr/sbin/xtables-nft-multi"
	exts, err := filepath.Glob("/usr/lib/x86_64-linux-gnu/xtables/*.so")
	if err != nil || len(exts) == 0 {
		return nil, fmt.Errorf("no iptables extensions in /usr/lib/x86_64-linux-gnu/xtables; install the Debian package iptables")
	}
	libs, err := LibraryClosure(append([]string{multi}, exts...)...)
	if err != nil {
		return nil, err
	}
	files, err := HostFiles(append(append([]string{multi}, exts...), libs...)...)
	if err != nil {
		return nil, err
	}
	for _, c := range iptablesCommands {
		files = append(files, File{Path: "/usr/sbin/" + c, Link: "xtables-nft-multi"})
	}
	return files, nil
}

// MkfsFiles returns mkfs.ext4 with its libraries and configuration: a node formats its new state disk.
func MkfsFiles() ([]File, error) {
	const mke2fs = "/usr/sbin/mke2fs"
	if !fileExists(mke2fs) {
		return nil, fmt.Errorf("%s not found; install the Debian package e2fsprogs", mke2fs)
	}
	libs, err := LibraryClosure(mke2fs)
	if err != nil {
		return nil, err
	}
	files, err := HostFiles(append([]string{mke2fs, "/etc/mke2fs.conf"}, libs...)...)
	if err != nil {
		return nil, err
	}
	return append(files, File{Path: "/usr/sbin/mkfs.ext4", Link: "mke2fs"}), nil
}

func bin(dir, name, dst string) File {
	return File{Path: dst, Source: filepath.Join(dir, name), Mode: 0o755}
}

// ContainerImages returns the container images a node imports: the control plane, etcd, CoreDNS,
// kube-proxy and pause, tagged as kubeadm expects them, and this project's services.
func ContainerImages(in Inputs) ([]ContainerImage, error) {
	v := in.Versions
	k8s := func(name string) ContainerImage {
		return ContainerImage{
			Ref:        "registry.k8s.io/" + name + ":" + v.Kubernetes,
			Files:      []File{bin(in.KubernetesBin, name, "/usr/local/bin/"+name)},
			Entrypoint: []string{"/usr/local/bin/" + name},
		}
	}
	proxy := k8s("kube-proxy")
	ipt, err := IptablesFiles()
	if err != nil {
		return nil, fmt.Errorf("kube-proxy image: %w", err)
	}
	proxy.Files = append(proxy.Files, ipt...)
	return append([]ContainerImage{
		k8s("kube-apiserver"), k8s("kube-controller-manager"), k8s("kube-scheduler"), proxy,
		{
			Ref:        "registry.k8s.io/etcd:" + v.Etcd,
			Files:      []File{bin(in.ComponentsBin, "etcd", "/usr/local/bin/etcd")},
			Entrypoint: []string{"/usr/local/bin/etcd"},
		},
		{
			Ref:        "registry.k8s.io/coredns/coredns:" + v.CoreDNS,
			Files:      []File{bin(in.ComponentsBin, "coredns", "/coredns")},
			Entrypoint: []string{"/coredns"},
		},
		{
			Ref:        "registry.k8s.io/pause:" + v.Pause,
			Files:      []File{bin(in.ComponentsBin, "pause", "/pause")},
			Entrypoint: []string{"/pause"},
		},
	}, in.Services...), nil
}

// RootFiles returns the node root filesystem without the container images.
func RootFiles(in Inputs) ([]File, error) {
	var files []File
	for _, b := range []string{"kubelet", "kubeadm", "kubectl"} {
		files = append(files, bin(in.KubernetesBin, b, "/usr/bin/"+b))
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc"} {
		files = append(files, bin(in.ComponentsBin, b, "/usr/bin/"+b))
	}
	runcLibs, err := LibraryClosure(filepath.Join(in.ComponentsBin, "runc"))
	if err != nil {
		return nil, err
	}
	libFiles, err := HostFiles(runcLibs...)
	if err != nil {
		return nil, err
	}
	files = append(files, libFiles...)
	plugins, err := filepath.Glob(filepath.Join(in.CNIDir, "*"))
	if err != nil || len(plugins) == 0 {
		return nil, fmt.Errorf("no CNI plugins in %s; run scripts/build-components.sh", in.CNIDir)
	}
	for _, p := range plugins {
		files = append(files, bin(in.CNIDir, filepath.Base(p), CNIBinDir+"/"+filepath.Base(p)))
	}
	ipt, err := IptablesFiles()
	if err != nil {
		return nil, err
	}
	files = append(files, ipt...)
	files = append(files, File{Path: "/usr/bin/busybox", Source: "/usr/bin/busybox", Mode: 0o755})
	for _, a := range busyboxApplets {
		files = append(files, File{Path: "/usr/bin/" + a, Link: "busybox"})
	}
	mkfs, err := MkfsFiles()
	if err != nil {
		return nil, err
	}
	files = append(files, mkfs...)
	if p := "/usr/sbin/conntrack"; fileExists(p) {
		libs, err := LibraryClosure(p)
		if err != nil {
			return nil, err
		}
		more, err := HostFiles(append([]string{p}, libs...)...)
		if err != nil {
			return nil, err
		}
		files = append(files, more...)
	}
	files = append(files,
		File{Path: "/etc/os-release", Data: []byte("NAME=\"Constellation node\"\nID=constellation\n")},
		File{Path: "/etc/hosts", Data: []byte("127.0.0.1 localhost\n")},
		File{Path: "/etc/resolv.conf", Data: []byte("")},
		File{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/usr/bin/sh\n")},
		File{Path: "/etc/group", Data: []byte("root:x:0:\n")},
		File{Path: "/bin", Link: "usr/bin"}, File{Path: "/sbin", Link: "usr/sbin"},
	)
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd", "/var/lib/containerd", "/root"} {
		files = append(files, File{Path: d, Dir: true})
	}
	return append(files, in.Extra...), nil
}

// Build writes the container image archives, the node image and its manifest and expected measurements to
// outDir: images/*.tar, node-image.squashfs, node-image.json, measurements.json.
func Build(ctx context.Context, in Inputs, outDir string, progress func(string)) (*Manifest, error) {
	if progress == nil {
		progress = func(string) {}
	}
	if err := os.MkdirAll(filepath.Join(outDir, "images"), 0o755); err != nil {
		return nil, err
	}
	images, err := ContainerImages(in)
	if err != nil {
		return nil, err
	}
	root, err := RootFiles(in)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Cmdline: DefaultCmdline, Versions: in.Versions, Images: map[string]string{}, Version: in.Version}
	versions, err := json.Marshal(in.Versions)
	if err != nil {
		return nil, err
	}
	root = append(root, File{Path: VersionsFile, Data: versions})
	for _, ci := range images {
		progress("container image " + ci.Ref)
		file := filepath.Join(outDir, "images", archiveName(ci.Ref))
		digest, err := ci.WriteArchive(file)
		if err != nil {
			return nil, err
		}
		m.Images[ci.Ref] = digest.String()
		root = append(root, File{Path: ImagesDir + "/" + archiveName(ci.Ref), Source: file, Mode: 0o644})
	}
	return m, WriteImage(ctx, root, outDir, m, progress)
}

// WriteImage builds node-image.squashfs from files in outDir, fills in m's digest and size, and writes
// node-image.json and the expected measurements (measurements.json) for a boot with m.Cmdline.
func WriteImage(ctx context.Context, files []File, outDir string, m *Manifest, progress func(string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	if m.Cmdline == "" {
		m.Cmdline = DefaultCmdline
	}
	tree := filepath.Join(outDir, "rootfs")
	if err := os.RemoveAll(tree); err != nil {
		return err
	}
	progress("root filesystem")
	if err := WriteTree(tree, files); err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	image := filepath.Join(outDir, "node-image.squashfs")
	progress("squashfs image")
	if err := MakeSquashfs(ctx, tree, image); err != nil {
		return err
	}
	digest, err := measuredboot.DigestFile(image)
	if err != nil {
		return err
	}
	info, err := os.Stat(image)
	if err != nil {
		return err
	}
	m.Digest, m.Size = fmt.Sprintf("sha256:%x", digest), info.Size()
	expected, err := measuredboot.Expected(measuredboot.Boot{ImageDigest: digest, Cmdline: m.Cmdline})
	if err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(outDir, "measurements.json"), expected); err != nil {
		return err
	}
	return writeJSON(filepath.Join(outDir, "node-image.json"), m)
}

func archiveName(ref string) string {
	out := []rune{}
	for _, r := range ref {
		switch r {
		case '/', ':':
			out = append(out, '_')
		default:
			out = append(out, r)
		}
	}
	return string(out) + ".tar"
}

func writeJSON(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
