package kubeadm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/constellation-dev/constellation/internal/imagearchive"
)

// LoadedImagesDir is where the mini provider puts, read-only, the container image archives its user loaded
// (`constellation mini load`). Only the mini provider creates it; nodes of other providers have none.
const LoadedImagesDir = "/run/constellation/images"

// loadScratchDir is where the node keeps its own copy of a loaded archive while it checks and imports it: on
// the node's encrypted state disk, out of the host's reach.
var loadScratchDir = "/var/lib/constellation/loading"

// importLoaded imports the image archives the host loaded into LoadedImagesDir, after the node image's own
// images, which always win: an archive that names one of the node image's images is not imported, and if a
// node image's image nevertheless points elsewhere afterwards, the node image's archives are imported again;
// if that does not restore them, the node fails to prepare its runtime rather than run what the host chose.
// A loaded archive that cannot be read is left out (and logged): the host's images are the host's business.
func (d *Driver) importLoaded(ctx context.Context) error {
	if d.LoadedImagesDir == "" {
		return nil
	}
	entries, err := os.ReadDir(d.LoadedImagesDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the loaded images in %s: %w", d.LoadedImagesDir, err)
	}
	archives := loadOrder(entries)
	if len(archives) == 0 {
		return nil
	}
	own, err := d.nodeImageArchives()
	if err != nil {
		return err
	}
	protected, err := archiveNames(own)
	if err != nil {
		return fmt.Errorf("reading the node image's own image archives: %w", err)
	}
	before, err := d.imageDigests(ctx, protected)
	if err != nil {
		return err
	}
	for _, name := range archives {
		images, err := d.importLoadedArchive(ctx, filepath.Join(d.LoadedImagesDir, name), protected)
		if err != nil {
			d.logf("loaded image archive %s not imported: %v", name, err)
			continue
		}
		d.logf("loaded image archive %s imported: %s", name, strings.Join(images, ", "))
	}
	after, err := d.imageDigests(ctx, protected)
	if changed := changedImages(before, after); err != nil || len(changed) > 0 {
		why := strings.Join(changed, ", ")
		if err != nil {
			why = err.Error()
		}
		d.logf("the node image's images changed while importing loaded archives (%s): importing the node image's archives again", why)
		if err := d.importArchives(ctx, own); err != nil {
			return err
		}
		after, err = d.imageDigests(ctx, protected)
		if err != nil {
			return fmt.Errorf("checking the node image's images after importing them again: %w", err)
		}
		if changed := changedImages(before, after); len(changed) > 0 {
			return fmt.Errorf("the node image's images %s are no longer what the node image holds, even after importing them again", strings.Join(changed, ", "))
		}
		d.logf("the node image's images are restored")
	}
	return nil
}

// loadOrder returns the archives of the loaded images directory in the order they were loaded (their
// modification times; the provider renews it when an archive is loaded again), so that the last load of a
// name wins.
func loadOrder(entries []fs.DirEntry) []string {
	type archive struct {
		name string
		info fs.FileInfo
	}
	var out []archive
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".tar") || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, archive{e.Name(), info})
	}
	slices.SortFunc(out, func(a, b archive) int {
		if c := a.info.ModTime().Compare(b.info.ModTime()); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	names := make([]string, len(out))
	for i, a := range out {
		names[i] = a.name
	}
	return names
}

// importLoadedArchive copies a loaded archive to the node's own disk (the host can change the file it
// provided at any time), decides on the copy whether to import it, and imports the copy. It returns the names
// of the images it imported.
func (d *Driver) importLoadedArchive(ctx context.Context, path string, protected []string) ([]string, error) {
	if err := os.MkdirAll(loadScratchDir, 0o700); err != nil {
		return nil, err
	}
	copyFile, err := os.CreateTemp(loadScratchDir, "archive-*.tar")
	if err != nil {
		return nil, err
	}
	defer os.Remove(copyFile.Name())
	defer copyFile.Close()
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(copyFile, io.LimitReader(src, MaxLoadedArchiveSize+1))
	src.Close()
	if err != nil {
		return nil, fmt.Errorf("copying it: %w", err)
	}
	if n, _ := copyFile.Seek(0, io.SeekCurrent); n > MaxLoadedArchiveSize {
		return nil, fmt.Errorf("larger than %d bytes", int64(MaxLoadedArchiveSize))
	}
	if _, err := copyFile.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	x, err := imagearchive.Read(copyFile)
	if err != nil {
		return nil, err
	}
	if err := loadDecision(x, protected); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "ctr", "-a", ContainerdSocket, "-n", "k8s.io", "images", "import", copyFile.Name()).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ctr images import: %w: %s", err, tail(out, 5))
	}
	return x.Names(), nil
}

// MaxLoadedArchiveSize bounds a loaded archive a node imports.
const MaxLoadedArchiveSize = 8 << 30

// loadDecision decides whether a node imports a loaded archive: only if it names every image it holds, and
// none of them as one of the node image's own images (protected), which the measured image brought and the
// host may not replace.
func loadDecision(x *imagearchive.Index, protected []string) error {
	if err := x.Loadable(protected); err != nil {
		return fmt.Errorf("refused: %w", err)
	}
	return nil
}

// changedImages returns the images of before that after does not have with the same digest.
func changedImages(before, after map[string]string) []string {
	var out []string
	for ref, digest := range before {
		if after[ref] != digest {
			out = append(out, ref)
		}
	}
	slices.Sort(out)
	return out
}

// nodeImageArchives returns the node image's own image archives.
func (d *Driver) nodeImageArchives() ([]string, error) {
	archives, err := filepath.Glob(filepath.Join(d.ImagesDir, "*.tar"))
	if err != nil || len(archives) == 0 {
		return nil, fmt.Errorf("no container images in %s", d.ImagesDir)
	}
	return archives, nil
}

// importArchives imports image archives into containerd.
func (d *Driver) importArchives(ctx context.Context, archives []string) error {
	for _, a := range archives {
		if out, err := exec.CommandContext(ctx, "ctr", "-a", ContainerdSocket, "-n", "k8s.io", "images", "import", a).CombinedOutput(); err != nil {
			return fmt.Errorf("importing %s: %w: %s", filepath.Base(a), err, out)
		}
	}
	return nil
}

// archiveNames returns the names of the images of archives.
func archiveNames(archives []string) ([]string, error) {
	var names []string
	for _, a := range archives {
		f, err := os.Open(a)
		if err != nil {
			return nil, err
		}
		x, err := imagearchive.Read(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(a), err)
		}
		names = append(names, x.Names()...)
	}
	return names, nil
}

// imageDigests returns the digests containerd has for refs; every one must be there.
func (d *Driver) imageDigests(ctx context.Context, refs []string) (map[string]string, error) {
	// Only the standard output: ctr writes warnings (cgroup v1 is deprecated) to its standard error.
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "ctr", "-a", ContainerdSocket, "-n", "k8s.io", "images", "ls")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("listing the images: %w: %s", err, tail([]byte(stderr.String()), 5))
	}
	all, err := imagearchive.ParseImageList(out)
	if err != nil {
		return nil, err
	}
	digests := map[string]string{}
	for _, r := range refs {
		if all[r] == "" {
			return nil, fmt.Errorf("containerd has no image %s", r)
		}
		digests[r] = all[r]
	}
	return digests, nil
}
