// Package guestvm boots a test program as the first process of a virtual machine built like a node: the UEFI
// disk image of package bootimage, with the node image's kernel, the kernel modules it loads (node-init from
// cmd/node-init loads them from the initramfs) and a verified squashfs root, under QEMU with OVMF and swtpm.
// The root holds the program (built with cgo, with its shared libraries) and the node image's iptables. The
// program reports on the console, one line per check:
//
//	RESULT ok <check> <details>
//	RESULT fail <check> <error>
//	RESULT done
//
// and powers the machine off. Tests and benchmarks that need the guest kernel's own paths (kernel
// WireGuard, device-mapper) use it.
package guestvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/bootimage"
	"github.com/constellation-dev/constellation/internal/nodeimage"
)

// Disk is a blank disk the machine gets besides its boot disk; the guest finds it by its serial (in
// /sys/block/vd*/serial).
type Disk struct {
	Serial string
	Size   int64
}

// Options say what to boot.
type Options struct {
	// Package is the import path of the program, which runs as /usr/bin/guest.
	Package string
	// Args are the program's arguments (part of the image's kernel command line).
	Args []string
	// Disks are further blank disks.
	Disks []Disk
}

// Result is what the guest reported.
type Result struct {
	// Checks holds the details of every "RESULT ok" check by name.
	Checks   map[string]string
	Failures []string
	Done     bool
	Boot     bootimage.Boot
}

// Prerequisites returns what this machine lacks to run a guest, or nil.
func Prerequisites() error {
	if err := bootimage.QEMUPrerequisites(); err != nil {
		return err
	}
	uefi := nodeimage.DefaultUEFIInputs()
	for _, f := range []string{uefi.Kernel, uefi.Modules} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("no guest kernel at %s: run scripts/qemu-kernel.sh (scripts/setup.sh does)", f)
		}
	}
	if _, err := os.Stat(uefi.Stub); err != nil {
		return fmt.Errorf("no systemd-stub at %s (Debian package systemd-boot-efi)", uefi.Stub)
	}
	for _, tool := range []string{"go", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (mksquashfs: Debian package squashfs-tools)", tool)
		}
	}
	return nil
}

// Run builds the image in dir (which must exist and be empty) and boots it once, until the guest powers off or
// ctx ends.
func Run(ctx context.Context, dir string, o Options) (Result, error) {
	r := Result{Checks: map[string]string{}}
	uefi := nodeimage.DefaultUEFIInputs()
	uefi.Init = filepath.Join(dir, "node-init")
	guest := filepath.Join(dir, "guest")
	for _, b := range []struct{ pkg, out, cgo string }{
		{"github.com/constellation-dev/constellation/cmd/node-init", uefi.Init, "0"},
		{o.Package, guest, "1"},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			return r, fmt.Errorf("building %s: %w: %s", b.pkg, err, out)
		}
	}
	files, err := rootFiles(guest)
	if err != nil {
		return r, err
	}
	tree := filepath.Join(dir, "root")
	if err := nodeimage.WriteTree(tree, files); err != nil {
		return r, err
	}
	root := filepath.Join(dir, "root.squashfs")
	if err := nodeimage.MakeSquashfs(ctx, tree, root); err != nil {
		return r, err
	}
	if _, err := bootimage.Build(ctx, bootimage.Inputs{Stub: uefi.Stub, Kernel: uefi.Kernel, Modules: uefi.Modules,
		Init: uefi.Init, Root: root, FirstProcess: append([]string{"/usr/bin/guest"}, o.Args...)}, dir); err != nil {
		return r, err
	}
	var extra []string
	for i, d := range o.Disks {
		path := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		f, err := os.Create(path)
		if err != nil {
			return r, err
		}
		err = f.Truncate(d.Size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return r, err
		}
		extra = append(extra, "-drive", fmt.Sprintf("if=none,id=d%d,format=raw,file=%s", i, path),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=d%d,serial=%s", i, d.Serial))
	}
	r.Boot, err = bootimage.BootQEMU(ctx, filepath.Join(dir, bootimage.ImageFile), dir, extra...)
	for _, l := range r.Boot.Lines {
		i := strings.Index(l.Text, "RESULT ")
		if i < 0 {
			continue
		}
		f := strings.SplitN(l.Text[i+len("RESULT "):], " ", 3)
		switch {
		case f[0] == "ok" && len(f) >= 2:
			r.Checks[f[1]] = strings.Join(f[2:], " ")
		case f[0] == "fail":
			r.Failures = append(r.Failures, strings.Join(f[1:], " "))
		case f[0] == "done":
			r.Done = true
		}
	}
	if err != nil {
		return r, err
	}
	if len(r.Failures) > 0 {
		return r, fmt.Errorf("the guest failed:\n  %s", strings.Join(r.Failures, "\n  "))
	}
	if !r.Done {
		return r, errors.New("the guest did not finish")
	}
	return r, nil
}

// rootFiles are the root filesystem's: the guest with its libraries, iptables, and the directories the kernel's
// filesystems are mounted on.
func rootFiles(guest string) ([]nodeimage.File, error) {
	files := []nodeimage.File{
		{Path: "/usr/bin/guest", Source: guest, Mode: 0o755},
		{Path: "/etc/os-release", Data: []byte("ID=constellation-guest\n")},
	}
	for _, d := range []string{"/dev", "/proc", "/sys", "/run", "/tmp"} {
		files = append(files, nodeimage.File{Path: d, Dir: true})
	}
	libs, err := nodeimage.LibraryClosure(guest)
	if err != nil {
		return nil, err
	}
	host, err := nodeimage.HostFiles(libs...)
	if err != nil {
		return nil, err
	}
	ipt, err := nodeimage.IptablesFiles()
	if err != nil {
		return nil, err
	}
	return append(append(files, host...), ipt...), nil
}
