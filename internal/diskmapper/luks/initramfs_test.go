//go:build linux && cgo

package luks

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// cpioWriter writes a cpio archive in the "newc" format the kernel unpacks as its initramfs.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

func (c *cpioWriter) dir(name string)               { c.entry(name, 0o040755, nil) }
func (c *cpioWriter) file(name string, data []byte) { c.entry(name, 0o100755, data) }
func (c *cpioWriter) close() error                  { c.entry("TRAILER!!!", 0, nil); return c.err }
func (c *cpioWriter) dirs(names ...string) {
	for _, n := range names {
		c.dir(n)
	}
}
func (c *cpioWriter) fileFrom(name, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	c.file(name, data)
	return nil
}

// sharedLibraries returns the shared libraries a dynamically linked program loads, the loader included, as
// ldd lists them.
func sharedLibraries(progs ...string) ([]string, error) {
	var libs []string
	re := regexp.MustCompile(`(?:=>\s+)?(/\S+)\s+\(0x`)
	for _, prog := range progs {
		out, err := exec.Command("ldd", prog).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", prog, err)
		}
		found := 0
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found++
				if !slices.Contains(libs, m[1]) {
					libs = append(libs, m[1])
				}
			}
		}
		if found == 0 {
			return nil, fmt.Errorf("ldd found no libraries for %s:\n%s", prog, out)
		}
	}
	return libs, nil
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
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// modulesInOrder returns the module files of the wanted modules and everything they depend on, each after its
// dependencies. Wanted modules that are built into the kernel (no file) are skipped.
func modulesInOrder(modDir string, wanted []string) ([]string, error) {
	index := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[moduleName(p)] = p
		}
		return err
	})
	if err != nil {
		return nil, err
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
		sort.Strings(deps)
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

// buildInitramfs writes an initramfs with prog as /init, the shared libraries it needs, and the modules (with
// /modules/order, in load order).
func buildInitramfs(t *testing.T, out, prog, modDir string, modules []string, tools ...string) {
	t.Helper()
	libs, err := sharedLibraries(append([]string{prog}, tools...)...)
	if err != nil {
		t.Fatal(err)
	}
	order, err := modulesInOrder(modDir, modules)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	c := &cpioWriter{w: w}
	c.dirs("dev", "proc", "sys", "run", "tmp", "modules")
	made := map[string]bool{}
	for _, l := range libs {
		dir := ""
		for _, part := range strings.Split(strings.TrimPrefix(filepath.Dir(l), "/"), "/") {
			dir = filepath.Join(dir, part)
			if !made[dir] {
				c.dir(dir)
				made[dir] = true
			}
		}
		if err := c.fileFrom(strings.TrimPrefix(l, "/"), l); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, m := range order {
		names = append(names, filepath.Base(m))
		if err := c.fileFrom("modules/"+filepath.Base(m), m); err != nil {
			t.Fatal(err)
		}
	}
	c.file("modules/order", []byte(strings.Join(names, "\n")+"\n"))
	if err := c.fileFrom("init", prog); err != nil {
		t.Fatal(err)
	}
	// Tools the guest runs (found through PATH=/sbin).
	c.dir("sbin")
	for _, tool := range tools {
		if err := c.fileFrom("sbin/"+filepath.Base(tool), tool); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: %d libraries, modules %s", len(libs), strings.Join(names, " "))
}

// The archive is one the cpio tool reads back, when it is installed.
func TestCPIOWriter(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	var b bytes.Buffer
	c := &cpioWriter{w: &b}
	c.dirs("a", "a/b")
	c.file("a/b/f", []byte("hello"))
	c.file("g", nil)
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	archive := b.Bytes()
	list := exec.Command("cpio", "-t", "--quiet")
	list.Stdin = bytes.NewReader(archive)
	out, err := list.Output()
	if err != nil || string(out) != "a\na/b\na/b/f\ng\n" {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	extract := exec.Command("cpio", "-i", "--quiet", "--to-stdout", "a/b/f")
	extract.Stdin = bytes.NewReader(archive)
	if out, err := extract.Output(); err != nil || string(out) != "hello" {
		t.Fatalf("cpio -i a/b/f: %v %q", err, out)
	}
}
