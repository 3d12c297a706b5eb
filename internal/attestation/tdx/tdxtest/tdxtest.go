// Package tdxtest holds the genuine TDX test vectors, for the tests of package tdx and of every package that
// verifies TDX quotes: a quote of a production Sapphire Rapids platform and Intel's collateral for it, signed
// by Intel (testdata/README.md says where they come from). They are embedded, so tests read them without a
// path relative to this directory; [CollateralDir] and [QuoteFile] write them where a test needs files.
//
// With this collateral the quote's platform TCB matches no TCB level: a verifier that checks everything
// reports the TCB status NotSupported. Verify at [Time], inside the validity of every part of the collateral.
//
// The package imports nothing of package tdx, so that tdx's own tests can use it.
package tdxtest

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"
)

//go:embed testdata/tdx_prod_quote_SPR_E4.dat testdata/collateral
var files embed.FS

const (
	quoteFile     = "testdata/tdx_prod_quote_SPR_E4.dat"
	collateralDir = "testdata/collateral"
)

// QuoteSize is the size of the genuine quote proper.
const QuoteSize = 4935

// QuoteSuffix is the text go-tdx-guest appended to the recorded quote; a strict parser refuses it as
// trailing data.
const QuoteSuffix = "\nextra bytes(only for testing purpose)\n"

// FMSPC is the platform family of the quote's PCK certificate, and of the TCB info in the collateral.
const FMSPC = "50806f000000"

// Time lies in the validity of every part of the collateral (2023-06-18T08:42:58Z, TCB info issue date, to
// 2023-07-08T07:24:59Z, QE identity next update).
var Time = time.Date(2023, time.July, 1, 0, 0, 0, 0, time.UTC)

// Collateral file names, as in a collateral directory (the File constants of package tdx).
const (
	TCBInfoFile         = "tcb_info_" + FMSPC + ".json"
	QEIdentityFile      = "qe_identity.json"
	TCBSigningChainFile = "tcb_signing_chain.pem"
	RootCACRLFile       = "root_ca.crl"
	PCKPlatformCRLFile  = "pck_platform.crl"
)

func mustRead(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(fmt.Sprintf("tdxtest: embedded %s: %v", name, err))
	}
	return b
}

// RecordedQuote returns the recorded file: the quote followed by [QuoteSuffix].
func RecordedQuote() []byte {
	raw := mustRead(quoteFile)
	if len(raw) != QuoteSize+len(QuoteSuffix) || string(raw[QuoteSize:]) != QuoteSuffix {
		panic("tdxtest: the recorded quote is not the expected file")
	}
	return raw
}

// Quote returns the genuine quote without the suffix of its file.
func Quote() []byte {
	return bytes.Clone(RecordedQuote()[:QuoteSize])
}

// Collateral returns the content of one collateral file (see the *File constants).
func Collateral(name string) []byte {
	return mustRead(path.Join(collateralDir, name))
}

// CollateralNames returns the names of the collateral files.
func CollateralNames() []string {
	entries, err := fs.ReadDir(files, collateralDir)
	if err != nil {
		panic(fmt.Sprintf("tdxtest: embedded collateral: %v", err))
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// WriteCollateral writes the collateral into dir, laid out as the collateral directory that package tdx
// reads (tdx.LoadCollateral, tdx.ReadCollateralFiles).
func WriteCollateral(dir string) error {
	for _, name := range CollateralNames() {
		if err := os.WriteFile(filepath.Join(dir, name), Collateral(name), 0o644); err != nil {
			return fmt.Errorf("writing the TDX test collateral: %w", err)
		}
	}
	return nil
}

// CollateralDir writes the collateral into a new temporary directory of t and returns its path.
func CollateralDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "collateral")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteCollateral(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// QuoteFile writes the recorded quote, with its suffix, into a temporary directory of t and returns its
// path.
func QuoteFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), path.Base(quoteFile))
	if err := os.WriteFile(p, RecordedQuote(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
