package suite

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/constellation-dev/constellation/internal/diskmapper"
)

func init() {
	register(Suite{Names: []string{"disk-write", "disk-write-plain", "disk-write-overhead"}, Run: runDiskWrite})
}

// runDiskWrite measures sequential writes (256 MiB, then fsync) into a state disk's encrypted state directory
// and, interleaved in the same run, into an unencrypted directory of the same filesystem on the same loop
// device, and reports the encryption's overhead.
func runDiskWrite(ctx context.Context) ([]Result, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("disk-write needs root (loop devices, mounts)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return nil, errors.New("disk-write needs mkfs.ext4 (Debian package e2fsprogs)")
	}
	dir, err := os.MkdirTemp("", "bench-disk-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	image := filepath.Join(dir, "state-disk.img")
	f, err := os.Create(image)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(2 << 30); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	if _, err := diskmapper.Format(ctx, image); err != nil {
		return nil, err
	}
	key := make([]byte, diskmapper.MinKeySize)
	rand.Read(key)
	mnt := filepath.Join(dir, "mnt")
	d, err := diskmapper.Open(image, mnt, key)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	plainDir := filepath.Join(mnt, "plain")
	if err := os.Mkdir(plainDir, 0o700); err != nil {
		return nil, err
	}
	const size = 256 << 20
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	write := func(dir string) (float64, error) {
		path := filepath.Join(dir, "data")
		defer os.Remove(path)
		f, err := os.Create(path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		start := time.Now()
		for written := 0; written < size; written += len(buf) {
			if _, err := f.Write(buf); err != nil {
				return 0, err
			}
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
		return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
	}
	var enc, plain []float64
	for range 5 {
		e, err := write(d.StateDir)
		if err != nil {
			return nil, err
		}
		p, err := write(plainDir)
		if err != nil {
			return nil, err
		}
		enc, plain = append(enc, e), append(plain, p)
	}
	slices.Sort(enc)
	slices.Sort(plain)
	e, p := enc[len(enc)/2], plain[len(plain)/2]
	return []Result{
		{"disk-write", e, "MB/s"},
		{"disk-write-plain", p, "MB/s"},
		{"disk-write-overhead", (p - e) / p * 100, "%"},
	}, nil
}
