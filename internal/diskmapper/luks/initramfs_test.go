//go:build linux && cgo

package luks

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/bootimage"
)

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

// buildInitramfs writes an initramfs with prog as /init, the shared libraries it needs, and the modules (with
// /modules/order, in load order).
func buildInitramfs(t *testing.T, out, prog, modDir string, modules []string, tools ...string) {
	t.Helper()
	libs, err := sharedLibraries(append([]string{prog}, tools...)...)
	if err != nil {
		t.Fatal(err)
	}
	order, err := bootimage.ModulesInOrder(modDir, modules)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &bootimage.CPIO{}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "modules"} {
		c.Dir(d)
	}
	fileFrom := func(name, src string) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		c.File(name, data)
		return nil
	}
	made := map[string]bool{}
	for _, l := range libs {
		dir := ""
		for _, part := range strings.Split(strings.TrimPrefix(filepath.Dir(l), "/"), "/") {
			dir = filepath.Join(dir, part)
			if !made[dir] {
				c.Dir(dir)
				made[dir] = true
			}
		}
		if err := fileFrom(strings.TrimPrefix(l, "/"), l); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, m := range order {
		names = append(names, filepath.Base(m))
		if err := fileFrom("modules/"+filepath.Base(m), m); err != nil {
			t.Fatal(err)
		}
	}
	c.File("modules/order", []byte(strings.Join(names, "\n")+"\n"))
	if err := fileFrom("init", prog); err != nil {
		t.Fatal(err)
	}
	// Tools the guest runs (found through PATH=/sbin).
	c.Dir("sbin")
	for _, tool := range tools {
		if err := fileFrom("sbin/"+filepath.Base(tool), tool); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Write(c.Bytes()); err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: %d libraries, modules %s", len(libs), strings.Join(names, " "))
}

// The archive is one the cpio tool reads back, when it is installed.
func TestCPIOWriter(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	c := &bootimage.CPIO{}
	c.Dir("a")
	c.Dir("a/b")
	c.File("a/b/f", []byte("hello"))
	c.File("g", nil)
	archive := c.Bytes()
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
