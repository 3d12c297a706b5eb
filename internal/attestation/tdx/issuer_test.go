package tdx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// fakeConfigfs emulates the configfs-tsm report interface on a temporary directory: mkdir of an entry
// creates its attribute files, writing inblob bumps the generation, reading outblob asks the "driver" for a
// quote over the current inblob, and rmdir removes the entry with its attributes. Like the kernel, it
// refuses writes to read-only attributes and reads of outblob before inblob was written.
type fakeConfigfs struct {
	root     string
	provider string
	// driver returns the quote for an inblob.
	driver func(inblob []byte) ([]byte, error)
	// interfere is called on every outblob read and may return true to write the entry's inblob from
	// "another process".
	interfere func() bool

	mu      sync.Mutex
	created int
	inblobs [][]byte
}

func newFakeConfigfs(t *testing.T, driver func([]byte) ([]byte, error)) *fakeConfigfs {
	root := filepath.Join(t.TempDir(), "tsm", "report")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeConfigfs{root: root, provider: "tdx_guest\n", driver: driver}
}

func (f *fakeConfigfs) entryOf(name string) (string, string, error) {
	entry, attr := filepath.Dir(name), filepath.Base(name)
	if filepath.Dir(entry) != f.root {
		return "", "", &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return entry, attr, nil
}

func (f *fakeConfigfs) Mkdir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if filepath.Dir(name) != f.root {
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrNotExist}
	}
	if err := os.Mkdir(name, 0o755); err != nil {
		return err
	}
	f.created++
	for attr, content := range map[string]string{"provider": f.provider, "generation": "0\n", "inblob": "", "outblob": "", "auxblob": ""} {
		if err := os.WriteFile(filepath.Join(name, attr), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeConfigfs) Rmdir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if filepath.Dir(name) != f.root {
		return &fs.PathError{Op: "rmdir", Path: name, Err: fs.ErrNotExist}
	}
	if _, err := os.Stat(filepath.Join(name, "generation")); err != nil {
		return &fs.PathError{Op: "rmdir", Path: name, Err: fs.ErrNotExist}
	}
	return os.RemoveAll(name)
}

func (f *fakeConfigfs) bump(entry string) error {
	b, err := os.ReadFile(filepath.Join(entry, "generation"))
	if err != nil {
		return err
	}
	g, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(entry, "generation"), fmt.Appendf(nil, "%d\n", g+1), 0o644)
}

func (f *fakeConfigfs) WriteFile(name string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	entry, attr, err := f.entryOf(name)
	if err != nil {
		return err
	}
	if _, err := os.Stat(name); err != nil {
		return err
	}
	if attr != "inblob" {
		return &fs.PathError{Op: "write", Path: name, Err: fs.ErrPermission}
	}
	if len(data) > ReportDataSize {
		return &fs.PathError{Op: "write", Path: name, Err: errors.New("invalid argument")}
	}
	if err := os.WriteFile(name, data, 0o644); err != nil {
		return err
	}
	f.inblobs = append(f.inblobs, bytes.Clone(data))
	return f.bump(entry)
}

func (f *fakeConfigfs) ReadFile(name string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	entry, attr, err := f.entryOf(name)
	if err != nil {
		return nil, err
	}
	if attr == "outblob" {
		in, err := os.ReadFile(filepath.Join(entry, "inblob"))
		if err != nil {
			return nil, err
		}
		if len(in) == 0 {
			return nil, &fs.PathError{Op: "read", Path: name, Err: errors.New("invalid argument")}
		}
		if f.interfere != nil && f.interfere() {
			in = bytes.Repeat([]byte{0xee}, ReportDataSize)
			if err := os.WriteFile(filepath.Join(entry, "inblob"), in, 0o644); err != nil {
				return nil, err
			}
			if err := f.bump(entry); err != nil {
				return nil, err
			}
		}
		quote, err := f.driver(in)
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: name, Err: err}
		}
		if err := os.WriteFile(name, quote, 0o644); err != nil {
			return nil, err
		}
	}
	return os.ReadFile(name)
}

func (f *fakeConfigfs) tsm() *ConfigfsTSM {
	c := NewConfigfsTSM(f.root)
	c.fs = f
	return c
}

// checkClean fails if a report entry was left behind.
func (f *fakeConfigfs) checkClean(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(f.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("report entries left behind: %v", entries)
	}
}

func TestConfigfsTSMGenuineQuote(t *testing.T) {
	genuine := genuineQuote(t)
	f := newFakeConfigfs(t, func([]byte) ([]byte, error) { return genuine, nil })
	rd := ReportDataForNonce(attestation.MiniVTPM, bytes.Repeat([]byte{3}, 32), []byte("key hash"))
	got, err := f.tsm().GetQuote(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, genuine) {
		t.Error("GetQuote did not return the driver's quote unchanged")
	}
	if len(f.inblobs) != 1 || !bytes.Equal(f.inblobs[0], rd[:]) {
		t.Errorf("inblob writes %x, want one write of %x", f.inblobs, rd)
	}
	f.checkClean(t)

	// The recorded quote is for other REPORT_DATA: the issuer refuses to hand it out.
	_, err = NewIssuer(f.tsm()).Quote(context.Background(), rd)
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "returned a quote for other REPORT_DATA") {
		t.Errorf("Issuer.Quote = %v", err)
	}
	// With the genuine REPORT_DATA it passes, and the quote verifies with Intel's collateral.
	q := mustParseQuote(t, genuine)
	raw, err := NewIssuer(f.tsm()).Quote(context.Background(), q.Body.ReportData)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(mustParseQuote(t, raw), mustParseCollateral(t, genuineCollateralFiles(t)), genuineTime); err != nil {
		t.Errorf("Verify(issued genuine quote) = %v", err)
	}
	f.checkClean(t)
}

func TestIssuerEndToEnd(t *testing.T) {
	p := newTestPKI(t)
	f := newFakeConfigfs(t, func(in []byte) ([]byte, error) {
		tq := p.newQuote()
		copy(tq.body.ReportData[:], in)
		return p.build(t, tq), nil
	})
	nonce := bytes.Repeat([]byte{9}, attestation.NonceSize)
	ak := newKey(t)
	rd, err := ReportDataForAttestationKey(attestation.MiniVTPM, nonce, &ak.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := NewIssuer(f.tsm()).Quote(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	v, err := p.verify(t, raw, p.collateral(t, p.newCollateral()))
	if err != nil {
		t.Fatal(err)
	}
	if err := testPolicy(rd).Check(v); err != nil {
		t.Errorf("policy: %v", err)
	}
	// A verifier that expects another key refuses.
	other, err := ReportDataForAttestationKey(attestation.MiniVTPM, nonce, &newKey(t).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := testPolicy(other).Check(v); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "REPORT_DATA does not match") {
		t.Errorf("policy with another key: %v", err)
	}
	f.checkClean(t)
}

func TestConfigfsTSMGenerationRace(t *testing.T) {
	genuine := genuineQuote(t)
	f := newFakeConfigfs(t, func([]byte) ([]byte, error) { return genuine, nil })
	var reads int
	f.interfere = func() bool { reads++; return reads == 1 }
	if _, err := f.tsm().GetQuote(context.Background(), [64]byte{1}); err != nil {
		t.Fatalf("GetQuote after one race = %v, want success on retry", err)
	}
	if f.created != 2 {
		t.Errorf("%d report entries created, want 2 (one retry)", f.created)
	}
	f.checkClean(t)

	f.interfere = func() bool { return true }
	_, err := f.tsm().GetQuote(context.Background(), [64]byte{1})
	if !errors.Is(err, errGenerationChanged) || !strings.Contains(err.Error(), "generation went from 0 to 2 while one write was made") || !strings.Contains(err.Error(), "3 attempts") {
		t.Errorf("GetQuote under constant races = %v", err)
	}
	f.checkClean(t)
}

func TestConfigfsTSMErrors(t *testing.T) {
	genuine := genuineQuote(t)
	ok := func([]byte) ([]byte, error) { return genuine, nil }

	f := newFakeConfigfs(t, ok)
	f.provider = "sev_guest\n"
	if _, err := f.tsm().GetQuote(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), `provider is "sev_guest", want "tdx_guest"`) {
		t.Errorf("SEV provider: %v", err)
	}
	f.checkClean(t)

	f = newFakeConfigfs(t, func([]byte) ([]byte, error) { return nil, errors.New("quote generation service unreachable") })
	if _, err := f.tsm().GetQuote(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "outblob") || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("driver failure: %v", err)
	}
	f.checkClean(t)

	f = newFakeConfigfs(t, func([]byte) ([]byte, error) { return nil, nil })
	if _, err := f.tsm().GetQuote(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "outblob is empty") {
		t.Errorf("empty outblob: %v", err)
	}

	f = newFakeConfigfs(t, func([]byte) ([]byte, error) { return make([]byte, MaxQuoteSize+1), nil })
	if _, err := f.tsm().GetQuote(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized outblob: %v", err)
	}

	f = newFakeConfigfs(t, ok)
	c := f.tsm()
	c.dir = filepath.Join(f.root, "missing")
	if _, err := c.GetQuote(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "configfs") {
		t.Errorf("missing report directory: %v", err)
	}
	// The real file system, on a directory that is not configfs.
	if _, err := NewConfigfsTSM(t.TempDir()).GetQuote(context.Background(), [64]byte{}); err == nil {
		t.Error("GetQuote on a plain directory succeeded")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newFakeConfigfs(t, ok).tsm().GetQuote(ctx, [64]byte{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled context: %v", err)
	}

	// The issuer refuses a malformed quote and a debug TD's quote.
	f = newFakeConfigfs(t, func([]byte) ([]byte, error) { return genuine[:100], nil })
	if _, err := NewIssuer(f.tsm()).Quote(context.Background(), [64]byte{}); !errors.Is(err, ErrMalformedQuote) {
		t.Errorf("truncated quote: %v", err)
	}
	p := newTestPKI(t)
	f = newFakeConfigfs(t, func(in []byte) ([]byte, error) {
		tq := p.newQuote()
		copy(tq.body.ReportData[:], in)
		tq.body.TDAttributes[0] = 1
		return p.build(t, tq), nil
	})
	if _, err := NewIssuer(f.tsm()).Quote(context.Background(), [64]byte{5}); err == nil || !strings.Contains(err.Error(), "debug mode") {
		t.Errorf("debug TD: %v", err)
	}
}

func TestOSFSWriteFile(t *testing.T) {
	dir := t.TempDir()
	// Writing an attribute that does not exist fails; it is never created.
	if err := (osFS{}).WriteFile(filepath.Join(dir, "inblob"), []byte{1}); err == nil {
		t.Error("WriteFile created a file")
	}
	name := filepath.Join(dir, "inblob")
	if err := os.WriteFile(name, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := (osFS{}).WriteFile(name, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if b, err := (osFS{}).ReadFile(name); err != nil || !bytes.Equal(b, []byte{1, 2}) {
		t.Errorf("ReadFile = %x, %v", b, err)
	}
}
