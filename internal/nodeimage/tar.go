// Package nodeimage builds the node image: a read-only squashfs root filesystem with everything a node runs,
// and the container images nodes import, all reproducibly (the same inputs give the same bytes), and computes
// the measurements a node booted from the image presents (with internal/measuredboot).
//
// For real (UEFI) virtual machines, WriteUEFIImage also wraps the squashfs into a bootable GPT disk image,
// node-image.raw, with a unified kernel image and a dm-verity protected root, and writes the PCR values its
// boot presents to measurements-uefi.json (package bootimage); the mini provider's files are unchanged.
package nodeimage

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// File is one entry of a filesystem tree to build: a regular file (from Source or Data), a directory or a
// symbolic link.
type File struct {
	// Path is the absolute path inside the tree.
	Path string
	// Source is a host file to copy; Data is used when Source is empty.
	Source string
	Data   []byte
	// Mode is the permission bits; zero means 0755 for files from Source and directories, 0644 for Data.
	Mode fs.FileMode
	// Dir makes the entry a directory.
	Dir bool
	// Link makes the entry a symbolic link to Link.
	Link string
}

func (f File) mode() fs.FileMode {
	if f.Mode != 0 {
		return f.Mode.Perm()
	}
	if f.Source != "" || f.Dir {
		return 0o755
	}
	return 0o644
}

// normalize checks paths and adds the parent directories every entry needs, and returns the entries sorted
// by path. Two entries for the same path are an error unless identical.
func normalize(files []File) ([]File, error) {
	byPath := map[string]File{}
	add := func(f File) error {
		if old, ok := byPath[f.Path]; ok {
			if old.Dir && f.Dir {
				return nil
			}
			if old.Source != f.Source || old.Link != f.Link || string(old.Data) != string(f.Data) || old.Dir != f.Dir {
				return fmt.Errorf("two different entries for %s", f.Path)
			}
			return nil
		}
		byPath[f.Path] = f
		return nil
	}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("entry path %q must be absolute and clean", f.Path)
		}
		if err := add(f); err != nil {
			return nil, err
		}
		for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
			if err := add(File{Path: dir, Dir: true}); err != nil {
				return nil, err
			}
		}
	}
	out := make([]File, 0, len(byPath))
	for _, f := range byPath {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// WriteTar writes files as a reproducible tar stream: sorted, parents first, owner root, time zero, no
// host-specific metadata.
func WriteTar(w io.Writer, files []File) error {
	entries, err := normalize(files)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0).UTC()
	for _, f := range entries {
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(f.Path, "/"),
			Mode:    int64(f.mode()),
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		var src io.ReadCloser
		switch {
		case f.Dir:
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		case f.Link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, f.Link, 0o777
		case f.Source != "":
			fh, err := os.Open(f.Source)
			if err != nil {
				return fmt.Errorf("adding %s: %w", f.Path, err)
			}
			info, err := fh.Stat()
			if err != nil {
				fh.Close()
				return fmt.Errorf("adding %s: %w", f.Path, err)
			}
			if !info.Mode().IsRegular() {
				fh.Close()
				return fmt.Errorf("adding %s: %s is not a regular file", f.Path, f.Source)
			}
			hdr.Typeflag, hdr.Size, src = tar.TypeReg, info.Size(), fh
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			if src != nil {
				src.Close()
			}
			return fmt.Errorf("adding %s: %w", f.Path, err)
		}
		switch {
		case src != nil:
			_, err = io.Copy(tw, src)
			src.Close()
		case hdr.Typeflag == tar.TypeReg:
			_, err = tw.Write(f.Data)
		}
		if err != nil {
			return fmt.Errorf("adding %s: %w", f.Path, err)
		}
	}
	return tw.Close()
}

// WriteTree materializes files below root (which must be empty or missing), with the same normalization as
// WriteTar; timestamps are set to zero so that filesystem images built from the tree are reproducible.
func WriteTree(root string, files []File) error {
	entries, err := normalize(files)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	epoch := time.Unix(0, 0)
	var dirs []string
	for _, f := range entries {
		dst := root + f.Path
		switch {
		case f.Dir:
			if err := os.Mkdir(dst, f.mode()); err != nil {
				return fmt.Errorf("creating %s: %w", f.Path, err)
			}
			dirs = append(dirs, dst)
			continue
		case f.Link != "":
			if err := os.Symlink(f.Link, dst); err != nil {
				return fmt.Errorf("creating %s: %w", f.Path, err)
			}
			continue
		case f.Source != "":
			if err := copyFile(f.Source, dst, f.mode()); err != nil {
				return fmt.Errorf("creating %s: %w", f.Path, err)
			}
		default:
			if err := os.WriteFile(dst, f.Data, f.mode()); err != nil {
				return fmt.Errorf("creating %s: %w", f.Path, err)
			}
		}
		if err := os.Chmod(dst, f.mode()); err != nil {
			return err
		}
		if err := os.Chtimes(dst, epoch, epoch); err != nil {
			return err
		}
	}
	// Directory times last: creating entries changes them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i], 0o755); err != nil {
			return err
		}
		if err := os.Chtimes(dirs[i], epoch, epoch); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
