package nodeimage

import (
	"context"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/bootimage"
)

// UEFIFirstProcess is the first process of a node booted from the UEFI disk image. The provider of real VMs
// gives the bootstrapper its provider name; until then the image boots into a bootstrapper that refuses the
// unknown provider.
var UEFIFirstProcess = []string{"/usr/bin/bootstrapper", "--provider=qemu"}

// UEFIInputs are what the UEFI disk image adds to the squashfs image: the kernel, its modules, the
// systemd-stub and the initramfs's init.
type UEFIInputs struct {
	Kernel, Modules, Stub, Init string
}

// DefaultUEFIInputs are Debian's cloud kernel as scripts/qemu-kernel.sh unpacks it, Debian's systemd-stub and
// bin/node-init (make build).
func DefaultUEFIInputs() UEFIInputs {
	cache := os.Getenv("CONSTELLATION_QEMU_CACHE")
	if cache == "" {
		cache = "/var/cache/constellation/qemu"
	}
	return UEFIInputs{
		Kernel:  filepath.Join(cache, "kernel", "vmlinuz"),
		Modules: filepath.Join(cache, "kernel", "modules"),
		Stub:    bootimage.DefaultStub,
		Init:    "bin/node-init",
	}
}

// WriteUEFIImage builds the bootable disk image node-image.raw from the squashfs image WriteImage wrote to
// outDir, with its expected measurements (measurements-uefi.json) and description (node-image-uefi.json);
// see package bootimage.
func WriteUEFIImage(ctx context.Context, in UEFIInputs, outDir string) (*bootimage.Disk, error) {
	return bootimage.Build(ctx, bootimage.Inputs{
		Stub: in.Stub, Kernel: in.Kernel, Modules: in.Modules, Init: in.Init,
		Root:         filepath.Join(outDir, "node-image.squashfs"),
		FirstProcess: UEFIFirstProcess,
	}, outDir)
}
