// Command node-image builds the node image and the container images from the binaries in _out (see
// scripts/build-kubernetes.sh and scripts/build-components.sh) and writes the expected measurements.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/joinservice"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
	"github.com/constellation-dev/constellation/internal/verifyservice"
	"github.com/constellation-dev/constellation/internal/version"
)

func main() {
	var in nodeimage.Inputs
	out := flag.String("out", "_out/node-image", "output directory")
	flag.StringVar(&in.KubernetesBin, "kubernetes-bin", "_out/kubernetes/bin", "Kubernetes binaries")
	flag.StringVar(&in.ComponentsBin, "components-bin", "_out/components/bin", "etcd, CoreDNS, pause, containerd, runc")
	flag.StringVar(&in.CNIDir, "cni", "_out/components/cni", "CNI plugins")
	componentsKubeadm := flag.String("components-kubeadm", "", "the kubeadm whose etcd, CoreDNS and pause versions the components in -components-bin are pinned to "+
		"(default: the kubeadm in -kubernetes-bin); set it when -kubernetes-bin holds another Kubernetes release than the one the components were pinned for")
	uefi := nodeimage.DefaultUEFIInputs()
	flag.StringVar(&uefi.Kernel, "kernel", uefi.Kernel, "the kernel of the UEFI disk image (scripts/qemu-kernel.sh)")
	flag.StringVar(&uefi.Modules, "modules", uefi.Modules, "the kernel's module tree")
	flag.StringVar(&uefi.Stub, "stub", uefi.Stub, "systemd-stub (Debian package systemd-boot-efi)")
	flag.StringVar(&uefi.Init, "node-init", uefi.Init, "the initramfs's init (make build)")
	bootstrapper := flag.String("bootstrapper", "bin/bootstrapper", "the bootstrapper binary (make build)")
	// This project's in-cluster services, each its own container image (make build).
	services := []struct{ name, ref string }{
		{"join-service", joinservice.Image()},
		{"key-service", keyservice.Image()},
		{"verification-service", verifyservice.Image()},
		{"upgrade-controller", deploy.Image()},
	}
	binaries := make([]*string, len(services))
	for i, s := range services {
		binaries[i] = flag.String(s.name, "bin/"+s.name, "the "+strings.ReplaceAll(s.name, "-", " ")+" binary (make build)")
	}
	flag.Parse()
	in.Extra = append(in.Extra, nodeimage.File{Path: "/usr/bin/bootstrapper", Source: *bootstrapper, Mode: 0o755})
	// The bootstrapper opens LUKS2 state disks through libcryptsetup where the kernel has device-mapper.
	libs, err := nodeimage.LibraryClosure(*bootstrapper)
	if err == nil {
		var files []nodeimage.File
		if files, err = nodeimage.HostFiles(libs...); err == nil {
			in.Extra = append(in.Extra, files...)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "node-image: the bootstrapper's libraries:", err)
		os.Exit(1)
	}
	// The image references carry this build's version, which the bootstrapper built alongside deploys.
	for i, s := range services {
		in.Services = append(in.Services, nodeimage.ContainerImage{
			Ref:        s.ref,
			Files:      []nodeimage.File{{Path: "/usr/bin/" + s.name, Source: *binaries[i], Mode: 0o755}},
			Entrypoint: []string{"/usr/bin/" + s.name},
		})
	}
	if err := run(in, uefi, *out, *componentsKubeadm); err != nil {
		fmt.Fprintln(os.Stderr, "node-image:", err)
		os.Exit(1)
	}
}

func run(in nodeimage.Inputs, uefi nodeimage.UEFIInputs, out, componentsKubeadm string) error {
	versions, err := versionsFromKubeadm(in.KubernetesBin + "/kubeadm")
	if err != nil {
		return err
	}
	if componentsKubeadm != "" {
		// The components are the ones of another Kubernetes release: their images carry the tags that release's
		// kubeadm deploys, which are their versions; the nodes' kubeadm configuration names these tags.
		pinned, err := versionsFromKubeadm(componentsKubeadm)
		if err != nil {
			return err
		}
		versions.Etcd, versions.CoreDNS, versions.Pause = pinned.Etcd, pinned.CoreDNS, pinned.Pause
	}
	in.Versions = versions
	in.Version = version.Version
	start := time.Now()
	m, err := nodeimage.Build(context.Background(), in, out, func(step string) { fmt.Println("node-image:", step) })
	if err != nil {
		return err
	}
	fmt.Printf("node-image: %s/node-image.squashfs %s, %d MiB, Kubernetes %s, version %s, built in %s\n", out, m.Digest, m.Size>>20, m.Versions.Kubernetes, m.Version, time.Since(start).Round(time.Second))
	start = time.Now()
	fmt.Println("node-image: UEFI disk image")
	d, err := nodeimage.WriteUEFIImage(context.Background(), uefi, out)
	if err != nil {
		return fmt.Errorf("the UEFI disk image: %w", err)
	}
	fmt.Printf("node-image: %s/node-image.raw %s, %d MiB, UKI %s, built in %s more\n", out, d.Digest, d.Size>>20, d.UKI, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// versionsFromKubeadm asks the built kubeadm which image tags it expects, so the images match it exactly.
func versionsFromKubeadm(kubeadm string) (nodeimage.Versions, error) {
	var v nodeimage.Versions
	raw, err := exec.Command(kubeadm, "version", "-o", "short").Output()
	if err != nil {
		return v, fmt.Errorf("running %s: %w (build Kubernetes with scripts/build-kubernetes.sh)", kubeadm, err)
	}
	v.Kubernetes = strings.TrimSpace(string(raw))
	raw, err = exec.Command(kubeadm, "config", "images", "list", "--kubernetes-version", v.Kubernetes).Output()
	if err != nil {
		return v, fmt.Errorf("listing kubeadm's images: %w", err)
	}
	for _, ref := range strings.Fields(string(raw)) {
		name, tag, ok := strings.Cut(ref, ":")
		if !ok {
			continue
		}
		switch name {
		case "registry.k8s.io/etcd":
			v.Etcd = tag
		case "registry.k8s.io/coredns/coredns":
			v.CoreDNS = tag
		case "registry.k8s.io/pause":
			v.Pause = tag
		}
	}
	if v.Etcd == "" || v.CoreDNS == "" || v.Pause == "" {
		return v, fmt.Errorf("kubeadm %s did not list etcd, CoreDNS and pause images: %s", v.Kubernetes, raw)
	}
	return v, nil
}
