package snp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Evidence is what a guest obtains from the platform: a raw report and the certificate table the host
// attached to it.
type Evidence struct {
	// Report is the raw attestation report (ReportSize bytes).
	Report []byte
	// CertTable is the certificate table of the extended report (see [ParseCertTable]); empty if the host
	// supplied no certificates.
	CertTable []byte
}

// Reporter obtains attestation reports inside an SEV-SNP guest.
type Reporter interface {
	// Report returns a fresh report whose REPORT_DATA is reportData.
	Report(ctx context.Context, reportData [ReportDataSize]byte) (*Evidence, error)
}

// DefaultConfigFSRoot is where the Linux configfs-tsm report interface lives (Linux 6.7 and later).
const DefaultConfigFSRoot = "/sys/kernel/config/tsm/report"

// maxBlobSize bounds what is read from a configfs-tsm attribute.
const maxBlobSize = 4 << 20

// configFSAttempts is how often a report is requested again when another writer changed the entry
// between our write and our reads.
const configFSAttempts = 3

// ErrGenerationRace is returned when a configfs-tsm entry kept changing while a report was read: another
// process wrote to the same entry.
var ErrGenerationRace = errors.New("configfs-tsm: report entry changed while it was read")

// ConfigFSReporter obtains reports through the Linux configfs-tsm interface: it creates an entry
// directory under Root, writes REPORT_DATA to inblob (and the VMPL to privlevel if set), reads outblob
// (the report) and auxblob (the certificate table), and removes the entry. It compares the entry's
// generation counter before and after reading, so that a report requested by a concurrent writer of the
// same entry is never returned as ours, and checks that the report carries the requested REPORT_DATA.
type ConfigFSReporter struct {
	// Root is the configfs-tsm report directory; empty means DefaultConfigFSRoot.
	Root string
	// Privlevel, if not nil, is the VMPL to request the report at (written to privlevel).
	Privlevel *uint32

	fs tsmFS // nil means the real file system
}

// tsmFS is the small set of file operations the configfs-tsm protocol needs.
type tsmFS interface {
	Mkdir(path string) error
	Rmdir(path string) error
	ReadFile(path string) ([]byte, error)
	WriteFile(path string, data []byte) error
}

type osFS struct{}

func (osFS) Mkdir(path string) error { return os.Mkdir(path, 0o700) }

// Rmdir removes a configfs item; the kernel removes its attributes with it.
func (osFS) Rmdir(path string) error { return os.Remove(path) }

func (osFS) ReadFile(path string) ([]byte, error) { return readLimited(path, maxBlobSize) }

// WriteFile writes an existing attribute in a single write; configfs commits binary attributes when the
// file is closed.
func (osFS) WriteFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Report implements Reporter.
func (c *ConfigFSReporter) Report(ctx context.Context, reportData [ReportDataSize]byte) (*Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fsys := c.fs
	if fsys == nil {
		fsys = osFS{}
	}
	root := c.Root
	if root == "" {
		root = DefaultConfigFSRoot
	}
	entry, err := mkEntry(fsys, root)
	if err != nil {
		return nil, err
	}
	ev, err := c.report(ctx, fsys, entry, reportData)
	if rmErr := fsys.Rmdir(entry); rmErr != nil && err == nil {
		err = fmt.Errorf("configfs-tsm: removing report entry: %w", rmErr)
	}
	if err != nil {
		return nil, err
	}
	return ev, nil
}

// mkEntry creates a report entry with a random name.
func mkEntry(fsys tsmFS, root string) (string, error) {
	for range 5 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		entry := filepath.Join(root, "constellation-"+hex.EncodeToString(b[:]))
		err := fsys.Mkdir(entry)
		if err == nil {
			return entry, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("configfs-tsm: creating report entry (is %s a configfs-tsm report directory?): %w", root, err)
		}
	}
	return "", errors.New("configfs-tsm: could not create a report entry with a fresh name")
}

func (c *ConfigFSReporter) report(ctx context.Context, fsys tsmFS, entry string, reportData [ReportDataSize]byte) (*Evidence, error) {
	attr := func(name string) string { return filepath.Join(entry, name) }
	provider, err := fsys.ReadFile(attr("provider"))
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: reading provider: %w", err)
	}
	if p := strings.TrimSpace(string(provider)); p != "sev_guest" {
		return nil, fmt.Errorf("configfs-tsm: provider is %q, want sev_guest (not an SEV-SNP guest?)", p)
	}
	generation := func() (uint64, error) {
		b, err := fsys.ReadFile(attr("generation"))
		if err != nil {
			return 0, fmt.Errorf("configfs-tsm: reading generation: %w", err)
		}
		g, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("configfs-tsm: generation %q is not a number", bytes.TrimSpace(b))
		}
		return g, nil
	}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		want, err := generation()
		if err != nil {
			return nil, err
		}
		if c.Privlevel != nil {
			if err := fsys.WriteFile(attr("privlevel"), []byte(strconv.FormatUint(uint64(*c.Privlevel), 10))); err != nil {
				return nil, fmt.Errorf("configfs-tsm: writing privlevel %d: %w", *c.Privlevel, err)
			}
			want++
		}
		if err := fsys.WriteFile(attr("inblob"), reportData[:]); err != nil {
			return nil, fmt.Errorf("configfs-tsm: writing inblob: %w", err)
		}
		want++
		outblob, err := fsys.ReadFile(attr("outblob"))
		if err != nil {
			return nil, fmt.Errorf("configfs-tsm: reading outblob: %w", err)
		}
		auxblob, err := fsys.ReadFile(attr("auxblob"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("configfs-tsm: reading auxblob: %w", err)
		}
		got, err := generation()
		if err != nil {
			return nil, err
		}
		if got != want {
			if attempt < configFSAttempts {
				continue
			}
			return nil, fmt.Errorf("%w: generation %d after reading, want %d (%d attempts)", ErrGenerationRace, got, want, attempt)
		}
		report, err := ParseReport(outblob)
		if err != nil {
			return nil, fmt.Errorf("configfs-tsm outblob: %w", err)
		}
		if report.ReportData != reportData {
			return nil, errors.New("configfs-tsm: the report does not carry the requested REPORT_DATA")
		}
		return &Evidence{Report: outblob, CertTable: auxblob}, nil
	}
}
