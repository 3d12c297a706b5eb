package nodeimage

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// libDirs are where the dynamic loader of a Debian amd64 system finds libraries.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"}

// LibraryClosure returns the shared libraries and the dynamic loader that the given ELF files need,
// transitively (DT_NEEDED and PT_INTERP), as host paths. Statically linked files need nothing.
func LibraryClosure(binaries ...string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	queue := slices.Clone(binaries)
	for len(queue) > 0 {
		bin := queue[0]
		queue = queue[1:]
		f, err := elf.Open(bin)
		if err != nil {
			return nil, fmt.Errorf("reading ELF file %s: %w", bin, err)
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("reading libraries of %s: %w", bin, err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				buf := make([]byte, p.Filesz)
				if _, err := p.ReadAt(buf, 0); err == nil {
					interp := string(buf[:len(buf)-1])
					if !seen[interp] {
						seen[interp] = true
						out = append(out, interp)
					}
				}
			}
		}
		f.Close()
		for _, lib := range needed {
			path, err := findLibrary(lib)
			if err != nil {
				return nil, fmt.Errorf("%s needs %s: %w", bin, lib, err)
			}
			if seen[path] {
				continue
			}
			seen[path] = true
			out = append(out, path)
			queue = append(queue, path)
		}
	}
	slices.Sort(out)
	return out, nil
}

func findLibrary(name string) (string, error) {
	for _, dir := range libDirs {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("library not found in %v (install the Debian package that provides it)", libDirs)
}

// HostFiles returns File entries that copy host paths to the same paths in the tree. Symbolic links among
// them are kept as links, and their targets are added too.
func HostFiles(paths ...string) ([]File, error) {
	var out []File
	seen := map[string]bool{}
	var add func(p string) error
	add = func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		info, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("adding host file: %w", err)
		}
		if info.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, File{Path: p, Link: target})
			abs := target
			if !filepath.IsAbs(abs) {
				abs = filepath.Join(filepath.Dir(p), target)
			}
			return add(filepath.Clean(abs))
		}
		if !info.Mode().IsRegular() {
			return fmt.Errorf("adding host file %s: not a regular file or link", p)
		}
		out = append(out, File{Path: p, Source: p, Mode: info.Mode().Perm()})
		return nil
	}
	for _, p := range paths {
		if err := add(p); err != nil {
			return nil, err
		}
	}
	return out, nil
}
