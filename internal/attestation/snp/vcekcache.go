package snp

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MaxVCEKSize bounds a VCEK certificate, from the offline cache or from a key distribution service.
// Genuine VCEKs have about 1.3 KiB.
const MaxVCEKSize = 16 << 10

// turinHWIDSize is the size of the hardware ID of a Turin VCEK: the first bytes of CHIP_ID.
const turinHWIDSize = 8

// VCEKKey names one VCEK: AMD derives a VCEK for each chip and TCB version, and its key distribution
// service serves it under the product name, the chip's hardware ID and the TCB.
type VCEKKey struct {
	// Product is the processor generation.
	Product Product
	// HWID is the hardware ID: the 64-byte CHIP_ID, or its first 8 bytes on Turin.
	HWID []byte
	// TCB is the REPORTED_TCB of the report, decoded for Product.
	TCB TCB
}

// VCEKKeyFor returns the name of the VCEK that signed r, if r comes from product p. It fails for a report
// that is not signed by a VCEK, whose CHIP_ID is masked or zero, or whose CPUID (version 3 and later) names
// another product.
func VCEKKeyFor(r *Report, p Product) (VCEKKey, error) {
	if r == nil {
		return VCEKKey{}, fmt.Errorf("%w: no report", ErrMalformedReport)
	}
	if !p.valid() {
		return VCEKKey{}, fmt.Errorf("%w: %v", ErrUnknownProduct, p)
	}
	if r.SigningKey != SignedByVCEK {
		return VCEKKey{}, fmt.Errorf("the report is signed by the %s, not by a VCEK: only VCEKs are derived per chip and served by AMD's key distribution service; a VLEK must travel with the evidence", r.SigningKey)
	}
	if r.MaskChipID || isZero(r.ChipID[:]) {
		return VCEKKey{}, errors.New("the report's CHIP_ID is masked (zero), so the chip's VCEK cannot be named; launch the guest without MASK_CHIP_ID or supply the VCEK with the evidence")
	}
	if r.Version >= 3 {
		cpu, err := r.CPUProduct()
		if err != nil {
			return VCEKKey{}, err
		}
		if cpu != p {
			return VCEKKey{}, fmt.Errorf("%w: the report comes from a %v CPU, not %v", ErrUnknownProduct, cpu, p)
		}
	}
	tcb, err := DecodeTCB(p, r.ReportedTCB)
	if err != nil {
		return VCEKKey{}, err
	}
	hwid := r.ChipID[:]
	if p == Turin {
		hwid = r.ChipID[:turinHWIDSize]
	}
	return VCEKKey{Product: p, HWID: bytes.Clone(hwid), TCB: tcb}, nil
}

// VCEKKeys names the VCEKs that may have signed r: the VCEK of product p, or, if p is ProductUnknown, of the
// product of the report's CPUID (version 3 and later) or of Milan and of Genoa (version 2, which names no
// product), in this order.
func VCEKKeys(r *Report, p Product) ([]VCEKKey, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: no report", ErrMalformedReport)
	}
	products := []Product{p}
	if p == ProductUnknown {
		products = []Product{Milan, Genoa}
		if r.Version >= 3 {
			cpu, err := r.CPUProduct()
			if err != nil {
				return nil, err
			}
			products = []Product{cpu}
		}
	}
	keys := make([]VCEKKey, 0, len(products))
	for _, prod := range products {
		k, err := VCEKKeyFor(r, prod)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// splParam is one TCB parameter of the key distribution service.
type splParam struct {
	name string
	val  uint8
}

// tcbParams returns the TCB parameters of the key distribution service, in its order: fmcSPL (Turin only),
// blSPL, teeSPL, snpSPL, ucodeSPL.
func (k VCEKKey) tcbParams() []splParam {
	params := []splParam{{"blSPL", k.TCB.Bootloader}, {"teeSPL", k.TCB.TEE}, {"snpSPL", k.TCB.SNP}, {"ucodeSPL", k.TCB.Microcode}}
	if k.Product == Turin {
		params = append([]splParam{{"fmcSPL", k.TCB.FMC}}, params...)
	}
	return params
}

// FileName is the name of the VCEK's entry in a [VCEKCache]: product, hardware ID (lower-case hex) and the
// TCB components, for instance milan-<128 hex digits>-bl2-tee0-snp5-ucode68.der, or
// turin-<16 hex digits>-fmc1-bl1-tee1-snp4-ucode82.der. The entry holds the DER certificate.
func (k VCEKKey) FileName() string {
	var b strings.Builder
	b.WriteString(strings.ToLower(k.Product.String()))
	b.WriteByte('-')
	b.WriteString(hex.EncodeToString(k.HWID))
	for _, p := range k.tcbParams() {
		fmt.Fprintf(&b, "-%s%d", strings.TrimSuffix(p.name, "SPL"), p.val)
	}
	b.WriteString(".der")
	return b.String()
}

func (k VCEKKey) String() string {
	return fmt.Sprintf("%v chip %s, TCB %v", k.Product, hex.EncodeToString(k.HWID), k.TCB)
}

// check reports whether k could name a VCEK at all.
func (k VCEKKey) check() error {
	if !k.Product.valid() {
		return fmt.Errorf("%w: %v", ErrUnknownProduct, k.Product)
	}
	want := ChipIDSize
	if k.Product == Turin {
		want = turinHWIDSize
	}
	if len(k.HWID) != want || isZero(k.HWID) {
		return fmt.Errorf("VCEK hardware ID of %d bytes for %v, want %d non-zero bytes", len(k.HWID), k.Product, want)
	}
	if k.Product != Turin && k.TCB.FMC != 0 {
		return fmt.Errorf("VCEK TCB of %v sets fmc, which only Turin has", k.Product)
	}
	return nil
}

// VCEKCache is an offline directory of VCEK certificates, one DER file per chip and TCB (see
// [VCEKKey.FileName]). A verifier looks up the VCEK of a report there when the evidence carries none
// ([VerifierOptions.VCEKCache]). An entry is a candidate like a certificate in the evidence: it must chain
// to the embedded ASK and ARK and describe the report; being in the cache makes it trusted in no way.
// [VCEKCache.Fetch] fills the cache from a key distribution service. It is safe for concurrent use; entries
// added while it is in use are found.
type VCEKCache struct {
	dir string
	// entries, if not nil, are the cache's entries in memory (file name -> content) instead of a directory:
	// the cache as it travels in a cluster's join configuration.
	entries map[string][]byte
}

// MaxVCEKEntries bounds the entries of a cache held in memory.
const MaxVCEKEntries = 256

// NewVCEKCacheFromEntries returns a cache held in memory, with the entries [VCEKCache.Entries] returned
// (file name -> content). Names must be plain file names ending in .der; contents are parsed only when looked
// up, and checked then like any entry.
func NewVCEKCacheFromEntries(entries map[string][]byte) (*VCEKCache, error) {
	if len(entries) > MaxVCEKEntries {
		return nil, fmt.Errorf("VCEK cache: %d entries, more than %d", len(entries), MaxVCEKEntries)
	}
	c := &VCEKCache{dir: "(the join configuration)", entries: make(map[string][]byte, len(entries))}
	for name, data := range entries {
		if err := checkEntryName(name); err != nil {
			return nil, err
		}
		if len(data) > MaxVCEKSize {
			return nil, fmt.Errorf("%w: VCEK cache entry %s has more than %d bytes", ErrMalformedCertificates, name, MaxVCEKSize)
		}
		c.entries[name] = bytes.Clone(data)
	}
	return c, nil
}

// checkEntryName accepts the names FileName makes: lower-case letters, digits and dashes, ending in .der.
func checkEntryName(name string) error {
	base, ok := strings.CutSuffix(name, ".der")
	if !ok || base == "" || len(name) > 255 || strings.Trim(base, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return fmt.Errorf("VCEK cache: entry name %q is not one of this cache (want <product>-<hex chip ID>-<TCB>.der)", name)
	}
	return nil
}

// Entries returns the cache's entries (file name -> content, at most MaxVCEKEntries), to ship them where there
// is no directory: regular files with entry names only; anything else in the directory is skipped.
func (c *VCEKCache) Entries() (map[string][]byte, error) {
	if c.entries != nil {
		out := make(map[string][]byte, len(c.entries))
		for name, data := range c.entries {
			out[name] = bytes.Clone(data)
		}
		return out, nil
	}
	list, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("VCEK cache: %w", err)
	}
	out := map[string][]byte{}
	for _, e := range list {
		if !e.Type().IsRegular() || checkEntryName(e.Name()) != nil {
			continue
		}
		if len(out) == MaxVCEKEntries {
			return nil, fmt.Errorf("VCEK cache %s: more than %d entries", c.dir, MaxVCEKEntries)
		}
		data, err := os.ReadFile(filepath.Join(c.dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("VCEK cache: %w", err)
		}
		if len(data) > MaxVCEKSize {
			return nil, fmt.Errorf("%w: VCEK cache entry %s has more than %d bytes", ErrMalformedCertificates, e.Name(), MaxVCEKSize)
		}
		out[e.Name()] = data
	}
	return out, nil
}

// ErrVCEKNotCached is returned (together with ErrMissingCertificate) by [VCEKCache.Lookup] when the cache
// holds no entry for a VCEK.
var ErrVCEKNotCached = errors.New("VCEK not in the offline cache")

// LoadVCEKCache opens the VCEK cache in dir, which must be an existing directory. Entries are read when
// they are looked up.
func LoadVCEKCache(dir string) (*VCEKCache, error) {
	if dir == "" {
		return nil, errors.New("VCEK cache: no directory given")
	}
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("VCEK cache: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("VCEK cache: %s is not a directory", dir)
	}
	return &VCEKCache{dir: dir}, nil
}

// Dir returns the cache's directory.
func (c *VCEKCache) Dir() string { return c.dir }

// Path returns the path of k's entry.
func (c *VCEKCache) Path(k VCEKKey) string { return filepath.Join(c.dir, k.FileName()) }

// Lookup reads and parses the entry of k (see [ParseVCEK]). It does not verify the certificate; a
// [Verifier] does. A missing entry is an error that matches ErrVCEKNotCached and ErrMissingCertificate; an
// entry that is not a regular file or not a VCEK certificate is an error that matches
// ErrMalformedCertificates.
func (c *VCEKCache) Lookup(k VCEKKey) (*x509.Certificate, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: %w: no cache", ErrMissingCertificate, ErrVCEKNotCached)
	}
	if err := k.check(); err != nil {
		return nil, err
	}
	if c.entries != nil {
		data, ok := c.entries[k.FileName()]
		if !ok {
			return nil, fmt.Errorf("%w: %w: no entry %s for %v in %s", ErrMissingCertificate, ErrVCEKNotCached, k.FileName(), k, c.dir)
		}
		cert, err := ParseVCEK(data)
		if err != nil {
			return nil, fmt.Errorf("VCEK cache entry %s: %w", k.FileName(), err)
		}
		return cert, nil
	}
	path := c.Path(k)
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w: no entry %s for %v", ErrMissingCertificate, ErrVCEKNotCached, path, k)
	}
	if err != nil {
		return nil, fmt.Errorf("VCEK cache: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: VCEK cache entry %s is not a regular file (%v)", ErrMalformedCertificates, path, info.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("VCEK cache: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxVCEKSize+1))
	if err != nil {
		return nil, fmt.Errorf("VCEK cache: reading %s: %w", path, err)
	}
	cert, err := ParseVCEK(data)
	if err != nil {
		return nil, fmt.Errorf("VCEK cache entry %s: %w", path, err)
	}
	return cert, nil
}

// ParseVCEK parses one VCEK certificate, DER (as AMD's key distribution service serves it and the cache
// stores it) or one PEM CERTIFICATE block. It rejects more than MaxVCEKSize bytes, anything before or
// after the certificate, and a certificate whose subject is not SEV-VCEK. It verifies nothing.
func ParseVCEK(data []byte) (*x509.Certificate, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty VCEK", ErrMalformedCertificates)
	}
	if len(data) > MaxVCEKSize {
		return nil, fmt.Errorf("%w: VCEK of more than %d bytes", ErrMalformedCertificates, MaxVCEKSize)
	}
	der := data
	if trimmed := bytes.TrimSpace(data); bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		block, rest := pem.Decode(trimmed)
		if block == nil || block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			return nil, fmt.Errorf("%w: PEM data is not one CERTIFICATE block without headers", ErrMalformedCertificates)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: %d bytes after the VCEK certificate", ErrMalformedCertificates, len(rest))
		}
		der = block.Bytes
	}
	// x509.ParseCertificate rejects trailing data after the certificate.
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: VCEK: %w", ErrMalformedCertificates, err)
	}
	if cert.Subject.CommonName != "SEV-VCEK" {
		return nil, fmt.Errorf("%w: certificate %q is not a VCEK (want common name SEV-VCEK)", ErrMalformedCertificates, cert.Subject.CommonName)
	}
	return cert, nil
}
