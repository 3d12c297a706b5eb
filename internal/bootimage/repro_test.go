package bootimage

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// flipped writes a copy of src with one byte at off changed into dir and returns its path.
func flipped(t *testing.T, src, dir string, off func([]byte) int) string {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	raw[off(raw)] ^= 0x01
	dst := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(dst, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func middle(b []byte) int { return len(b) / 2 }

// TestReproducible builds the disk image of a small root twice, in different directories, and gets the same
// digest; one byte changed in any input (kernel, stub, initramfs's init, command line, a root file) changes
// the image digest and PCR 4, and everything but the stub changes PCR 11 too (the stub is measured in PCR 4
// only).
func TestReproducible(t *testing.T) {
	vmlinuz, modules := kernelCache(t)
	buildTools(t)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "node-init")
	goBuild(t, "cmd/node-init", initBin)
	rootDir := filepath.Join(dir, "root")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	root := testRoot(t, rootDir, initBin, map[string]string{"etc/hostname": "node\n"})
	base := Inputs{Stub: DefaultStub, Kernel: vmlinuz, Modules: modules, Init: initBin, Root: root, FirstProcess: []string{"/usr/bin/first"}}
	build := func(name string, in Inputs) *Disk {
		t.Helper()
		out := filepath.Join(dir, "out-"+name)
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		d, err := Build(t.Context(), in, out)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return d
	}
	start := time.Now()
	first := build("first", base)
	// Timestamps a build might leak have 1 s (PE) and 2 s (FAT) resolution: build the second copy later.
	for time.Since(start) < 2*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	second := build("second", base)
	if first.Digest != second.Digest {
		t.Fatalf("two builds of the same inputs differ: %s, %s", first.Digest, second.Digest)
	}
	t.Logf("image %s, %d bytes, built twice", first.Digest, first.Size)

	variants := map[string]func(dir string) Inputs{
		"kernel": func(dir string) Inputs {
			in := base
			in.Kernel = flipped(t, vmlinuz, dir, middle)
			return in
		},
		"stub": func(dir string) Inputs {
			in := base
			in.Stub = flipped(t, DefaultStub, dir, func(b []byte) int {
				secs, err := PESections(b)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range secs {
					if s.Name == ".data" {
						return int(s.PointerToRaw) + 64
					}
				}
				t.Fatal("the stub has no .data section")
				return 0
			})
			return in
		},
		"initramfs": func(dir string) Inputs {
			in := base
			in.Init = flipped(t, initBin, dir, middle)
			return in
		},
		"cmdline": func(string) Inputs {
			in := base
			in.KernelCmdline = DefaultKernelCmdline[:len(DefaultKernelCmdline)-1] + "2"
			return in
		},
		"root file": func(dir string) Inputs {
			in := base
			in.Root = testRoot(t, dir, initBin, map[string]string{"etc/hostname": "nodf\n"})
			return in
		},
	}
	for name, variant := range variants {
		vdir := filepath.Join(dir, "in-"+name)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		d := build(name, variant(vdir))
		if d.Digest == first.Digest {
			t.Errorf("one byte changed in the %s: the image digest is the same", name)
		}
		if d.Measurements[PCRBootChain] == first.Measurements[PCRBootChain] {
			t.Errorf("one byte changed in the %s: PCR 4 is the same", name)
		}
		if same := d.Measurements[PCRKernelImage] == first.Measurements[PCRKernelImage]; same != (name == "stub") {
			t.Errorf("one byte changed in the %s: PCR 11 the same: %v", name, same)
		}
	}
}

// TestPCR4CoversTheUKI changes one byte in each section of a UKI and in its headers: PCR 4 changes (or the
// image no longer parses), computed without booting.
func TestPCR4CoversTheUKI(t *testing.T) {
	vmlinuz, _ := kernelCache(t)
	buildTools(t)
	stub, err := os.ReadFile(DefaultStub)
	if err != nil {
		t.Fatal(err)
	}
	kernel, err := os.ReadFile(vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	uki, err := BuildUKI(t.Context(), UKI{Stub: stub, Kernel: kernel, Initrd: []byte("initrd"), Cmdline: "console=ttyS0", OSRel: []byte("ID=test\n")})
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := ExpectedUEFI(uki)
	if err != nil {
		t.Fatal(err)
	}
	secs, err := PESections(uki)
	if err != nil {
		t.Fatal(err)
	}
	offsets := map[string]int{"COFF timestamp": 0x88, "DOS header": 0x10}
	for _, s := range secs {
		if s.SizeOfRawData > 0 {
			offsets["section "+s.Name] = int(s.PointerToRaw) + int(min(s.VirtualSize, s.SizeOfRawData))/2
		}
	}
	for what, off := range offsets {
		mod := bytes.Clone(uki)
		mod[off] ^= 0x01
		m2, _, err := ExpectedUEFI(mod)
		if err != nil {
			continue
		}
		if m2[PCRBootChain] == m[PCRBootChain] {
			t.Errorf("one byte changed in the UKI's %s (offset %#x): PCR 4 is the same", what, off)
		}
	}
}
