package tdx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultTSMReportDir is where Linux (6.7 and later) exposes the configfs-tsm report interface.
const DefaultTSMReportDir = "/sys/kernel/config/tsm/report"

// tsmProviderTDX is the provider name the TDX guest driver registers with configfs-tsm.
const tsmProviderTDX = "tdx_guest"

// maxTSMAttempts bounds the retries when another writer changes a report entry while we use it.
const maxTSMAttempts = 3

// errGenerationChanged marks a race on a configfs-tsm report entry.
var errGenerationChanged = errors.New("configfs-tsm report entry was changed concurrently")

// QuoteProvider obtains a raw TDX quote whose REPORT_DATA is reportData.
type QuoteProvider interface {
	GetQuote(ctx context.Context, reportData [ReportDataSize]byte) ([]byte, error)
}

// tsmFS is the part of the file system the configfs-tsm client uses.
type tsmFS interface {
	Mkdir(name string) error
	Rmdir(name string) error
	ReadFile(name string) ([]byte, error)
	WriteFile(name string, data []byte) error
}

// osFS is the real file system.
type osFS struct{}

func (osFS) Mkdir(name string) error { return os.Mkdir(name, 0o700) }

// Rmdir removes a report entry. configfs removes the attribute files with the directory.
func (osFS) Rmdir(name string) error { return os.Remove(name) }

func (osFS) ReadFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxQuoteSize+1))
}

// WriteFile writes an existing attribute in one write. configfs hands binary attributes to the driver
// when the file is closed, so the close error is the driver's answer.
func (osFS) WriteFile(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ConfigfsTSM obtains quotes through the Linux configfs-tsm report interface: it creates a report entry
// (a directory), writes REPORT_DATA to its inblob, reads the quote from its outblob and removes the entry.
// The entry's generation counter detects another process writing to the same entry in between.
type ConfigfsTSM struct {
	dir string
	fs  tsmFS
}

// NewConfigfsTSM returns a quote provider using the configfs-tsm report directory dir
// (DefaultTSMReportDir when empty).
func NewConfigfsTSM(dir string) *ConfigfsTSM {
	if dir == "" {
		dir = DefaultTSMReportDir
	}
	return &ConfigfsTSM{dir: dir, fs: osFS{}}
}

// GetQuote returns a quote over reportData. It retries a few times when the report entry changed under
// it.
func (c *ConfigfsTSM) GetQuote(ctx context.Context, reportData [ReportDataSize]byte) ([]byte, error) {
	var err error
	for range maxTSMAttempts {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		var quote []byte
		quote, err = c.getOnce(reportData)
		if !errors.Is(err, errGenerationChanged) {
			return quote, err
		}
	}
	return nil, fmt.Errorf("getting a TDX quote through configfs-tsm: %w (%d attempts)", err, maxTSMAttempts)
}

func (c *ConfigfsTSM) getOnce(reportData [ReportDataSize]byte) (_ []byte, err error) {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	entry := filepath.Join(c.dir, "constellation-"+hex.EncodeToString(id[:]))
	if err := c.fs.Mkdir(entry); err != nil {
		return nil, fmt.Errorf("creating configfs-tsm report entry (is configfs mounted at /sys/kernel/config and is this a TDX guest with Linux 6.7 or later?): %w", err)
	}
	defer func() {
		if rerr := c.fs.Rmdir(entry); rerr != nil && err == nil {
			err = fmt.Errorf("removing configfs-tsm report entry: %w", rerr)
		}
	}()

	provider, err := c.fs.ReadFile(filepath.Join(entry, "provider"))
	if err != nil {
		return nil, fmt.Errorf("reading configfs-tsm provider: %w", err)
	}
	if p := strings.TrimSpace(string(provider)); p != tsmProviderTDX {
		return nil, fmt.Errorf("configfs-tsm provider is %q, want %q: this is not a TDX guest", p, tsmProviderTDX)
	}
	before, err := c.generation(entry)
	if err != nil {
		return nil, err
	}
	if err := c.fs.WriteFile(filepath.Join(entry, "inblob"), reportData[:]); err != nil {
		return nil, fmt.Errorf("writing REPORT_DATA to configfs-tsm inblob: %w", err)
	}
	quote, err := c.fs.ReadFile(filepath.Join(entry, "outblob"))
	if err != nil {
		return nil, fmt.Errorf("reading the quote from configfs-tsm outblob: %w", err)
	}
	after, err := c.generation(entry)
	if err != nil {
		return nil, err
	}
	if after != before+1 {
		return nil, fmt.Errorf("%w: generation went from %d to %d while one write was made", errGenerationChanged, before, after)
	}
	if len(quote) == 0 {
		return nil, errors.New("configfs-tsm outblob is empty")
	}
	if len(quote) > MaxQuoteSize {
		return nil, fmt.Errorf("configfs-tsm outblob is larger than %d bytes", MaxQuoteSize)
	}
	return quote, nil
}

func (c *ConfigfsTSM) generation(entry string) (uint64, error) {
	b, err := c.fs.ReadFile(filepath.Join(entry, "generation"))
	if err != nil {
		return 0, fmt.Errorf("reading configfs-tsm generation: %w", err)
	}
	g, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("configfs-tsm generation %q is not a number", b)
	}
	return g, nil
}

// Issuer obtains TDX quotes for attestation evidence.
type Issuer struct {
	provider QuoteProvider
}

// NewIssuer returns an issuer that gets quotes from provider (for example NewConfigfsTSM("")).
func NewIssuer(provider QuoteProvider) *Issuer { return &Issuer{provider: provider} }

// Quote obtains a quote over reportData (see ReportDataForNonce and ReportDataForAttestationKey) and returns
// it raw, after checking that it parses strictly, carries reportData and does not come from a TD in debug
// mode: a quote no verifier accepts fails here, where the cause is visible.
func (i *Issuer) Quote(ctx context.Context, reportData [ReportDataSize]byte) ([]byte, error) {
	raw, err := i.provider.GetQuote(ctx, reportData)
	if err != nil {
		return nil, err
	}
	q, err := ParseQuote(raw)
	if err != nil {
		return nil, fmt.Errorf("the quote provider returned an unusable quote: %w", err)
	}
	if err := CheckReportData(q, reportData); err != nil {
		return nil, fmt.Errorf("the quote provider returned a quote for other REPORT_DATA: %w", err)
	}
	if q.Body.TDAttributes[0]&tdAttributesTUD != 0 {
		return nil, fmt.Errorf("this TD runs in debug mode (TD attributes %x): no verifier accepts its quotes", q.Body.TDAttributes)
	}
	return raw, nil
}
